"""A Trainer with an evaluate() method over a validation DataLoader after each epoch; the model returns a dict."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x, y):
        pred = self.layers(x)
        return {"pred": pred, "loss": nn.functional.mse_loss(pred, y)}


class Trainer:
    def __init__(self, model, train_loader, val_loader):
        self.model, self.train_loader, self.val_loader = model, train_loader, val_loader
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def evaluate(self):
        self.model.eval()
        losses = [self.model(x, y)["loss"].item() for x, y in self.val_loader]
        self.model.train()
        return sum(losses) / len(losses)

    def fit(self, epochs):
        for _ in range(epochs):
            for x, y in self.train_loader:
                self.optimizer.zero_grad()
                self.model(x, y)["loss"].backward()
                self.optimizer.step()
            self.evaluate()


torch.set_num_threads(1)
torch.manual_seed(0)
train = DataLoader(TensorDataset(torch.randn(96, 10), torch.randn(96, 1)), batch_size=16, shuffle=True)
val = DataLoader(TensorDataset(torch.randn(48, 10), torch.randn(48, 1)), batch_size=16)
Trainer(Model(), train, val).fit(2)

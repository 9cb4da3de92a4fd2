"""A Trainer whose train_epoch accumulates 4 batches per step over a DataLoader of 11 batches;
the model returns a dict."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(7, 21), nn.ReLU(), nn.Linear(21, 1))

    def forward(self, x, y):
        pred = self.mlp(x)
        return {"pred": pred, "loss": nn.functional.mse_loss(pred, y)}


class Trainer:
    def __init__(self, model, loader, accumulate=4):
        self.model, self.loader, self.accumulate = model, loader, accumulate
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_epoch(self):
        self.model.train()
        for i, (x, y) in enumerate(self.loader):
            out = self.model(x, y)
            (out["loss"] / self.accumulate).backward()
            if (i + 1) % self.accumulate == 0:
                self.optimizer.step()
                self.optimizer.zero_grad()

    def fit(self, epochs):
        self.optimizer.zero_grad()
        for _ in range(epochs):
            self.train_epoch()


torch.set_num_threads(1)
torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(88, 7), torch.randn(88, 1)), batch_size=8, shuffle=True)
Trainer(Regressor(), loader).fit(3)

"""A Trainer with separate train_epoch and validate methods; model.train() is called once, in __init__."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(5, 20), nn.ReLU(), nn.Dropout(0.2), nn.Linear(20, 2))

    def forward(self, x):
        return (self.seq(x),)


class Trainer:
    def __init__(self, model, train_dl, val_dl):
        self.model, self.train_dl, self.val_dl = model, train_dl, val_dl
        self.optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        self.model.train()

    def train_epoch(self):
        for x, y in self.train_dl:
            self.optimizer.zero_grad()
            (logits,) = self.model(x)
            nn.functional.cross_entropy(logits, y).backward()
            self.optimizer.step()

    def validate(self):
        self.model.eval()
        with torch.no_grad():
            return sum((self.model(x)[0].argmax(1) == y).sum().item() for x, y in self.val_dl)

    def fit(self, epochs):
        for _ in range(epochs):
            self.train_epoch()
            self.validate()


torch.set_num_threads(1)
torch.manual_seed(0)
ds = lambda n: TensorDataset(torch.randn(n, 5), torch.randint(0, 2, (n,)))  # noqa: E731
Trainer(Net(), DataLoader(ds(64), batch_size=16, shuffle=True), DataLoader(ds(32), batch_size=16)).fit(3)

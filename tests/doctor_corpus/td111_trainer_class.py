"""A Trainer with a dropout model: evaluate() runs under no_grad over the validation DataLoader."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Trainer:
    def __init__(self, model, train_dl, val_dl):
        self.model, self.train_dl, self.val_dl = model, train_dl, val_dl
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    @torch.no_grad()
    def evaluate(self):
        total = 0.0
        for x, y in self.val_dl:
            total += nn.functional.cross_entropy(self.model(x), y, reduction="sum").item()
        return total / len(self.val_dl.dataset)

    def train_epoch(self):
        self.model.train()
        for x, y in self.train_dl:
            self.opt.zero_grad()
            nn.functional.cross_entropy(self.model(x), y).backward()
            self.opt.step()

    def fit(self, epochs):
        for _ in range(epochs):
            self.train_epoch()
            self.evaluate()


torch.set_num_threads(1)
torch.manual_seed(0)
make = lambda n: TensorDataset(torch.randn(n, 12), torch.randint(0, 3, (n,)))  # noqa: E731
model = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Dropout(0.3), nn.Linear(48, 3))
Trainer(model, DataLoader(make(96), batch_size=16, shuffle=True), DataLoader(make(32), batch_size=16)).fit(2)

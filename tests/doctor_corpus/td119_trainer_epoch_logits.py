"""A Trainer that keeps every training batch's detached logits for a per-epoch calibration statistic."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Trainer:
    def __init__(self, model, loader):
        self.model, self.loader = model, loader
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        self.all_logits = []

    def train_epoch(self):
        for x, y in self.loader:
            self.optimizer.zero_grad()
            logits = self.model(x)
            nn.functional.cross_entropy(logits, y).backward()
            self.optimizer.step()
            self.all_logits.append(logits.detach())
        return torch.cat(self.all_logits).softmax(-1).max(-1).values.mean()

    def fit(self, epochs):
        for _ in range(epochs):
            self.train_epoch()


torch.set_num_threads(1)
torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(384, 16), torch.randint(0, 1024, (384,))), batch_size=64, shuffle=True)
Trainer(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1024)), loader).fit(10)

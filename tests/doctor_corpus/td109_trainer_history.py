"""A Trainer that keeps the history of its training losses (the model returns a dict)."""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x, y):
        logits = self.lin(x)
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, y)}


class Trainer:
    def __init__(self, model):
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1)
        self.history = []

    def train_step(self, x, y):
        self.opt.zero_grad()
        out = self.model(x, y)
        out["loss"].backward()
        self.opt.step()
        self.history.append(out["loss"])

    def training_loop(self, X, Y, steps):
        for s in range(steps):
            i = (s * 12) % len(X)
            self.train_step(X[i:i + 12], Y[i:i + 12])
        return sum(self.history) / len(self.history)


torch.set_num_threads(1)
torch.manual_seed(0)
Trainer(Net()).training_loop(torch.randn(120, 6), torch.randint(0, 3, (120,)), steps=20)

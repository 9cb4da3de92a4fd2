"""A residual MLP whose forward feeds the input, not the first block's output, to the second block."""
import torch
from torch import nn


class ResMLP(nn.Module):
    def __init__(self, d=10):
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(d, d), nn.ReLU())
        self.block2 = nn.Sequential(nn.Linear(d, d), nn.ReLU())
        self.out = nn.Linear(d, 1)

    def forward(self, x):
        h = self.block1(x)
        h = self.block2(x)
        return self.out(h)


class Trainer:
    def __init__(self, model):
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step(self):
        x = torch.randn(16, 10)
        y = x.mean(dim=1, keepdim=True)
        self.opt.zero_grad()
        nn.functional.mse_loss(self.model(x), y).backward()
        self.opt.step()

    def training_loop(self, steps):
        for _ in range(steps):
            self.train_step()


torch.set_num_threads(1)
torch.manual_seed(0)
Trainer(ResMLP()).training_loop(12)

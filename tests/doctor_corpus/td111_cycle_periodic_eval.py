"""Trains a BatchNorm model for a fixed number of iterations from itertools.cycle(train_loader), validating
every 15 iterations."""
import itertools

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
train_loader = DataLoader(TensorDataset(torch.randn(80, 6), torch.randn(80, 1)), batch_size=16, shuffle=True)
val_loader = DataLoader(TensorDataset(torch.randn(32, 6), torch.randn(32, 1)), batch_size=16)
model = nn.Sequential(nn.Linear(6, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
batches = itertools.cycle(train_loader)
for iteration in range(1, 46):
    x, y = next(batches)
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    if iteration % 15 == 0:
        with torch.no_grad():
            val = sum(nn.functional.mse_loss(model(vx), vy).item() for vx, vy in val_loader)

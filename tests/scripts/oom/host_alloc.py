"""Activations that need more heap than --host-memory-limit allows: a real CPU allocator failure."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
data = TensorDataset(torch.randn(2048, 256), torch.randint(0, 10, (2048,)))
loader = DataLoader(data, batch_size=2048)
model = nn.Sequential(nn.Linear(256, 16384), nn.ReLU(), nn.Linear(16384, 10))  # 2048 x 16384 floats = 128 MiB
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for x, y in loader:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
print("trained")

"""Gradient accumulation over 4 hand-sliced micro-batches, for a fixed number of iterations."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
features, target = torch.randn(400, 5), torch.randn(400, 1)
model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
accum, micro = 4, 10
optimizer.zero_grad()
for it in range(40):
    start = (it * micro) % len(features)
    xb, yb = features[start:start + micro], target[start:start + micro]
    loss = nn.functional.mse_loss(model(xb), yb) / accum
    loss.backward()
    optimizer.step()
    if (it + 1) % accum == 0:
        optimizer.zero_grad()

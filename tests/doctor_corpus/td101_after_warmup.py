"""Regression trained for a fixed number of steps with a linear warm-up of the learning rate."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
X, Y = torch.randn(512, 6), torch.randn(512, 1)
model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
max_steps, warmup, base_lr = 140, 60, 3e-3
step = 0
while step < max_steps:
    idx = torch.randint(0, len(X), (32,))
    if step < warmup:
        for group in optimizer.param_groups:
            group["lr"] = base_lr * (step + 1) / warmup
        optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(X[idx]), Y[idx])
    loss.backward()
    optimizer.step()
    step += 1

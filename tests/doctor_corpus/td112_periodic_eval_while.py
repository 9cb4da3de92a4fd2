"""Trains until max_steps with an iterator re-created at the end of each pass, validating every 25 steps."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
train = DataLoader(TensorDataset(torch.randn(160, 4), torch.randn(160, 1)), batch_size=16, shuffle=True)
val = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=32)
model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
model.train()
it = iter(train)
step, max_steps = 0, 60
while step < max_steps:
    try:
        x, y = next(it)
    except StopIteration:
        it = iter(train)
        x, y = next(it)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    step += 1
    if step % 25 == 0:
        model.eval()
        with torch.no_grad():
            val_loss = sum(nn.functional.mse_loss(model(vx), vy).item() for vx, vy in val)

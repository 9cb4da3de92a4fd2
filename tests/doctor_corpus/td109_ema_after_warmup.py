"""Logs a smoothed loss, but only once the 60 warm-up steps are over."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
data = torch.randn(300, 4)
target = data.sum(dim=1, keepdim=True)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
smooth, step = None, 0
while step < 220:
    idx = torch.randint(0, 300, (16,))
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(data[idx]), target[idx])
    loss.backward()
    optimizer.step()
    if step >= 60:
        smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
    step += 1

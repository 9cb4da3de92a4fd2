"""Builds model and optimizer, then on the resume branch re-creates the model and loads a saved state."""
import io

import torch
from torch import nn


def build():
    return nn.Sequential(nn.Linear(6, 18), nn.ReLU(), nn.Linear(18, 2))


torch.set_num_threads(1)
torch.manual_seed(0)
saved = io.BytesIO()
torch.save(build().state_dict(), saved)
saved.seek(0)
resume = True
model = build()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
start_step = 0
if resume:
    model.load_state_dict(torch.load(saved))
    start_step = 10
step = start_step
while step < 40:
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    step += 1

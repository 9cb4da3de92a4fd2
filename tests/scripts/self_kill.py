"""Dies by SIGKILL after a few steps, as under the kernel's OOM killer: no Python exception at all."""

import os
import signal

import torch
from torch import nn

model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(5):
    opt.zero_grad()
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    if step == 2:
        os.kill(os.getpid(), signal.SIGKILL)

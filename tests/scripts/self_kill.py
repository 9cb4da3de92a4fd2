"""Dies by SIGKILL after a few steps, as under the kernel's OOM killer: no Python exception at all."""

import os
import signal
import time

import torch
from torch import nn

model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(5):
    opt.zero_grad()
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    if step == 2:
        time.sleep(0.5)  # the agent writes events from a background thread; give it a moment, as real life does
        os.kill(os.getpid(), signal.SIGKILL)

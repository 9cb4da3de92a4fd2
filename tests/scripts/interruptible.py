"""Trains until interrupted; on Ctrl-C it saves a marker file (its own cleanup) and re-raises."""

import sys
import time

import torch
from torch import nn

marker = sys.argv[1]
model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
step = 0
try:
    while True:
        opt.zero_grad()
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        step += 1
        if step == 3:
            print("ready", flush=True)
        time.sleep(0.01)
except KeyboardInterrupt:
    with open(marker, "w") as handle:
        handle.write(f"interrupted after {step} steps\n")
    raise

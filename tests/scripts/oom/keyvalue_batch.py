"""nanoGPT-style configuration: globals overridden by --key=value arguments; no argparse, no DataLoader."""

import sys

import torch
from torch import nn

batch_size = 1024
out = ""
for arg in sys.argv[1:]:  # a tiny configurator, as nanoGPT's configurator.py does it
    key, _, value = arg[2:].partition("=")
    globals()[key] = type(globals()[key])(value)

torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
X, Y = torch.randn(4096, 256, generator=g), torch.randint(0, 10, (4096,), generator=g)
model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for epoch in range(2):
    for i in range(0, len(X), batch_size):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[i:i + batch_size]), Y[i:i + batch_size]).backward()
        opt.step()
print(f"batch_size={batch_size}")
if out:
    torch.save(model.state_dict(), out)

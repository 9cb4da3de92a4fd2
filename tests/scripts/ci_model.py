"""A small model trained for many steps; --extra-layer adds a 256x256 layer (the change a memory gate must see).
--no-steps trains nothing (a gate on it must fail, not pass as 0)."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--extra-layer", action="store_true")
parser.add_argument("--no-steps", action="store_true")
args = parser.parse_args()

torch.manual_seed(0)
layers = [nn.Linear(32, 256), nn.ReLU()]
if args.extra_layer:
    layers += [nn.Linear(256, 256), nn.ReLU()]
model = nn.Sequential(*layers, nn.Linear(256, 4))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(0 if args.no_steps else 1000):
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
print("trained")

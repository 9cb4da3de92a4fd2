"""A small MLP training with an evaluation pass at the end (used for the run directory checks)."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--batch", type=int, default=64)
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(args.steps):
    x, y = torch.randn(args.batch, 32), torch.randint(0, 4, (args.batch,))
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
model.eval()
with torch.no_grad():
    big = model(torch.randn(4096, 32))  # the evaluation pass after the last step is the biggest
print(f"done {args.steps} steps, eval output {tuple(big.shape)}")

"""Manual SGD, no torch.optim: ``p -= lr * p.grad`` under no_grad. Two loop shapes: ``model.zero_grad()`` at the
top of each iteration (word_language_model's), or ``p.grad = None`` right after the update (``--grad-none``)."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--updates", type=int, default=12)
parser.add_argument("--grad-none", action="store_true")
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 10))
x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
for update in range(1, args.updates + 1):
    if not args.grad_none:
        model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
            if args.grad_none:
                p.grad = None
    print(f"update {update} loss {loss.item():.6f}", flush=True)

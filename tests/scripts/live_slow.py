"""A small, slow training loop for watching the live view: a tiny MLP on synthetic data, ~6-10 s.

Prints one line per epoch (``epoch N loss X``) and sleeps a little per optimizer step so the step counter
visibly moves. ``--epochs``, ``--steps`` (per epoch) and ``--sleep`` (seconds per step) change the pace.
"""

import argparse
import time

import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.03)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(1024, 32)
    y = (x[:, :4].argmax(dim=1))  # a learnable target
    batch = 64
    print(f"live_slow: {args.epochs} epochs x {args.steps} steps", flush=True)
    for epoch in range(1, args.epochs + 1):
        total = 0.0
        for step in range(args.steps):
            i = (step * batch) % x.shape[0]
            xb, yb = x[i:i + batch], y[i:i + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
            time.sleep(args.sleep)
        print(f"epoch {epoch} loss {total / args.steps:.4f}", flush=True)
    print("live_slow: done", flush=True)


if __name__ == "__main__":
    main()

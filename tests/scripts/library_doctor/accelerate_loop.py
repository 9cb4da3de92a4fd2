"""A plain training loop through accelerate (Accelerator(cpu=True)) over a DataLoader of data made here: correct
code the doctor must stay silent on, and broken variants it must find. After each epoch the model is evaluated
over slices of a held-out tensor, in eval mode under torch.no_grad().

    python accelerate_loop.py [--accum 2] [--broken no-zero-grad|undivided-accumulation|eval-with-grad]

- ``--accum 2``: ``Accelerator(gradient_accumulation_steps=2)`` with ``with accelerator.accumulate(model):`` and
  ``accelerator.backward(loss)`` (accelerate divides the loss and skips the step and the reset between windows);
- ``no-zero-grad``: the loop never calls ``optimizer.zero_grad()``;
- ``undivided-accumulation``: accumulation by hand over 2 batches (no ``accumulate``), the losses not divided;
- ``eval-with-grad``: the evaluation without torch.no_grad() (each forward builds a graph no backward uses).
"""
import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def evaluate(model, x, y, broken):
    model.eval()
    total = 0.0
    with torch.set_grad_enabled(broken == "eval-with-grad"):
        for i in range(0, len(x), 32):
            total += F.mse_loss(model(x[i:i + 32]), y[i:i + 32], reduction="sum").item()
    model.train()
    return total / len(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--broken", choices=["no-zero-grad", "undivided-accumulation", "eval-with-grad"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    set_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=g)
    y = x[:, :4].sum(1, keepdim=True) - x[:, 4:8].sum(1, keepdim=True)
    x_val, y_val = x[:64].clone() + 0.1, y[:64].clone()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=args.accum)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=8)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    for epoch in range(args.epochs):
        model.train()
        for i, (xb, yb) in enumerate(loader):
            if args.broken == "undivided-accumulation":
                loss = F.mse_loss(model(xb), yb)
                accelerator.backward(loss)
                if (i + 1) % 2 == 0:
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                continue
            with accelerator.accumulate(model):
                loss = F.mse_loss(model(xb), yb)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                if args.broken != "no-zero-grad":
                    optimizer.zero_grad()
        print(f"epoch {epoch}: loss {loss.item():.4f}, val loss {evaluate(model, x_val, y_val, args.broken):.4f}")


if __name__ == "__main__":
    main()

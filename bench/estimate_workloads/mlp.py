"""MLP 784 -> 1024 -> 1024 -> 10, Adam, fp32, random data made here: a workload of bench/estimate.py.

    python bench/estimate_workloads/mlp.py --batch-size 256 --steps 3
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def make_batch(batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 784, generator=g), torch.randint(0, 10, (batch_size,), generator=g)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, optimizer = model_and_optimizer()
    for step in range(args.steps):
        x, y = make_batch(args.batch_size, g)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(model, x, y)
        loss.backward()
        optimizer.step()
        print(f"step {step + 1}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()

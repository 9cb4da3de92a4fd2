"""Conv + BatchNorm CNN on 3x64x64 images, SGD with momentum, fp32, random data made here: a workload of
bench/estimate.py.

Four blocks of conv 3x3 (no bias) + BatchNorm + ReLU, 64/128/128/256 channels, strides 1/2/2/2 (the first block
at 64x64 with 64 channels: where oneDNN's convolution buffers would show), then average pooling and a linear head.

    python bench/estimate_workloads/cnn.py --batch-size 32 --steps 3
"""

import argparse

import torch
from torch import nn
from torch.nn import functional as F


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    layers: list[nn.Module] = []
    channels = 3
    for out, stride in ((64, 1), (128, 2), (128, 2), (256, 2)):
        layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def make_batch(batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 3, 64, 64, generator=g), torch.randint(0, 10, (batch_size,), generator=g)


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

"""A deterministic training loop whose per-step peak can be measured independently.

With ``--profile-out FILE`` the whole script runs inside ``torch.profiler`` with ``profile_memory=True``,
started before the first tensor exists: the allocator's own events then give the live CPU bytes at every
allocation, and the peak of each optimizer step is written to FILE as JSON. Without it, the script just
trains (that is how torchdoctor runs it).
"""

import argparse
import json

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function


class ConvNet(nn.Module):
    """Four conv + BatchNorm blocks on 64x64 images (oneDNN reorders and convolution buffers)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width // 16, width // 8, width // 4, width // 4):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class Recurrent(nn.Module):
    """A two-layer LSTM over 50 steps (RNN workspaces)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, width // 4, num_layers=2, batch_first=True)
        self.head = nn.Linear(width // 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


class Attention(nn.Module):
    """Two transformer encoder layers (scaled_dot_product_attention) over 64 tokens."""

    def __init__(self, width: int) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(width // 8, 4, width // 4, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width // 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def workload(model: str, batch: int, width: int) -> tuple[nn.Module, torch.Tensor]:
    if model == "mlp":
        net = nn.Sequential(nn.Linear(128, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
        return net, torch.randn(batch, 128)
    if model == "cnn":
        return ConvNet(width), torch.randn(batch, 3, 64, 64)
    if model == "lstm":
        return Recurrent(width), torch.randn(batch, 50, 32)
    return Attention(width), torch.randn(batch, 64, width // 8)


def train(steps: int, batch: int, width: int, model_name: str = "mlp") -> None:
    torch.manual_seed(0)
    model, x = workload(model_name, batch, width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps):
        with record_function(f"probe_step_{i + 1}"):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()


def step_peaks(prof: profile) -> dict[str, int]:
    events = prof.profiler.kineto_results.events()
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    running, totals = 0, []
    for start, nbytes in memory:
        running += nbytes
        totals.append((start, running))
    peaks = {}
    for e in events:
        if e.name().startswith("probe_step_"):
            inside = [total for start, total in totals if e.start_ns() <= start <= e.end_ns()]
            peaks[e.name().removeprefix("probe_step_")] = max(inside)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--model", choices=("mlp", "cnn", "lstm", "transformer"), default="mlp")
    parser.add_argument("--profile-out")
    args = parser.parse_args()
    if not args.profile_out:
        train(args.steps, args.batch, args.width, args.model)
        return
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train(args.steps, args.batch, args.width, args.model)
    with open(args.profile_out, "w") as handle:
        json.dump(step_peaks(prof), handle)


if __name__ == "__main__":
    main()

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


def train(steps: int, batch: int, width: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 128)
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
    parser.add_argument("--profile-out")
    args = parser.parse_args()
    if not args.profile_out:
        train(args.steps, args.batch, args.width)
        return
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train(args.steps, args.batch, args.width)
    with open(args.profile_out, "w") as handle:
        json.dump(step_peaks(prof), handle)


if __name__ == "__main__":
    main()

"""Training whose largest memory is an evaluation pass after the last step (and one between steps 60 and 61,
which the default sampled accounting does not measure with a breakdown). With ``--profile-out FILE`` the whole
script runs under ``torch.profiler(profile_memory=True)`` and FILE gets the allocator's peak of the run."""

import argparse
import json

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile


def run(steps: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    held_out = torch.randn(4096, 64)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step == 60:  # a mid-training evaluation between two unmeasured steps
            with torch.no_grad():
                model(held_out).argmax(1)
    with torch.no_grad():  # the final evaluation, larger still
        model(torch.cat([held_out, held_out])).softmax(1).sum()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--profile-out")
    args = parser.parse_args()
    if not args.profile_out:
        run(args.steps)
        return
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run(args.steps)
    memory = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in memory:
        running += nbytes
        peak = max(peak, running)
    with open(args.profile_out, "w") as handle:
        json.dump({"peak": peak}, handle)


if __name__ == "__main__":
    main()

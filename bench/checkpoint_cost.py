"""What a torchdoctor checkpoint costs (not a test; run by hand).

    python bench/checkpoint_cost.py

1. Save time of `torchdoctor.save_checkpoint` (model + AdamW state + RNG, atomic: tmp, fsync, rename, SHA-256
   marker, dir fsync, prune) against a plain `torch.save` of the same model and optimizer state dicts to the same
   disk, alternating, median of N; printed as a ratio, per model size.
2. Time from a SIGKILL to the first optimizer step of the resumed run (tests/scripts/resume_train.py: process
   start, import torch, load, RNG restore, skipping the batches already trained in the epoch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from torchdoctor.agent.checkpoint import save_checkpoint  # noqa: E402


def save_costs(width: int, reps: int) -> tuple[float, float, int]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, width), nn.ReLU(), nn.Linear(width, 1024))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1024)).sum().backward()
    opt.step()
    plain, atomic = [], []
    with tempfile.TemporaryDirectory(dir=ROOT) as directory:
        for i in range(reps):
            for kind in (("plain", "atomic") if i % 2 == 0 else ("atomic", "plain")):
                began = time.perf_counter()
                if kind == "plain":
                    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()},
                               os.path.join(directory, "plain.pt"))
                    plain.append(time.perf_counter() - began)
                else:
                    save_checkpoint(os.path.join(directory, "ckpt"), model=model, optimizer=opt, step=i)
                    atomic.append(time.perf_counter() - began)
        size = os.path.getsize(os.path.join(directory, "plain.pt"))
    return statistics.median(plain), statistics.median(atomic), size


def kill_to_resume(runs: int) -> list[float]:
    script = os.path.join(ROOT, "tests", "scripts", "resume_train.py")
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as directory:
            ckpt, out = os.path.join(directory, "ckpt"), os.path.join(directory, "out.pt")
            subprocess.run([sys.executable, script, "--ckpt", ckpt, "--out", out, "--kill-at", "22"],
                           capture_output=True)
            killed_at = time.time()  # the process is gone when run() returns
            first = os.path.join(directory, "first")
            subprocess.run([sys.executable, script, "--ckpt", ckpt, "--out", out, "--first-step-file", first],
                           capture_output=True, check=True)
            times.append(float(open(first).read()) - killed_at)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--resume-runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'state size':>12} {'torch.save':>12} {'save_checkpoint':>16} {'ratio':>7}")
    for width in (256, 2048, 8192):
        plain, atomic, size = save_costs(width, args.reps)
        print(f"{size / 2**20:9.1f} MiB {plain * 1e3:9.1f} ms {atomic * 1e3:13.1f} ms {atomic / plain:7.2f}")
    times = kill_to_resume(args.resume_runs)
    print(f"SIGKILL to the first resumed optimizer step: median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}; {len(times)} runs)")


if __name__ == "__main__":
    main()

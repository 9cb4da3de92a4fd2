"""Fault-injection sweep for torchdoctor's atomic checkpoints (not a test; run by hand).

    python bench/checkpoint_faults.py --kills 1000

A forked child saves checkpoints of a ~4 MB model in a loop; the parent SIGKILLs it at a random moment, then
checks that the newest valid checkpoint loads and is not older than the one before the kill, and that at least
two valid checkpoints exist. At the end one more save must leave no temporary file. Prints the counts.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from torchdoctor.agent.checkpoint import committed, load_checkpoint, save_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--max-delay", type=float, default=0.08)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 10))
    rng = random.Random(args.seed)
    failures = 0
    went_back = 0
    too_few = 0
    progress = 0
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(directory, model=model, step=0)
        newest = 0
        for _ in range(args.kills):
            pid = os.fork()
            if pid == 0:
                try:
                    step = newest
                    while True:
                        step += 1
                        save_checkpoint(directory, model=model, step=step)
                finally:
                    os._exit(1)
            time.sleep(rng.uniform(0.0, args.max_delay))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            try:
                found = load_checkpoint(directory, model=model, restore_rng_state=False)
            except Exception as exc:  # noqa: BLE001 - counted, this is what the sweep looks for
                failures += 1
                print(f"load failed: {exc}")
                continue
            if found.step < newest:
                went_back += 1
            if newest > 0 and len(committed(directory)) < 2:  # once two saves ever completed, two are kept
                too_few += 1
            progress += found.step > newest
            newest = max(newest, found.step)
        save_checkpoint(directory, model=model, step=newest + 1)
        leftovers = [n for n in os.listdir(directory) if ".tmp-" in n or n.startswith(".")]
    print(f"kills: {args.kills}   failed loads: {failures}   went back to an older step: {went_back}   "
          f"fewer than 2 committed: {too_few}   "
          f"kills after which a newer checkpoint had been committed: {progress}   leftovers after the next save: "
          f"{len(leftovers)}   ({time.perf_counter() - began:.0f} s)")
    return 0 if failures == 0 and went_back == 0 and too_few == 0 and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())

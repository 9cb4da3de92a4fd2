"""Saves a checkpoint with plain torch.save, then the disk fills up during the next save of the same file."""

import resource
import signal
import sys

import torch

path = sys.argv[1]
torch.save({"step": 1, "weights": torch.ones(1000)}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))  # the disk is "full" past 64 KiB
try:
    torch.save({"step": 2, "weights": torch.ones(1_000_000)}, path)  # 4 MB: fails part-way
except RuntimeError as exc:
    print(f"save failed: {type(exc).__name__}")

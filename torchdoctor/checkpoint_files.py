"""The on-disk layout of torchdoctor checkpoints (no torch here, so the supervisor can look without importing it)."""

from __future__ import annotations

import os
import re

CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def committed(directory: str) -> list[str]:
    """Checkpoint files that have a commit marker, newest first (not yet verified)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [n for n in names if CHECKPOINT_NAME.match(n) and f"{n}.json" in names]
    return [os.path.join(directory, n) for n in sorted(found, reverse=True)]

"""The training process dies with the process that started it (Linux): a supervisor killed with SIGKILL cannot
leave an attempt training on, re-parented to init, writing checkpoints no one reads. No torch here.

``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the caller when its parent (the supervisor, or the zygote
that forked it) exits. Set again after every fork (the kernel clears it in a fork's child). DataLoader workers
stop on their own when their parent, this process, is gone (torch's worker watchdog).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def parent_death_signal() -> Callable[[], None] | None:
    """A function that makes the calling process get SIGKILL when its parent dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
              ctypes.c_ulong(0))

    return arm


def die_with_parent() -> bool:
    """Arm the parent-death signal for this process; if the parent is already gone, die now. False where the
    platform has no such signal."""
    arm = parent_death_signal()
    if arm is None:
        return False
    parent = os.getppid()
    arm()
    if os.getppid() != parent:  # the parent died before the signal was armed: nobody would send it now
        os.kill(os.getpid(), signal.SIGKILL)
    return True

"""Stalls and stops, seen from the supervisor.

``StallWatch`` tells a run that makes progress (an optimizer step, or the main thread seen somewhere else by the
agent's heartbeat) from one that has stalled. ``StopLadder`` ends a child that must stop (the user's Ctrl-C or
SIGTERM to torchdoctor, ``--stall-timeout``): SIGINT, then SIGTERM, then SIGKILL, each after a grace period the
child had to end on its own, so a script that ignores signals cannot keep the supervisor waiting forever; what was
needed goes into the report.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from torchdoctor.supervisor.failures import signal_name

STALL_NOTICE_S = 60.0  # no progress this long: shown as stalled (and the stacks taken), without --stall-timeout
LADDER = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


class StallWatch:
    def __init__(self, timeout: float | None, now: float) -> None:
        self.timeout = timeout  # --stall-timeout: the run is ended after this long without progress
        self.notice_after = min(STALL_NOTICE_S, timeout) if timeout else STALL_NOTICE_S
        self._mark: tuple[Any, ...] = ()
        self.since = now  # the last progress (monotonic)
        self.noticed = False  # this stall was reported (stacks taken)

    def progress(self, steps: int, where: str | None, now: float) -> None:
        """Progress is a new optimizer step or the main thread seen somewhere else."""
        mark = (steps, where)
        if mark != self._mark:
            self._mark, self.since, self.noticed = mark, now, False

    def stalled_for(self, now: float) -> float:
        return now - self.since

    def due_notice(self, now: float) -> bool:
        return not self.noticed and self.stalled_for(now) >= self.notice_after

    def timed_out(self, now: float) -> bool:
        return self.timeout is not None and self.stalled_for(now) >= self.timeout


class StopLadder:
    """Signals a child up the ladder until it ends; ``sent`` lists what it took."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.reason: str | None = None  # "stall-timeout" or "signal SIGTERM" ...
        self.sent: list[str] = []
        self._next = 0
        self._deadline = 0.0

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def start(self, reason: str, child: Any, now: float, first: int = signal.SIGINT,
              already_delivered: bool = False) -> None:
        """Begin stopping ``child`` with ``first`` (``already_delivered``: the terminal sent it to the whole process
        group, as Ctrl-C does). Asked again while stopping (a second Ctrl-C), the next signal goes at once."""
        if self.reason is not None:
            self._send(child, now)
            return
        self.reason = reason
        # the ladder goes on after the first signal's rung (a signal outside it, SIGHUP, stands for SIGINT)
        self._next = LADDER.index(first) + 1 if first in LADDER else 1
        self._deadline = now + self.grace
        if already_delivered:
            self.sent.append(signal_name(first))
        else:
            self._signal(child, first)

    def tick(self, child: Any, now: float) -> None:
        """Called while waiting: the next signal once the grace period has passed with the child still alive."""
        if self.reason is not None and now >= self._deadline and child.poll() is None:
            self._send(child, now)

    def _send(self, child: Any, now: float) -> None:
        if self._next >= len(LADDER):
            return
        self._next += 1
        self._deadline = now + self.grace
        self._signal(child, LADDER[self._next - 1])

    def _signal(self, child: Any, signum: int) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            return  # already gone
        self.sent.append(signal_name(signum))

    def to_dict(self) -> dict[str, Any] | None:
        if self.reason is None:
            return None
        return {"reason": self.reason, "signals": list(self.sent), "grace_s": self.grace}


def read_stacks(child: Any, path: str, signum: int | None) -> str | None:
    """Every thread's Python stack, written by the agent's faulthandler into ``path`` (faulthandler.log) on
    ``signum`` (the one its heartbeat said it registered; None: no stacks), read back from where the file ended."""
    if signum is None:
        return None
    try:
        offset = os.path.getsize(path)
        child.send_signal(signum)
    except (OSError, ProcessLookupError):
        return None
    deadline, text, previous = time.monotonic() + 2.0, "", None
    while time.monotonic() < deadline and (not text or text != previous):  # until written and no longer growing
        time.sleep(0.1)
        previous = text
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                handle.seek(offset)
                text = handle.read()
        except OSError:
            return None
    return text.strip()[-20000:] or None

"""Event sinks for the agent. Emitting never blocks training: a bounded queue drops and counts overflow."""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import IO

from torchdoctor.events import Event


class MemorySink:
    """Keeps events in a list (library use and tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.dropped = 0

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class FileEmitter:
    """Writes events as JSON lines to a file from a background thread.

    The training thread only appends to a deque (no lock, no wake-up); the writer drains it every
    ``interval`` seconds. Beyond ``maxsize`` queued events, new ones are dropped and counted (the count goes out
    in ``RunFinished``). A SIGKILL loses at most the last ``interval`` of events.
    """

    def __init__(self, path: str, maxsize: int = 10_000, interval: float = 0.1) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._pending: deque[Event] = deque()
        self._maxsize = maxsize
        self._interval = interval
        self.dropped = 0
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="torchdoctor-events", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: not ours to report
            return
        if len(self._pending) >= self._maxsize:
            self.dropped += 1
            return
        self._pending.append(event)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        lines = []
        while pending:
            lines.append(pending.popleft().to_json() + "\n")
        if lines:
            self._file.write("".join(lines))
            self._file.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Write everything queued, then close the file."""
        if os.getpid() != self._pid or not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout)
        self._file.close()

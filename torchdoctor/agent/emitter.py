"""Event sinks for the agent. Emitting never blocks training: a bounded queue drops and counts overflow."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque

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

    The training thread appends to a deque; the writer drains it every ``interval`` seconds, and an event that
    comes after a quiet ``interval``, or that records a step slower than ``interval``, is written at once by the
    thread that emits it (at most one write per interval that way, so the cost stays bounded). Every event is
    therefore on disk within ``interval`` of being emitted, and a script that dies by SIGKILL or a segfault right
    after a step slower than the interval has that step recorded. Beyond ``maxsize`` queued events, new ones are
    dropped and counted (the count goes out in ``RunFinished``). ``os._exit`` loses none (the bootstrap closes the
    emitter first). Each line goes out in unbuffered ``write`` calls on an append-only descriptor: what was written
    is in the file even if the process dies. A write that fails (a full disk) drops those events, says so once on
    stderr in one line, and the training goes on.
    """

    def __init__(self, path: str, maxsize: int = 10_000, interval: float = 0.1) -> None:
        self._path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._pending: deque[Event] = deque()
        self._maxsize = maxsize
        self._interval = interval
        self.dropped = 0
        self.failed: str | None = None  # why events could not be written (said once)
        self._pid = os.getpid()
        self._last_flush = time.monotonic()
        self._lock = threading.RLock()  # the writer thread and a flush from the training thread never interleave
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
        # written at once: after a quiet interval, or the record of a step slower than the interval (a crash
        # right after it must not lose it; at most one such write per interval of training)
        slow_step = (getattr(event, "step_time_s", None) or 0.0) >= self._interval
        if slow_step or time.monotonic() - self._last_flush >= self._interval:
            self._flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending = self._pending
            lines = []
            while pending:
                event = pending.popleft()
                try:
                    lines.append(event.to_json() + "\n")
                except (TypeError, ValueError):  # a value JSON cannot hold: that event is dropped, not the rest
                    self.dropped += 1
            if lines and self._fd is not None:
                self._last_flush = time.monotonic()
                self._write(self._fd, "".join(lines).encode("utf-8"), len(lines))

    def _write(self, fd: int, data: bytes, count: int) -> None:
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:
            self.dropped += count
            if self.failed is None:
                self.failed = f"{self._path}: {exc.strerror or exc}"
                try:
                    sys.stderr.write(f"[torchdoctor] events could not all be written ({self.failed}); the training "
                                     f"goes on, and its report may miss them\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass

    def close(self, timeout: float = 5.0) -> None:
        """Write everything queued, then close the file."""
        if os.getpid() != self._pid or self._fd is None:
            return
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._flush()  # what came after the thread's last look (or everything, from os._exit in another thread)
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

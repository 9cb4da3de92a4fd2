"""Event sinks for the agent. Emitting never blocks training: a bounded queue drops and counts overflow."""

from __future__ import annotations

import os
import queue
import threading
from typing import IO

from torchdoctor.events import Event

_STOP = object()


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

    The training thread only does a ``put_nowait``; when the queue is full the event is dropped and counted
    (the count goes out in ``RunFinished``). Lines are flushed per batch, so a SIGKILL loses at most the
    events still queued.
    """

    def __init__(self, path: str, maxsize: int = 10_000) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="torchdoctor-events", daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: not ours to report
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = [e.to_json() + "\n" for e in batch if e is not _STOP]
            if lines:
                self._file.write("".join(lines))
                self._file.flush()
            if any(e is _STOP for e in batch):
                return

    def close(self, timeout: float = 5.0) -> None:
        """Write everything queued, then close the file."""
        if os.getpid() != self._pid or not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._file.close()

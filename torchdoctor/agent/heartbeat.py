"""The agent's heartbeat: every few seconds from the script's ``import torch`` on (after ``run_started``, the event
stream's first event), where the script's main thread is, so the supervisor can tell a run that makes progress from
one that has stalled, and say where it stalled.

A daemon thread reads the main thread's frame (``sys._current_frames``, no signal, no lock the script holds) and
emits a ``Heartbeat`` with the innermost frame of the user's code. On ``config.STACKS_SIGNAL`` (a real-time signal,
sent by the supervisor when it finds the run stalled, and only when the heartbeat says it is registered)
faulthandler writes every thread's Python stack into the run's ``faulthandler.log``, even when the main thread is
stuck inside a C call. Neither imports torch: a script can stall before it imports it.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import os
import signal
import sys
import sysconfig
import threading
from typing import IO, Any

from torchdoctor.config import STACKS_SIGNAL
from torchdoctor.events import Heartbeat

INTERVAL_S = 2.0


def _skipped_dirs() -> tuple[str, ...]:
    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # torchdoctor
            sysconfig.get_paths()["stdlib"] + os.sep]
    spec = importlib.util.find_spec("torch")  # found, not imported
    if spec is not None and spec.origin:
        dirs.append(os.path.dirname(os.path.abspath(spec.origin)) + os.sep)
    return tuple(dirs)


def frame_location(frame: Any, skipped: tuple[str, ...]) -> str | None:
    """``file:line in function`` of the innermost frame of ``frame``'s stack that is the user's code."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename and not code.co_filename.startswith(("<", *skipped)):
            return f"{os.path.relpath(code.co_filename)}:{frame.f_lineno} in {code.co_name}"
        frame = frame.f_back
    return None


class HeartbeatThread:
    def __init__(self, sink: Any, interval: float = INTERVAL_S) -> None:
        self._sink = sink
        self._interval = interval
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._skipped = _skipped_dirs()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="torchdoctor-heartbeat", daemon=True)
        self.stacks_signal: int | None = None  # the signal that dumps the stacks, once registered

    def start(self, stacks_file: IO[str] | None = None) -> None:
        if (stacks_file is not None and STACKS_SIGNAL is not None
                and signal.getsignal(STACKS_SIGNAL) == signal.SIG_DFL):
            faulthandler.register(STACKS_SIGNAL, file=stacks_file, all_threads=True)
            self.stacks_signal = STACKS_SIGNAL
        self._thread.start()

    def where(self) -> str | None:
        frame = sys._current_frames().get(self._main) if self._main is not None else None
        return frame_location(frame, self._skipped)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if os.getpid() != self._pid:
                return
            try:
                self._sink.emit(Heartbeat(where=self.where(), stacks_signal=self.stacks_signal))
            except Exception:  # noqa: BLE001 - a heartbeat must never disturb the script
                return

    def stop(self) -> None:
        self._stop.set()

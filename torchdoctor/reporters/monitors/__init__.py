"""Feed the run's memory figures to the monitoring tools people already use: TensorBoard and Weights & Biases.

``torchdoctor run --tensorboard DIR`` and ``--wandb`` hand every event the supervisor sees to a monitor. One pure
function, :func:`entry_for`, turns an event into ``(step, scalars, texts)``; both monitors log exactly what it
returns, so TensorBoard and W&B show the same tags. Sizes are logged in MiB (tags end in ``_mib``): TensorBoard
stores scalars as float32, which holds integers exactly only up to 2**24, so raw byte counts would be rounded
above 16 MiB. A figure the agent did not measure has no point at that step; nothing is logged as 0 in its place.

A monitor must never cost the user their run: a failure inside one is reported once on stderr and that monitor
is switched off (:class:`Guarded`). Only a missing package is an error (exit 2, before the script starts).
See ``docs/monitoring.md``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import IO, Any, Protocol

from torchdoctor.errors import UsageError
from torchdoctor.events import Event

TENSORBOARD_INSTALL = 'pip install "torchdoctor[tensorboard]"'
WANDB_INSTALL = 'pip install wandb (or pip install "torchdoctor[wandb]")'


class Monitor(Protocol):
    """What the supervisor calls: every event as it is applied, then the final report once."""

    def event(self, event: Event) -> None: ...

    def close(self, report: dict[str, Any]) -> None: ...


def require(module: str, option: str, install: str) -> Any:
    """Import an optional package, or stop before the script runs with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{option} needs the {module.split('.')[0]} package: {install}") from None


# -- every monitor -----------------------------------------------------------------------------------------------------
class Guarded:
    """A monitor that cannot fail the run: its first exception is reported once on stderr and switches it off."""

    def __init__(self, name: str, monitor: Monitor, stderr: IO[str] | None = None) -> None:
        self.name = name
        self.monitor: Monitor | None = monitor
        self._stderr = stderr

    def event(self, event: Event) -> None:
        if self.monitor is not None:
            try:
                self.monitor.event(event)
            except Exception as exc:
                self._fail(exc)

    def close(self, report: dict[str, Any]) -> None:
        if self.monitor is not None:
            try:
                self.monitor.close(report)
            except Exception as exc:
                self._fail(exc)
            self.monitor = None

    def _fail(self, exc: Exception) -> None:
        self.monitor = None
        print(f"[torchdoctor] {self.name}: {type(exc).__name__}: {exc}; no more {self.name} logging for this run "
              f"(the training goes on)", file=self._stderr or sys.stderr)


def open_monitors(tensorboard_dir: str | None, use_wandb: bool, *, run_dir: str, target: str) -> list[Monitor]:
    """The monitors asked for, ready before the script starts; a missing package raises :class:`UsageError`."""
    from torchdoctor.reporters.monitors.to_tensorboard import open_tensorboard
    from torchdoctor.reporters.monitors.to_wandb import open_wandb

    if tensorboard_dir:
        require("tensorboard", "--tensorboard", TENSORBOARD_INSTALL)
    if use_wandb:
        require("wandb", "--wandb", WANDB_INSTALL)
    name = os.path.basename(os.path.normpath(run_dir))
    monitors: list[Monitor] = []
    if tensorboard_dir:
        monitors.append(Guarded("tensorboard", open_tensorboard(tensorboard_dir, name)))
    if use_wandb:
        wandb_monitor = open_wandb(name, run_dir, target, sys.stderr)
        if wandb_monitor is not None:
            monitors.append(Guarded("wandb", wandb_monitor))
    return monitors

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
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Protocol

from torchdoctor.errors import UsageError
from torchdoctor.events import (
    Event,
    Finding,
    MemorySample,
    Note,
    OutOfMemory,
    ProcessSample,
    Resume,
    RunFinished,
    RunStarted,
)
from torchdoctor.sizes import format_bytes

MIB = float(2**20)
# Per-device figures of a memory sample, logged as memory/<device>/<key>_mib when present.
DEVICE_FIGURES = ("tensor_bytes", "tensor_peak", "cuda_allocated", "cuda_allocated_peak", "cuda_reserved",
                  "cuda_reserved_peak", "device_used")
TENSORBOARD_INSTALL = 'pip install "torchdoctor[tensorboard]"'
WANDB_INSTALL = 'pip install wandb (or pip install "torchdoctor[wandb]")'
TAIL_PREFIX = "tail/"  # the work after the last optimizer step (final evaluation, saving): its own tags


class Monitor(Protocol):
    """What the supervisor calls: every event as it is applied, then the final report once."""

    def event(self, event: Event) -> None: ...

    def close(self, report: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Entry:
    """What one event adds to a monitor."""

    step: int | None  # the optimizer step (within its attempt) it belongs to; None: the latest step seen
    scalars: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    wall_time: float | None = None
    attempt: int | None = None  # set when an attempt starts: its optimizer steps count from 1 again


# -- events -> entries (pure) ----------------------------------------------------------------------------
def entry_for(event: Event) -> Entry | None:
    """The scalars and texts one event contributes, or None when it has nothing to show."""
    if isinstance(event, MemorySample):
        return _memory_entry(event)
    if isinstance(event, ProcessSample):
        return _process_entry(event)
    if isinstance(event, OutOfMemory):
        return _oom_entry(event)
    if isinstance(event, RunStarted):
        text = f"attempt {event.attempt}: `{' '.join(event.argv)}` (accounting {event.accounting})"
        return Entry(step=None, texts={"run": text}, wall_time=event.t, attempt=event.attempt)
    if isinstance(event, Finding):
        where = f" at {event.location}" if event.location else ""
        text = f"**{event.id}** ({event.severity}) {event.title}{where}\n\n{event.evidence}\n\nFix: {event.fix}"
        return Entry(step=None, texts={f"findings/{event.id}": text}, wall_time=event.t)
    if isinstance(event, Note):
        return Entry(step=event.step, texts={"notes": f"{event.level}: {event.message}"}, wall_time=event.t)
    if isinstance(event, Resume):
        return Entry(step=event.step, texts={"notes": f"resume {event.status}: {event.message}"}, wall_time=event.t)
    return None  # the end of the run is in the summary that close() writes


def _mib(value: Any) -> float | None:
    """Bytes as MiB; None for anything that is not a measured number (a missing figure stays missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value / MIB


def _put(scalars: dict[str, float], tag: str, value: float | int | None) -> None:
    if value is not None and not isinstance(value, bool):
        scalars[tag] = float(value)


def device_scalars(device: str, figures: dict[str, Any]) -> dict[str, float]:
    """``memory/<device>/...`` for the figures a sample holds for one device: only the keys present."""
    scalars: dict[str, float] = {}
    base = f"memory/{device}"
    for key in DEVICE_FIGURES:
        _put(scalars, f"{base}/{key}_mib", _mib(figures.get(key)))
    for phase, value in (figures.get("phase_peaks") or {}).items():
        _put(scalars, f"{base}/phase/{phase}_mib", _mib(value))
    for category, value in (figures.get("breakdown") or {}).items():
        _put(scalars, f"{base}/breakdown/{category}_mib", _mib(value))
    return scalars


def _memory_entry(sample: MemorySample) -> Entry:
    scalars: dict[str, float] = {}
    for device, figures in sorted(sample.devices.items()):
        scalars.update(device_scalars(device, figures or {}))
    _put(scalars, "memory/host/rss_mib", _mib(sample.rss_bytes))
    if sample.step_time_s is not None:
        scalars["time/step_s"] = float(sample.step_time_s)
    if sample.span == "tail":  # same step number as the last step: its own tags, or it would overwrite them
        scalars = {TAIL_PREFIX + tag: value for tag, value in scalars.items()}
    return Entry(step=sample.step, scalars=scalars, wall_time=sample.t)


def _process_entry(sample: ProcessSample) -> Entry:
    """The supervisor's once-a-second probe: it has no step, so it goes at the latest step seen."""
    scalars: dict[str, float] = {}
    _put(scalars, "process/rss_mib", _mib(sample.rss_bytes))
    _put(scalars, "process/children_rss_mib", _mib(sample.children_rss_bytes))
    for gpu, used in sorted(sample.device_used.items()):
        _put(scalars, f"process/{gpu}/device_used_mib", _mib(used))
    return Entry(step=None, scalars=scalars, wall_time=sample.t)


def _oom_entry(oom: OutOfMemory) -> Entry:
    scalars = {"oom/events": 1.0}  # a point at the failing step, even when the sizes are unknown
    _put(scalars, "oom/requested_mib", _mib(oom.requested_bytes))
    _put(scalars, "oom/in_use_mib", _mib(oom.in_use_bytes))
    _put(scalars, "oom/capacity_mib", _mib(oom.capacity_bytes))
    for category, value in (oom.breakdown or {}).items():
        _put(scalars, f"oom/breakdown/{category}_mib", _mib(value))
    return Entry(step=oom.step, scalars=scalars, texts={"oom": oom_text(oom)}, wall_time=oom.t)


def oom_text(oom: OutOfMemory) -> str:
    """The OOM in words (Markdown, as TensorBoard's text tab renders it)."""
    return (f"**out of memory** at step {oom.step}, phase {oom.phase or 'n/a'}, device {oom.device or 'n/a'} "
            f"({oom.backend}): requested {format_bytes(oom.requested_bytes)}, in use {format_bytes(oom.in_use_bytes)}, "
            f"capacity {format_bytes(oom.capacity_bytes)}\n\n    {oom.message}")


# -- the final report -> summary (pure) ------------------------------------------------------------------
def final_scalars(report: dict[str, Any]) -> dict[str, float]:
    """``peak/<device>/<kind>_mib`` for each peak of the report, and the run's totals."""
    scalars: dict[str, float] = {}
    for peak in report.get("peaks") or []:
        _put(scalars, f"peak/{peak['device']}/{peak['kind']}_mib", _mib(peak.get("bytes")))
    _put(scalars, "run/steps", report.get("steps"))
    _put(scalars, "run/exit_code", report.get("exit_code"))
    _put(scalars, "run/attempts", (report.get("run") or {}).get("attempts"))
    _put(scalars, "time/mean_step_s", report.get("mean_step_time_s"))
    return scalars


def summary_markdown(report: dict[str, Any]) -> str:
    """How the run ended and its peaks, as a Markdown table."""
    run = report.get("run") or {}
    lines = [f"**{report.get('outcome')}** (exit {report.get('exit_code')}) · {report.get('steps')} optimizer steps"
             f" · {run.get('attempts') or 1} attempt(s)"]
    recovery = report.get("recovery")
    if recovery:
        how = ", ".join(recovery.get("remedies") or []) or "no remedy"
        lines[0] += f" · {'recovered' if recovery.get('recovered') else 'not recovered'} ({how})"
    attempts = run.get("attempts") or 1
    lines += ["", f"Peaks{f' of attempt {attempts} (its own step numbers)' if attempts > 1 else ''}:", "",
              "| device | kind | peak | step | phase |", "| --- | --- | --- | --- | --- |"]
    for peak in report.get("peaks") or []:
        step = "" if peak.get("step") is None else f"{peak['step']}{' (tail)' if peak.get('span') == 'tail' else ''}"
        lines.append(f"| {peak['device']} | {peak['kind']} | {format_bytes(peak.get('bytes'))} | {step} "
                     f"| {peak.get('phase') or ''} |")
    if run.get("run_dir"):
        lines += ["", f"report: `{os.path.join(run['run_dir'], 'report.json')}`"]
    return "\n".join(lines)


# -- where entries go (shared by both monitors) -----------------------------------------------------------
@dataclass(frozen=True)
class Placed:
    entry: Entry
    attempt: int
    step: int  # within the attempt (TensorBoard: one run per attempt)
    row: int  # across attempts, only growing (W&B drops a row whose step goes back)


class Clock:
    """Places each entry in its attempt, at its step there, and on a row count that only grows across attempts:
    attempt N's step s is row ``offset + s``, its ``offset`` one past the previous attempt's last row."""

    def __init__(self) -> None:
        self.attempt, self.step, self.offset, self.row = 1, 0, 0, 0
        self._ended = False  # the attempt's script has finished: the next process has no attempt number yet

    def place(self, event: Event) -> Placed | None:
        if isinstance(event, RunFinished):
            self._ended = True
            return None
        entry = entry_for(event)
        if entry is None:
            return None
        if entry.attempt is not None:
            self._ended = False
            if entry.attempt != self.attempt:
                self.attempt, self.step, self.offset = entry.attempt, 0, self.row + 1
        elif self._ended and isinstance(event, ProcessSample):
            return None  # a relaunched process probed before its agent said which attempt it is
        if entry.step is not None:
            self.step = max(self.step, entry.step)  # never back: TensorBoard would discard the later points
        self.row = max(self.row, self.offset + self.step)
        return Placed(entry, self.attempt, self.step, self.row)


# -- TensorBoard --------------------------------------------------------------------------------------------
class TensorBoardMonitor:
    """Writes each attempt as its own TensorBoard run: ``DIR/<run>`` for the first, ``DIR/<run>/attempt-N`` after.

    A relaunched attempt counts its optimizer steps from 1 again; in one run TensorBoard would take the smaller
    step for a restart and discard the first attempt's later points, so each attempt gets its own directory.
    """

    def __init__(self, log_dir: str, make_writer: Callable[[str], Any]) -> None:
        self.log_dir = log_dir
        self._make_writer = make_writer
        self._clock = Clock()
        self._writers: dict[int, Any] = {1: make_writer(log_dir)}
        self._last_step: dict[int, int] = {1: 0}

    def attempt_dir(self, attempt: int) -> str:
        return self.log_dir if attempt == 1 else os.path.join(self.log_dir, f"attempt-{attempt}")

    def event(self, event: Event) -> None:
        placed = self._clock.place(event)
        if placed is None:
            return
        if placed.attempt not in self._writers:
            self._writers[placed.attempt] = self._make_writer(self.attempt_dir(placed.attempt))
        self._last_step[placed.attempt] = placed.step
        writer, entry = self._writers[placed.attempt], placed.entry
        for tag, value in entry.scalars.items():
            writer.add_scalar(tag, value, placed.step, walltime=entry.wall_time)
        for tag, text in entry.texts.items():
            writer.add_text(tag, text, placed.step, walltime=entry.wall_time)

    def close(self, report: dict[str, Any]) -> None:
        """The summary and the final peaks go into the first attempt's run, where a reader looks first."""
        writer, step = self._writers[1], self._last_step[1]
        for tag, value in final_scalars(report).items():
            writer.add_scalar(tag, value, step)
        writer.add_text("summary", summary_markdown(report), step)
        for each in self._writers.values():
            each.close()  # flushes


def _require(module: str, option: str, install: str) -> Any:
    """Import an optional package, or stop before the script runs with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{option} needs the {module.split('.')[0]} package: {install}") from None


class SummaryFileWriter:
    """The part of ``torch.utils.tensorboard.SummaryWriter`` used here (``add_scalar``, ``add_text``, ``close``),
    writing the same records through TensorBoard's own ``EventFileWriter``.

    Why not SummaryWriter itself: importing it imports torch into the supervisor, measured at 3.6 s and 234 MiB
    of RSS before the script can start, against 0.7 s and 52 MiB for this (2 cores, torch 2.13). The supervisor
    never imports torch, and it must keep its memory for surviving the script's.
    """

    def __init__(self, log_dir: str, flush_secs: float = 5) -> None:  # 5 s: a TensorBoard watching DIR is live
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
        from tensorboard.plugins.text import plugin_data_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._text_metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="text", content=plugin_data_pb2.TextPluginData(version=0).SerializeToString()))
        self._tensor, self._shape = tensor_pb2.TensorProto, tensor_shape_pb2.TensorShapeProto
        self._file = EventFileWriter(log_dir, flush_secs=flush_secs)

    def add_scalar(self, tag: str, value: float, step: int, walltime: float | None = None) -> None:
        self._add(self._summary.Value(tag=tag, simple_value=value), step, walltime)

    def add_text(self, tag: str, text: str, step: int, walltime: float | None = None) -> None:
        # as SummaryWriter.add_text: a one-string tensor under "<tag>/text_summary" for the text dashboard
        tensor = self._tensor(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                              tensor_shape=self._shape(dim=[self._shape.Dim(size=1)]))
        self._add(self._summary.Value(tag=f"{tag}/text_summary", metadata=self._text_metadata, tensor=tensor),
                  step, walltime)

    def _add(self, value: Any, step: int, walltime: float | None) -> None:
        event = self._event(summary=self._summary(value=[value]), step=int(step),
                            wall_time=time.time() if walltime is None else walltime)
        self._file.add_event(event)

    def close(self) -> None:
        self._file.close()  # flushes


def open_tensorboard(tensorboard_dir: str, name: str) -> TensorBoardMonitor:
    """The monitor writing into ``tensorboard_dir/name``; a directory it cannot write is the user's to fix."""
    _require("tensorboard", "--tensorboard", TENSORBOARD_INSTALL)
    log_dir = os.path.join(tensorboard_dir, name)
    try:
        os.makedirs(log_dir, exist_ok=True)
        return TensorBoardMonitor(log_dir, SummaryFileWriter)  # creates the first event file
    except OSError as exc:
        raise UsageError(f"--tensorboard {tensorboard_dir}: cannot write there ({exc.strerror or exc})") from None


# -- Weights & Biases ---------------------------------------------------------------------------------------
class WandbMonitor:
    """Logs to one W&B run, at the :class:`Clock`'s rows: attempt 1's rows are its optimizer steps, a later
    attempt's continue after them; ``run/attempt`` on each row says which attempt it came from."""

    def __init__(self, run: Any, table: Callable[..., Any] | None = None) -> None:
        self._run = run
        self._table = table  # wandb.Table, for the texts at the end (None: no table)
        self._clock = Clock()
        self._texts: list[list[Any]] = []

    def event(self, event: Event) -> None:
        placed = self._clock.place(event)
        if placed is None:
            return
        if isinstance(event, RunStarted):
            self._run.config.update({"argv": event.argv, "accounting": event.accounting,
                                     "torch_version": event.torch_version, "cuda_version": event.cuda_version},
                                    allow_val_change=True)
        entry = placed.entry
        for tag, text in entry.texts.items():
            self._texts.append([placed.row, placed.attempt, tag, text])
        self._run.log({**entry.scalars, **entry.texts, "run/attempt": placed.attempt}, step=placed.row)

    def close(self, report: dict[str, Any]) -> None:
        summary = {**final_scalars(report), "outcome": report.get("outcome"),
                   "recovered": bool((report.get("recovery") or {}).get("recovered"))}
        self._run.summary.update(summary)
        if self._table is not None and self._texts:
            table = self._table(columns=["step", "attempt", "tag", "text"], data=self._texts)
            self._run.log({"torchdoctor/events": table}, step=self._clock.row)
        self._run.finish(exit_code=report.get("exit_code") or 0)


def open_wandb(name: str, run_dir: str, target: str, stderr: IO[str]) -> WandbMonitor | None:
    """Start the W&B run (the user's WANDB_* settings win); None, with a warning, when it cannot start."""
    wandb = _require("wandb", "--wandb", WANDB_INSTALL)
    service = os.environ.get("WANDB_SERVICE")
    settings = {} if "WANDB_CONSOLE" in os.environ else {"console": "off"}  # our stdout is the script's
    try:
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "torchdoctor"),
                         name=os.environ.get("WANDB_NAME", name), dir=os.environ.get("WANDB_DIR", run_dir),
                         config={"target": target, "run_dir": os.path.abspath(run_dir)}, settings=settings)
    except Exception as exc:  # no login, no network...: the training still runs, without W&B
        print(f"[torchdoctor] wandb: could not start a run ({type(exc).__name__}: {exc}); the run goes on without "
              f"W&B", file=stderr)
        return None
    finally:
        # wandb.init exports its service address; the script's own wandb must not attach to our run's service
        if service is None:
            os.environ.pop("WANDB_SERVICE", None)
        else:
            os.environ["WANDB_SERVICE"] = service
    return WandbMonitor(run, table=getattr(wandb, "Table", None))


# -- both -----------------------------------------------------------------------------------------------------
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
    if tensorboard_dir:
        _require("tensorboard", "--tensorboard", TENSORBOARD_INSTALL)
    if use_wandb:
        _require("wandb", "--wandb", WANDB_INSTALL)
    name = os.path.basename(os.path.normpath(run_dir))
    monitors: list[Monitor] = []
    if tensorboard_dir:
        monitors.append(Guarded("tensorboard", open_tensorboard(tensorboard_dir, name)))
    if use_wandb:
        wandb_monitor = open_wandb(name, run_dir, target, sys.stderr)
        if wandb_monitor is not None:
            monitors.append(Guarded("wandb", wandb_monitor))
    return monitors

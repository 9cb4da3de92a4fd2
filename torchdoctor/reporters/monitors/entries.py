"""Events -> what a monitor logs, the same for every backend (pure): :func:`entry_for` and the :class:`Clock` that
places each entry at its attempt, step and row."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

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
TAIL_PREFIX = "tail/"  # the work after the last optimizer step (final evaluation, saving): its own tags


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

"""RunState: a fold over the event stream. Pure: no torch, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.events import (
    BatchSource,
    Estimated,
    Event,
    Finding,
    Heartbeat,
    MemorySample,
    Note,
    OutOfMemory,
    ProcessExited,
    ProcessSample,
    RanksFailed,
    Resume,
    RunFinished,
    RunStarted,
    Stall,
    TrainingFigures,
)
from torchdoctor.sizes import format_bytes

# Per-device figures that are peaks, with the kind of number each one is (the report labels them so).
PEAK_KINDS = {
    "tensor_peak": "tensor_bytes",
    "cuda_allocated_peak": "cuda_allocated",
    "cuda_reserved_peak": "cuda_reserved",
    "device_used": "device_used",
}


@dataclass
class Peak:
    """The largest value of one kind of figure on one device, and when it happened."""

    device: str
    kind: str
    bytes: int
    step: int | None = None
    span: str | None = None
    phase: str | None = None
    breakdown: dict[str, int] | None = None
    phase_peaks: dict[str, int] | None = None
    top_tensors: list[dict[str, Any]] | None = None  # the largest storages alive at the peak
    # tensor_bytes only: each phase's largest value over all measured spans, and the step it was in
    run_phase_peaks: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class RunState:
    started: RunStarted | None = None
    finished: RunFinished | None = None
    resume: Resume | None = None  # a relaunch's resume from a checkpoint: done, or abandoned and why
    exited: ProcessExited | None = None
    training: TrainingFigures | None = None  # what the training loop did (sent when the attempt ends)
    samples: list[MemorySample] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    ooms: list[OutOfMemory] = field(default_factory=list)
    batch_sources: dict[tuple[str, int], BatchSource] = field(default_factory=dict)
    peaks: dict[tuple[str, str], Peak] = field(default_factory=dict)
    step_peaks: dict[str, Peak] = field(default_factory=dict)  # per device: the largest tensor peak of a whole step
    phase_peaks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # device -> phase -> peak
    last_process: ProcessSample | None = None
    first_t: float | None = None
    last_t: float | None = None
    steps: int = 0
    measured_steps: int = 0
    last_measured: MemorySample | None = None
    last_notable: str | None = None  # what the live view shows as the last notable event
    where: str | None = None  # where the script's main thread was at the last heartbeat
    stacks_signal: int | None = None  # the signal the agent registered to write its stacks (None: none)
    stall: Stall | None = None  # the run's longest stall (no progress), as the supervisor found it
    stalled: bool = False  # stalled now (until the next step)
    estimates: list[Estimated] = field(default_factory=list)  # torchdoctor estimate's counts
    rank_failures: list[dict[str, Any]] = field(default_factory=list)  # torch's launcher: the failed ranks' exits
    # (t, steps) of recent step samples, for steps/s
    _recent: list[tuple[float, int]] = field(default_factory=list)

    def apply(self, event: Event) -> None:
        if self.first_t is None:
            self.first_t = event.t
        self.last_t = event.t if self.last_t is None else max(self.last_t, event.t)
        if isinstance(event, RunStarted):
            self.started = event
        elif isinstance(event, MemorySample):
            self._apply_sample(event)
        elif isinstance(event, ProcessSample):
            if event.rss_bytes is not None or self.last_process is None:
                self.last_process = event
            self._raise_peak("host", "process_rss", event.rss_bytes, None, None)
            self._raise_peak("host", "workers_rss", event.children_rss_bytes, None, None)
            self._raise_peak("host", "cgroup_peak", event.cgroup_peak_bytes, None, None)
            for device, used in event.device_used.items():
                self._raise_peak(device, "device_used", used, None, None)
        elif isinstance(event, Note):
            self.notes.append(event)
            self.last_notable = event.message
        elif isinstance(event, Finding):
            self.findings.append(event)
        elif isinstance(event, OutOfMemory):
            self.ooms.append(event)
            where = f"step {event.step}" + (f", {event.phase}" if event.phase else "")
            self.last_notable = f"out of memory at {where}: tried to allocate {format_bytes(event.requested_bytes)}"
        elif isinstance(event, BatchSource):
            self.batch_sources[(event.source, event.index)] = event
        elif isinstance(event, Resume):
            self.resume = event
            self.last_notable = event.message
        elif isinstance(event, TrainingFigures):
            self.training = event
        elif isinstance(event, RunFinished):
            self.finished = event
        elif isinstance(event, ProcessExited):
            self.exited = event
        elif isinstance(event, RanksFailed):
            self.rank_failures = list(event.failures)
        elif isinstance(event, Estimated):
            self.estimates.append(event)
        elif isinstance(event, Heartbeat):
            self.where = event.where
            self.stacks_signal = event.stacks_signal
        elif isinstance(event, Stall):
            if self.stall is None or event.seconds >= self.stall.seconds or event.since != self.stall.since:
                self.stall = event
            self.stalled = True
            self.last_notable = f"stalled for {event.seconds:.0f} s at {event.where or 'an unknown place'}"

    def _apply_sample(self, sample: MemorySample) -> None:
        self.samples.append(sample)
        if sample.span == "step":
            self.stalled = False
            self.steps = max(self.steps, sample.step)
            self._recent.append((sample.t, sample.step))
            del self._recent[:-50]
        if sample.measured:
            self.measured_steps += sample.span == "step"
            self.last_measured = sample
        step = sample.step if sample.span == "step" else None
        self._raise_peak("host", "process_rss", sample.rss_bytes, step, sample.span)
        for device, figures in sample.devices.items():
            self._raise_step_peak(device, sample, figures)
            self._raise_phase_peaks(device, sample, figures)
            for key, kind in PEAK_KINDS.items():
                value = figures.get(key)
                peak = self._raise_peak(device, kind, value, sample.step, sample.span)
                if peak is not None and key == "tensor_peak":
                    peak.phase = figures.get("peak_phase")
                    peak.breakdown = figures.get("breakdown")
                    peak.phase_peaks = figures.get("phase_peaks")
                    peak.top_tensors = figures.get("top_tensors")
                    where = f"step {sample.step}" if sample.span == "step" else "after the last step"
                    self.last_notable = (f"new {device} tensor peak {format_bytes(peak.bytes)} at {where}"
                                         f" ({peak.phase})")

    def _raise_phase_peaks(self, device: str, sample: MemorySample, figures: dict[str, Any]) -> None:
        """Each phase's largest value over the run (a forward may peak in another step than the run's peak)."""
        best = self.phase_peaks.setdefault(device, {})
        for phase, value in (figures.get("phase_peaks") or {}).items():
            if isinstance(value, int) and value > best.get(phase, {}).get("bytes", -1):
                best[phase] = {"bytes": value, "step": sample.step, "span": sample.span}

    def _raise_step_peak(self, device: str, sample: MemorySample, figures: dict[str, Any]) -> None:
        """The largest tensor peak of a completed step (what a whole step needs, not a step cut short)."""
        value = figures.get("tensor_peak")
        if sample.span != "step" or not sample.measured or not isinstance(value, int):
            return
        current = self.step_peaks.get(device)
        if current is None or value > current.bytes:
            self.step_peaks[device] = Peak(device=device, kind="tensor_bytes", bytes=value, step=sample.step,
                                           span="step", phase=figures.get("peak_phase"),
                                           breakdown=figures.get("breakdown"))

    def _raise_peak(self, device: str, kind: str, value: int | None, step: int | None,
                    span: str | None) -> Peak | None:
        """Record ``value`` if it beats the peak so far; returns the new peak, or None."""
        if value is None:
            return None
        current = self.peaks.get((device, kind))
        if current is not None and value <= current.bytes:
            return None
        peak = Peak(device=device, kind=kind, bytes=int(value), step=step, span=span)
        self.peaks[(device, kind)] = peak
        return peak

    @property
    def steps_per_second(self) -> float | None:
        if len(self._recent) < 2:
            return None
        (t0, s0), (t1, s1) = self._recent[0], self._recent[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    @property
    def last_note(self) -> Note | None:
        return self.notes[-1] if self.notes else None


def fold(events: Iterable[Event]) -> RunState:
    state = RunState()
    for event in events:
        state.apply(event)
    return state

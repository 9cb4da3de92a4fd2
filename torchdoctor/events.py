"""The only contract between the child (agent) and the parent (supervisor): versioned event records.

Each event is a frozen dataclass; on the wire it is one JSON object per line with ``"v"`` (the schema
version) and ``"kind"``. Memory figures are bytes, ``None`` where not measured (never a made-up ``0``).

Per-device figures in :class:`MemorySample` are a dict keyed by device (``"cpu"``, ``"cuda:0"``); each value
holds the keys documented in ``docs/report-schema.md`` (``tensor_bytes``, ``tensor_peak``, ``phase_peaks``,
``breakdown``, ``cuda_allocated``, ...), each a figure of one named kind.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

SCHEMA_VERSION = 1

# What holds the memory, by when a storage was born and what it became: activations_saved (born in a forward and
# saved by autograd for the backward), activations_other (the rest born in a forward, backward or evaluation:
# temporaries, outputs not saved), optimizer_temporaries (born in optimizer.step and
# not kept in optimizer.state), inputs_data (born outside all of those: batches, datasets, targets, metrics).
# With the CPU allocator probe (agent/memory/allocator_probe.py) kernels' own buffers (oneDNN reorders, RNN
# workspaces) are counted in the category of the phase that made them, as the tensors are.
# What runs (agent/hooks/phases.py tells them apart), in the order reports list them.
Phase = Literal["forward", "backward", "optimizer", "evaluation", "other"]
PHASES: tuple[Phase, ...] = get_args(Phase)
# How a script's process ended (exit_status in supervisor/attempt_loop.py)
Outcome = Literal["success", "failed", "interrupted", "killed", "stalled"]

CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations_other", "optimizer_temporaries",
              "inputs_data", "activations_saved")


class EventError(ValueError):
    """A line of the event stream is not an event this version understands."""


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    t: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose (dataclasses.asdict deep-copies): fields are JSON-ready values already, and the
        # writer thread encodes one of these per optimizer step while holding the GIL.
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"v": SCHEMA_VERSION, "kind": self.kind, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class RunStarted(Event):
    """The agent is up and about to run the user's script."""

    kind: ClassVar[str] = "run_started"
    pid: int
    target: str
    is_module: bool
    argv: list[str]
    python: str
    torch_version: str | None
    cuda_version: str | None
    cuda_devices: int
    accounting: str  # "sampled", "exact" or "off"
    sample_every: int
    attempt: int = 1
    # "allocator" (the CPU allocator's, via the probe) or "tensor outputs (why)"
    cpu_figures: str = "tensor outputs"
    # a rank started by torch's launcher (torchrun's RANK, LOCAL_RANK, WORLD_SIZE); None in a single process
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None


@dataclass(frozen=True)
class MemorySample(Event):
    """Memory of one span of the run: an optimizer step (``span="step"``) or the work after the last one."""

    kind: ClassVar[str] = "memory_sample"
    step: int
    span: str  # "step" | "tail"
    step_time_s: float | None
    measured: bool  # exact tensor accounting covered this whole span
    rss_bytes: int | None
    devices: dict[str, dict[str, Any]]
    # the most resident memory during the span (Linux VmHWM, reset at each span), read where the CPU's tensor
    # figures are not the allocator's (then the only sign of a peak in an unmeasured span)
    rss_peak_bytes: int | None = None


@dataclass(frozen=True)
class Note(Event):
    """A notable event for the live view and the report."""

    kind: ClassVar[str] = "note"
    level: str  # "info" | "warning" | "error"
    message: str
    step: int | None = None


@dataclass(frozen=True)
class Finding(Event):
    """A training-loop problem the doctor can prove (filled by the doctor)."""

    kind: ClassVar[str] = "finding"
    id: str
    severity: str  # "error" | "warning" | "info"
    title: str
    location: str | None
    evidence: str
    fix: str


@dataclass(frozen=True)
class OutOfMemory(Event):
    """An out-of-memory error in the script: where it happened and what was asked and free."""

    kind: ClassVar[str] = "out_of_memory"
    step: int  # the optimizer step in progress (1-based)
    phase: str | None
    device: str | None
    backend: str  # "torchdoctor-budget", "cuda", "cpu", "mps", ...
    requested_bytes: int | None
    in_use_bytes: int | None
    capacity_bytes: int | None
    message: str
    breakdown: dict[str, int] | None = None  # what the device held when it failed
    loader: int | None = None  # the DataLoader (creation index) that delivered the batch last before it failed
    grad_enabled: bool | None = None  # whether the forward running then had autograd on (None: not tracked)
    top_tensors: list[dict[str, Any]] | None = None  # the largest tensors alive then (exact accounting only)


@dataclass(frozen=True)
class BatchSource(Event):
    """Where the script's batches come from, as far as torchdoctor can change their size."""

    kind: ClassVar[str] = "batch_source"
    index: int  # creation order among the script's DataLoaders; -1 for a command-line option
    source: str  # "dataloader" | "argument"
    batch_size: int | None
    training: bool  # its batches fed a backward pass
    detail: str = ""
    workers: int = 0


@dataclass(frozen=True)
class ProcessSample(Event):
    """What the supervisor sees from outside the child: RSS and device-level used memory (NVML)."""

    kind: ClassVar[str] = "process_sample"
    rss_bytes: int | None
    children_rss_bytes: int | None
    device_used: dict[str, int] = field(default_factory=dict)
    # the cgroup's own high-water mark when it rose during this run (the kernel's figure, not a sample)
    cgroup_peak_bytes: int | None = None


@dataclass(frozen=True)
class Resume(Event):
    """What a relaunch asked to resume from a checkpoint did: ``resumed`` there, or ``abandoned`` it (with
    ``restart`` when the script must be relaunched from the beginning because part of it was already skipped)."""

    kind: ClassVar[str] = "resume"
    status: str  # "resumed" | "abandoned"
    message: str
    step: int | None = None  # the checkpoint's optimizer step
    checkpoint: str | None = None
    restart: bool = False
    seconds: float | None = None  # from the start of the process to the resumed position


@dataclass(frozen=True)
class TrainingFigures(Event):
    """What the training loop did in one attempt, measured as it ran (``agent/training_ledger.py``): the report
    compares attempts with them to say whether a recovered run trained as asked."""

    kind: ClassVar[str] = "training_figures"
    # per optimizer (in the order of their first steps), or one record of manual parameter updates: name, steps,
    # samples and tokens per step (value -> steps), the first steps' figures, the unfinished step ("pending")
    updates: list[dict[str, Any]]
    step_calls: int  # optimizer.step calls the script made (micro-batching lets one per batch through)
    backwards: int
    iterations: int  # loop iterations: batches drawn from the training DataLoader (micro-batches count), else
    #                  backward passes
    reductions: dict[str, int]  # how the losses of the backward passes reduced: mean / token-mean / sum / unknown
    passes: list[dict[str, Any]]  # passes over training DataLoaders: loader, number, batches, exhausted, length
    batchnorm: dict[str, Any] | None  # BatchNorm layers in training: layers, forwards, smallest_batch
    closure: bool  # an optimizer step took a closure (LBFGS)
    settings: dict[str, Any]  # the script's own settings torchdoctor can change (batch size, accumulation)
    remedies: dict[str, int] = field(default_factory=dict)  # what the plan's remedies did (autocast forwards, ...)
    optimizers: list[dict[str, Any]] | None = None  # constructed: name, params (elements), foreach (None: unknown)
    blocks: int = 0  # repeated blocks found in the training models (what activation checkpointing would wrap)
    device: str | None = None  # the device type of the training model's parameters
    loop: dict[str, Any] | None = None  # the training loop read from the source: header, where, bound
    resumed: dict[str, Any] | None = None  # resumed from a run checkpoint: the step, what its first step verified
    broken: str | None = None  # the measurement failed (and stopped): why; the figures are then empty


@dataclass(frozen=True)
class Estimated(Event):
    """``torchdoctor estimate``: the script's first optimizer steps, counted on fake tensors."""

    kind: ClassVar[str] = "estimated"
    batch_size: int | None  # the first training forward's batch (its first tensor's first dimension)
    steps: list[dict[str, Any]]  # per step: peak_bytes, peak_phase, held_bytes, by_phase, by_kind
    device: str  # where the script put its model ("cpu", "cuda:0"): the estimate is for it
    stand_ins: int = 0  # values read back to Python (loss.item() ...), each given a stand-in
    batch_option: str | None = None  # the script's argparse batch-size option, when it has one
    steps_done: int = 0  # optimizer steps completed (the last entry of ``steps`` is partial when fewer than asked)
    layers: list[dict[str, Any]] = field(default_factory=list)
    forward_growth_bytes: int | None = None  # what the first training forward left alive (the layers' total is in it)
    kernels_unmeasured: str = ""  # why the CPU kernels' own buffers were not measured ("": they were, or a GPU)
    kernel_failures: list[str] = field(default_factory=list)  # ops whose buffers could not be measured (not counted)


@dataclass(frozen=True)
class RunFinished(Event):
    """The script ended, as seen from inside the child."""

    kind: ClassVar[str] = "run_finished"
    exit_code: int
    exception: str | None
    message: str | None
    steps: int
    dropped_events: int
    oom: bool = False


@dataclass(frozen=True)
class RanksFailed(Event):
    """torch's launcher ended with failed ranks (``ChildFailedError``), written by its process (agent/launch.py)
    once every rank of this machine has stopped."""

    kind: ClassVar[str] = "ranks_failed"
    # per failed rank of this machine: rank, local_rank, pid, exit_code (negative: died by that signal), signal
    # (its name, or None), message (torch's: a traceback's last line, or "Signal 9 (SIGKILL) received by PID ...")
    failures: list[dict[str, Any]]


@dataclass(frozen=True)
class ProcessExited(Event):
    """The child process is gone, as seen by the supervisor (authoritative exit code)."""

    kind: ClassVar[str] = "process_exited"
    returncode: int  # Popen's: negative for a signal
    exit_code: int  # what ``torchdoctor run`` returns
    outcome: Outcome
    signal: str | None = None
    # how the supervisor stopped it, when it did: {"reason", "signals" sent in order, "grace_s"}
    stop: dict[str, Any] | None = None


@dataclass(frozen=True)
class Heartbeat(Event):
    """The agent is alive: where the script's main thread is now (the innermost frame of the user's code)."""

    kind: ClassVar[str] = "heartbeat"
    where: str | None
    stacks_signal: int | None = None  # the signal that makes faulthandler write the stacks (None: not registered)


@dataclass(frozen=True)
class Stall(Event):
    """No progress (no optimizer step, the main thread in one place) for ``seconds``, as the supervisor saw it."""

    kind: ClassVar[str] = "stall"
    since: float  # wall time of the last progress
    seconds: float
    where: str | None
    stacks: str | None = None  # every thread's Python stack (faulthandler), when they could be read


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (RunStarted, MemorySample, Note, Finding, OutOfMemory, BatchSource, ProcessSample, Resume,
                TrainingFigures, RunFinished, RanksFailed, ProcessExited, Heartbeat, Stall, Estimated)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its dict; raises :class:`EventError` for unknown kinds or versions."""
    if not isinstance(data, dict):
        raise EventError("an event must be a JSON object")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise EventError(f"event schema version {version!r} is not {SCHEMA_VERSION}")
    cls = EVENT_TYPES.get(data.get("kind", ""))
    if cls is None:
        raise EventError(f"unknown event kind {data.get('kind')!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise EventError(f"bad {cls.kind} event: {exc}") from None


def event_from_json(line: str) -> Event:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EventError(f"not JSON: {exc}") from None
    return event_from_dict(data)

"""What the recovery planner decides from and what it returns: plain data, no torch, no processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torchdoctor.plan import REMEDIES, Plan

FailureKind = Literal["oom", "host-kill", "eval-needs-grad", "resume-abandoned", "success", "other"]
ENDLESS_BATCHES = 1_000_000  # a pass this long is a sampler drawn from until the loop's own count stops it


@dataclass(frozen=True)
class RecoveryOptions:
    max_retries: int = 3
    min_batch_size: int = 1
    remedies: tuple[str, ...] = REMEDIES
    keep_effective_batch: bool = True
    batch_arg: str | None = None  # the script's batch-size option, named by the user
    allow_batchnorm_split: bool = False  # micro-batches may reach BatchNorm layers (their statistics change)


@dataclass(frozen=True)
class LoaderInfo:
    index: int
    batch_size: int | None
    training: bool


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    phase: str | None = None
    message: str = ""
    loaders: tuple[LoaderInfo, ...] = ()
    argument: tuple[str, int] | None = None  # (option, batch size) read from the script's command line
    has_workers: bool = False
    oom_killer: bool | None = None  # for a SIGKILL: whether the kernel's OOM killer fired (None: unknown)
    oom: dict[str, Any] | None = None  # the OutOfMemory event (device, loader, grad_enabled, figures)
    training: dict[str, Any] | None = None  # what the attempt measured of its training loop (TrainingFigures)
    step_peak: dict[str, Any] | None = None  # the largest tensor peak of a completed step on the OOM's device


@dataclass(frozen=True)
class Decision:
    plan: Plan | None  # None: stop here
    remedy: str | None
    reason: str
    changes: dict[str, object] = field(default_factory=dict)
    passed_over: tuple[str, ...] = ()  # "remedy: why it was not used" for the remedies before this one


class FailureFacts:
    """What the failed attempt says about the script, read from its measured figures."""

    def __init__(self, failure: Failure) -> None:
        self.training = failure.training or {}
        self.oom = failure.oom or {}
        self.settings = self.training.get("settings") or {}
        updates = self.training.get("updates") or []
        optimizers = self.training.get("optimizers")
        self.manual = bool(updates and updates[0]["name"] == "manual updates") or (
            optimizers == [] and self.training.get("backwards", 0) > 0)
        self.closure = bool(self.training.get("closure"))
        self.batchnorm = bool((self.training.get("batchnorm") or {}).get("layers"))
        self.blocks = int(self.training.get("blocks") or 0)
        self.foreach = any(o.get("foreach") for o in optimizers or [])
        self.device = self.training.get("device") or self.oom.get("device") or ""
        self.loop = self.training.get("loop") or {}

    def endless(self, loader: int) -> str | None:
        """Why the loop over ``loader`` stops by its own count, not when its data runs out (None: it does not)."""
        passes = [p for p in self.training.get("passes") or [] if p["loader"] == loader]
        if any(p.get("length") is not None and p["length"] >= ENDLESS_BATCHES for p in passes):
            return (f"DataLoader #{loader}'s sampler is endless ({passes[0]['length']:,} batches a pass), so the loop "
                    f"stops by its own count, which would count micro-batches")
        left = [p for p in passes[:-1] if not p.get("exhausted")]
        if left:
            return (f"the loop left DataLoader #{loader} after {left[0]['batches']} of its {left[0]['length']} "
                    f"batches, so it stops by its own count, which would count micro-batches")
        return None

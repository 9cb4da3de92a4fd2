"""The plan: what the supervisor asks the next attempt of a run to do differently. No torch here.

It travels to the child as a JSON file named by ``TORCHDOCTOR_PLAN``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torchdoctor.errors import UsageError
from torchdoctor.files import write_json_atomic

ENV_PLAN = "TORCHDOCTOR_PLAN"
# The remedies, in their default order: exact ones first (the training as asked, up to float rounding), the
# cheaper first among them; then those that change the training: the numerics (amp), then, the last resort, smaller
# batches where micro-batches would not keep the training (the report says what changed).
REMEDIES = ("eval-no-grad", "eval-split", "optimizer-foreach", "checkpoint", "micro-batch", "offload", "amp",
            "smaller-batch")


@dataclass(frozen=True)
class Plan:
    attempt: int = 1
    # Split each batch into `micro_batches` micro-batches and accumulate their gradients, so each optimizer step
    # still sees the whole batch. Who splits and who accumulates:
    # - accumulation "torchdoctor": the batches of these DataLoaders (creation order) are split, or the batch-size
    #   option `batch_arg` is divided, and torchdoctor lets optimizer steps through once per whole batch;
    # - accumulation "script": the script's own accumulation setting is multiplied (`accumulation_arg` on its
    #   command line, or `framework` "hf"/"lightning": TrainingArguments / Trainer settings) while its batch size
    #   is divided (`batch_arg`, the framework's setting, or these DataLoaders split without torchdoctor's gates).
    micro_batches: int = 1
    micro_size: int | None = None  # DataLoader splits: micro-batches of this many samples, the rest last
    train_loaders: tuple[int, ...] = ()
    batch_arg: str | None = None
    batch_arg_size: int | None = None  # the batch size the script was given (or defaulted to) in attempt 1
    accumulation: str = "torchdoctor"
    accumulation_arg: str | None = None
    accumulation_size: int | None = None  # the script's accumulation setting as asked
    framework: str | None = None
    keep_effective_batch: bool = True
    eval_no_grad: bool = False
    eval_loaders: tuple[int, ...] = ()  # evaluation DataLoaders whose batches are split into eval_parts
    eval_parts: int = 1
    checkpoint: bool = False  # activation checkpointing of the models' repeated blocks
    offload: bool = False  # saved activations kept in host memory (CUDA)
    foreach_off: bool = False  # optimizers take their single-tensor path (foreach=False)
    amp: str | None = None  # "bf16" or "fp16"
    host_workers_cap: int | None = None  # at most this many DataLoader workers (after a host-memory kill)
    resume_from: str | None = None  # the run checkpoint (or a directory of them) to resume from (--checkpoint-every)
    applied: tuple[str, ...] = field(default_factory=tuple)  # remedies so far, in order, for the report
    excluded: tuple[str, ...] = field(default_factory=tuple)  # remedies undone because the script failed with them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        data = dict(data)
        for key in ("train_loaders", "applied", "excluded", "eval_loaders"):
            data[key] = tuple(data.get(key, ()))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, path: str) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: str) -> Plan:
        try:
            with open(path, encoding="utf-8") as handle:
                return cls.from_dict(json.load(handle))
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"cannot read the plan {path}: {exc}") from None

    def next_attempt(self, **changes: Any) -> Plan:
        return replace(self, attempt=self.attempt + 1, **changes)

    @property
    def is_default(self) -> bool:
        return self == Plan(attempt=self.attempt)


def next_parts(current: int) -> int:
    """The next number of micro-batches per batch: 1, 2, 3, 5, 8, 12, 18, ... (x1.5, finer than halving, so the
    micro-batch found stays close to the largest that fits)."""
    return max(current + 1, -(-current * 3 // 2))

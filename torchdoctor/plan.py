"""The plan: what the supervisor asks the next attempt of a run to do differently. No torch here.

It travels to the child as a JSON file named by ``TORCHDOCTOR_PLAN``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torchdoctor.atomic_files import write_json_atomic
from torchdoctor.errors import UsageError

ENV_PLAN = "TORCHDOCTOR_PLAN"
REMEDIES = ("eval-no-grad", "micro-batch", "amp")


@dataclass(frozen=True)
class Plan:
    attempt: int = 1
    # Split each batch of these DataLoaders (creation order) into `micro_batches` micro-batches and accumulate
    # gradients over them, so the effective batch, the data order and the optimizer steps stay the same.
    micro_batches: int = 1
    train_loaders: tuple[int, ...] = ()
    # A command-line option holding the batch size, divided by micro_batches (scripts without a DataLoader).
    batch_arg: str | None = None
    batch_arg_size: int | None = None  # the batch size the script was given (or defaulted to) in attempt 1
    keep_effective_batch: bool = True
    eval_no_grad: bool = False
    amp: str | None = None  # "bf16" or "fp16"
    host_workers_cap: int | None = None  # at most this many DataLoader workers (after a host-memory kill)
    resume_from: str | None = None  # a directory of run checkpoints to resume from (--checkpoint-every)
    applied: tuple[str, ...] = field(default_factory=tuple)  # remedies so far, in order, for the report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        data = dict(data)
        for key in ("train_loaders", "applied"):
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

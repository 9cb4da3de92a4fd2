"""The training ledger's records: what one optimizer's (or the manual updates') steps were fed, the data of a batch
(its samples and a fingerprint), and the guard that keeps a measuring error from ever stopping the training."""

from __future__ import annotations

import functools
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import first_tensor, graph_nodes

FIRST_STEPS = 8  # steps whose loss and data fingerprint are read (each a device sync on a GPU)
MAX_PARTS = 256  # batches of those steps listed one by one (data order compared sample for sample)
MANUAL = "manual updates"


def batch_samples(data: Any) -> tuple[int | None, Any]:
    """The leading dimension of a batch's first tensor (its samples), and that tensor."""
    tensor = first_tensor(data)
    if tensor is None or tensor.dim() == 0:
        return None, None
    return int(tensor.shape[0]), tensor


def storage_of(tensor: Any) -> int | None:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return None


CHUNK = 1 << 14  # elements summed in float64 at a time (a 128 KiB copy at most)


def fingerprint(tensor: Any) -> float | None:
    """A float64 sum of a batch, summed in pieces of at most ``CHUNK`` elements: ``sum(dtype=float64)`` makes a
    float64 copy of what it sums (3.2 MB for a 1.6 MB float32 batch), which the allocator counts as the script's
    (a VAE's measured peak was 16 % high from it); a piece's copy is at most 128 KiB, and freed at once. The pieces'
    sums are read back together (one device sync)."""
    try:
        parts: list[torch.Tensor] = []
        _sum_pieces(tensor.detach(), parts)
        return float(torch.stack(parts).sum()) if parts else 0.0
    except (RuntimeError, TypeError):
        return None


def _sum_pieces(tensor: torch.Tensor, parts: list[torch.Tensor]) -> None:
    if tensor.dim() == 0 or tensor.numel() <= CHUNK:
        parts.append(tensor.sum(dtype=torch.float64))
    elif tensor.shape[0] == 1:
        _sum_pieces(tensor[0], parts)
    else:
        rows = max(1, CHUNK // (tensor.numel() // tensor.shape[0]))
        for piece in tensor.split(rows):
            _sum_pieces(piece, parts)


def guarded(method: Any) -> Any:
    """The ledger measures; it must never break the script: the first error switches it off and is reported."""
    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.broken is not None:
            return None  # nothing more is measured
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a measurement error is reported, not raised into the script
            self.broken = f"{method.__name__}: {type(exc).__name__}: {exc}"[:300]
            return None
    return guarded


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Its class, its size and whether its step runs the foreach implementation (temporaries of all parameters)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    foreach: bool | None = None
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        choices = [group.get("foreach") for group in optimizer.param_groups]
        if any(choice is None for choice in choices):
            default = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)[1]
            choices = [default if choice is None else choice for choice in choices]
        foreach = any(bool(choice) for choice in choices) and not any(g.get("fused") for g in optimizer.param_groups)
    except Exception:  # noqa: BLE001 - a private torch helper: unknown rather than wrong
        foreach = None
    sizes = sorted({p.numel() * p.element_size() for p in params})
    return {"name": type(optimizer).__name__, "params": sum(p.numel() for p in params), "foreach": foreach,
            "param_bytes": sizes[-64:]}


@dataclass
class Counts:
    """Running totals; a step's figures are the difference between two of these."""

    samples: int = 0
    items: int = 0  # elements of the inputs (tokens of a seq-first batch, whose leading dimension is its length)
    tokens: int = 0
    token_backwards: int = 0  # backward passes whose loss showed its tokens
    backwards: int = 0
    iterations: int = 0
    loss: float = 0.0
    loss_read: int = 0  # backward passes whose loss value was read
    drew: int = 0  # backward passes that consumed a batch (delivered, or seen in a forward)
    print_sum: float = 0.0
    print_read: int = 0  # ... whose data's fingerprint was read
    parts: int = 0  # batches (or micro-batches) listed with their samples and fingerprint, in the first steps

    def copy(self) -> Counts:
        return Counts(**self.__dict__)


@dataclass
class Updater:
    """One optimizer's steps (or the script's manual updates)."""

    name: str
    steps: int = 0
    since: Counts = field(default_factory=Counts)
    samples: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    items: Counter = field(default_factory=Counter)  # steps by the input elements they took
    first: list[dict[str, Any]] = field(default_factory=list)

    def tally(self, now: Counts, parts: list[list[float | None]] | None = None) -> dict[str, Any]:
        """The figures of the step in progress (since this updater's previous step)."""
        before = self.since
        tally: dict[str, Any] = {
            "samples": now.samples - before.samples,
            "items": now.items - before.items,
            "backwards": now.backwards - before.backwards,
            "iterations": now.iterations - before.iterations,
        }
        backwards = tally["backwards"]
        if backwards and now.token_backwards - before.token_backwards == backwards:
            tally["tokens"] = now.tokens - before.tokens
        if backwards and now.loss_read - before.loss_read == backwards:
            tally["loss"] = now.loss - before.loss
        drew = now.drew - before.drew
        if drew and now.print_read - before.print_read == drew:
            tally["fingerprint"] = now.print_sum - before.print_sum
            if parts is not None and now.parts > before.parts:
                tally["parts"] = parts[before.parts:now.parts]  # [samples, fingerprint] of each batch, in order
        return tally

    def stepped(self, now: Counts, parts: list[list[float | None]] | None = None) -> None:
        tally = self.tally(now, parts)
        self.steps += 1
        self.samples[tally["samples"]] += 1
        if "tokens" in tally:
            self.tokens[tally["tokens"]] += 1
        self.items[tally["items"]] += 1
        if len(self.first) < FIRST_STEPS:
            self.first.append(tally)
        self.since = now.copy()

    def to_dict(self, now: Counts, parts: list[list[float | None]] | None = None) -> dict[str, Any]:
        pending = self.tally(now, parts)
        return {"name": self.name, "steps": self.steps, "samples": {str(k): v for k, v in self.samples.items()},
                "tokens": {str(k): v for k, v in self.tokens.items()},
                "items": {str(k): v for k, v in self.items.items()}, "first": self.first,
                "pending": pending if pending["backwards"] or pending["samples"] else None}


class ManualUpdates:
    """Parameter updates made outside ``torch.optim`` (``p.data.add_(p.grad, alpha=-lr)``): a small parameter the
    loss reaches is compared with its copy at each backward pass; a change is an update."""

    def __init__(self) -> None:
        self._param: weakref.ref[torch.Tensor] | None = None
        self._copy: torch.Tensor | None = None

    def changed(self, loss: torch.Tensor | None) -> bool:
        param = self._param() if self._param is not None else None
        if param is None:
            self._pick(loss)
            return False
        changed = self._copy is not None and not torch.equal(param.detach(), self._copy)
        if changed:
            self._copy = param.detach().clone()
        return changed

    def _pick(self, loss: torch.Tensor | None) -> None:
        if loss is None or loss.grad_fn is None:
            return
        best = None
        for node in graph_nodes(loss.grad_fn, limit=5_000):
            variable = getattr(node, "variable", None)
            if isinstance(variable, torch.Tensor) and (best is None or variable.numel() < best.numel()):
                best = variable
        if best is not None and best.numel() <= 1 << 16:
            self._param = weakref.ref(best)
            self._copy = best.detach().clone()

"""OOM recovery for code that calls torchdoctor itself: a retry decorator, a resilient training step, and a
memory budget for the CPU (the same mechanism ``torchdoctor run --memory-budget`` uses).

    @torchdoctor.oom_retry(batch_size_arg="batch_size")
    def evaluate(model, batch_size=1024): ...

    step = torchdoctor.ResilientStep(optimizer, scaler=scaler)
    for x, y in loader:
        loss = step(lambda mb: loss_fn(model(mb[0]), mb[1]), (x, y))
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from torchdoctor.agent.memory.live import Release, live_tensor_bytes, live_tensors, release
from torchdoctor.agent.recovery.micro_batches import split_sizes
from torchdoctor.oom import classify_oom
from torchdoctor.plan import next_parts
from torchdoctor.sizes import parse_size

log = logging.getLogger("torchdoctor")


@dataclass
class OOMRecord:
    """One recovered OOM: what it said, what was changed, and whether memory came back."""

    message: str
    change: str
    leaked_bytes: int
    holders: tuple[str, ...] = ()


# -- a memory budget for the CPU ------------------------------------------------------------------------
@contextlib.contextmanager
def memory_budget(size: int | str, device: str = "cpu") -> Iterator[Any]:
    """Inside the block, tensor allocations on ``device`` beyond ``size`` raise ``torch.OutOfMemoryError``,
    as on a device with that much memory. On the CPU with the allocator probe (agent/allocator_probe.py) each op
    is judged by what the allocator held at its height, kernels' own buffers included; elsewhere by the storages
    of op outputs (a ``TorchDispatchMode``). Inside ``torchdoctor run`` the block restarts the allocator's peak."""
    from torchdoctor.agent.memory import allocator_probe
    from torchdoctor.agent.memory.accounting import ACTIVATIONS, TensorAccountant

    accountant = TensorAccountant()
    alive = [t for t in live_tensors() if t.device.type != "meta" and str(t.untyped_storage().device) == device]
    probe = allocator_probe.start(torch)[0] if device == "cpu" else None
    if probe is not None:
        accountant.attach_probe(probe)  # the bytes held now and their peak are the allocator's
        accountant.count_unseen(alive, ACTIVATIONS)  # plus storages made before the probe was in place
        accountant.reset_span()
    else:
        accountant.classify(alive, ACTIVATIONS, census=True)
    accountant.budget = (device, parse_size(size) if isinstance(size, str) else int(size))
    accountant.open()
    try:
        yield accountant
    finally:
        accountant.close()


# -- the decorator ---------------------------------------------------------------------------------------
def oom_retry(func: Callable[..., Any] | None = None, *, max_retries: int = 3, batch_size_arg: str | None = None,
              min_batch_size: int = 1, on_oom: Callable[[OOMRecord], None] | None = None) -> Any:
    """Retry ``func`` after an out-of-memory error, with its memory really freed in between.

    Works as ``@oom_retry`` and ``@oom_retry(...)``. With ``batch_size_arg`` (the name of one of ``func``'s
    parameters), that argument is halved on each retry, down to ``min_batch_size``. Every other argument is
    passed through unchanged. Each recovered OOM is logged (logger ``torchdoctor``), passed to ``on_oom`` and
    kept in ``wrapper.oom_history``. Other exceptions are never retried.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            baseline = live_tensor_bytes()
            for attempt in range(max_retries + 1):
                box: list[BaseException] = []
                try:
                    return fn(*bound.args, **bound.kwargs)
                except Exception as exc:  # noqa: BLE001 - anything but an OOM is re-raised at once
                    info = classify_oom(exc)
                    if info is None or attempt == max_retries:
                        raise
                    box.append(exc)
                    message = info.message
                change = "retry"
                if batch_size_arg is not None:
                    current = bound.arguments[batch_size_arg]
                    if current // 2 < min_batch_size:
                        raise _exhausted(box, f"{batch_size_arg}={current} cannot be halved below "
                                              f"min_batch_size={min_batch_size}")
                    bound.arguments[batch_size_arg] = current // 2
                    change = f"{batch_size_arg} {current} -> {current // 2}"
                freed = release(box, baseline)
                _report(wrapper, OOMRecord(message[:300], change, freed.leaked_bytes, freed.holders), on_oom)
            raise AssertionError("unreachable")

        wrapper.oom_history = []  # type: ignore[attr-defined]
        return wrapper

    return decorate(func) if func is not None else decorate


def _exhausted(box: list[BaseException], why: str) -> BaseException:
    exc = box.pop()
    _add_note(exc, f"torchdoctor: gave up: {why}")
    return exc


def _add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; Python 3.10 has no ``add_note``: there the note goes where 3.11 keeps it."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        vars(exc)["__notes__"] = [*getattr(exc, "__notes__", ()), note]


def _report(owner: Any, record: OOMRecord, on_oom: Callable[[OOMRecord], None] | None) -> None:
    owner.oom_history.append(record)
    leak = ""
    if record.leaked_bytes:
        leak = f"; {record.leaked_bytes} bytes of tensors still held"
    if record.holders:
        leak += f"; the failed attempt is still referenced by {', '.join(record.holders)}"
    log.warning("torchdoctor: out of memory (%s); %s%s", record.message.splitlines()[0][:120], record.change, leak)
    if on_oom is not None:
        on_oom(record)


# -- the resilient step ------------------------------------------------------------------------------------
def batch_length(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_length(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return batch_length(batch[0])
    raise TypeError(f"cannot split a batch of type {type(batch).__name__}")


def split_batch(batch: Any, parts: int) -> list[tuple[Any, float]]:
    """``parts`` consecutive micro-batches (tensors split on dim 0, structures recursively) and their weights."""
    n = batch_length(batch)
    bounds, start = [], 0
    for size in split_sizes(n, parts):
        bounds.append((start, start + size))
        start += size

    def cut(obj: Any, lo: int, hi: int) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj[lo:hi]
        if isinstance(obj, dict):
            return {k: cut(v, lo, hi) for k, v in obj.items()}
        if isinstance(obj, tuple):
            return tuple(cut(v, lo, hi) for v in obj)
        if isinstance(obj, list):
            return [cut(v, lo, hi) for v in obj]
        return obj

    return [(cut(batch, lo, hi), (hi - lo) / n) for lo, hi in bounds]


@dataclass
class ResilientStep:
    """One training step that survives OOMs without restarting anything.

    ``step(loss_fn, batch)`` runs ``zero_grad``, the forward and backward of ``loss_fn(micro_batch)`` (a
    mean-reduced loss) over ``micro_batches`` consecutive micro-batches with gradient accumulation, unscaling and
    clipping if asked, ``optimizer.step`` and the scheduler. On an OOM anywhere in it, the step is cleaned
    (gradients dropped, GradScaler state reset, a half-applied optimizer step undone from a host copy) and retried
    with the next of 2, 3, 5, 8, 12... micro-batches (x1.5); later steps keep the size that worked. No step is
    lost and the data order is kept. ``history`` lists every recovered OOM.
    """

    optimizer: torch.optim.Optimizer
    scaler: Any = None
    scheduler: Any = None
    clip_grad_norm: float | None = None
    micro_batches: int = 1
    max_micro_batches: int = 1024
    # "auto": keep a host copy of parameters and optimizer state for the step only while some parameter has no
    # optimizer state yet (the first steps, when Adam & co. allocate it and an OOM can leave a step half-applied);
    # True: before every step (costs a full copy each step); False: never.
    undo_partial_step: bool | str = "auto"
    history: list[OOMRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._in_step = False

    def __call__(self, loss_fn: Callable[[Any], torch.Tensor], batch: Any) -> torch.Tensor:
        return self.step(loss_fn, batch)

    @property
    def oom_history(self) -> list[OOMRecord]:
        return self.history

    def step(self, loss_fn: Callable[[Any], torch.Tensor], batch: Any) -> torch.Tensor:
        n = batch_length(batch)
        while True:
            box: list[BaseException] = []
            snapshot: list[Any] = []
            try:
                return self._attempt(loss_fn, batch, snapshot)
            except Exception as exc:  # noqa: BLE001
                info = classify_oom(exc)
                in_step = self._in_step
                parts = next_parts(self.micro_batches)
                if info is None or in_step or parts > min(n, self.max_micro_batches):
                    self._clean(snapshot)
                    if in_step and info is not None:
                        _add_note(exc, "torchdoctor: the OOM was inside optimizer.step, where smaller micro-batches "
                                       "do not help (the step was undone)" if snapshot else
                                       "torchdoctor: the OOM was inside optimizer.step, where smaller micro-batches "
                                       "do not help")
                    elif info is not None:
                        _add_note(exc, f"torchdoctor: gave up at {self.micro_batches} micro-batches per batch of {n}")
                    raise
                box.append(exc)
                message = info.message
            self._clean(snapshot)
            del snapshot
            freed = release(box)
            change = f"micro-batches {self.micro_batches} -> {parts}"
            self.micro_batches = parts
            _report(self, OOMRecord(message[:300], change, freed.leaked_bytes, freed.holders), None)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _attempt(self, loss_fn: Callable[[Any], torch.Tensor], batch: Any, snapshot: list[Any]) -> torch.Tensor:
        opt, scaler = self.optimizer, self.scaler
        opt.zero_grad(set_to_none=True)
        total = None
        for micro, weight in split_batch(batch, self.micro_batches):
            loss = loss_fn(micro)
            scaled = loss * weight
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            part = loss.detach() * weight
            total = part if total is None else total + part
            del loss, scaled
        if scaler is not None:
            scaler.unscale_(opt)
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params(), self.clip_grad_norm)
        if self.undo_partial_step is True or (self.undo_partial_step == "auto" and any(
                p not in opt.state for p in self._params() if p.requires_grad)):
            snapshot.append(self._take_snapshot())
        self._in_step = True
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        self._in_step = False
        snapshot.clear()
        if self.scheduler is not None:
            self.scheduler.step()
        assert total is not None  # split_batch gives at least one micro-batch
        return total

    def _take_snapshot(self) -> tuple[list[torch.Tensor], dict[int, dict[Any, Any]]]:
        params = [p.detach().to("cpu", copy=True) for p in self._params()]
        state = {id(p): {k: (v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v)
                         for k, v in self.optimizer.state[p].items()}
                 for p in self._params() if p in self.optimizer.state}
        return params, state

    def _clean(self, snapshot: list[Any]) -> None:
        """Undo what a failed attempt did to the training state."""
        self._in_step = False
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            from torch.amp.grad_scaler import _refresh_per_optimizer_state

            self.scaler._per_optimizer_states[id(self.optimizer)] = _refresh_per_optimizer_state()
        if snapshot:  # the OOM hit inside optimizer.step: put parameters and state back as they were
            params, state = snapshot[0]
            with torch.no_grad():
                for p, saved in zip(self._params(), params):
                    p.copy_(saved)
                for p in self._params():
                    if id(p) in state:
                        self.optimizer.state[p] = {k: (v.to(p.device) if isinstance(v, torch.Tensor) else v)
                                                   for k, v in state[id(p)].items()}
                    else:
                        self.optimizer.state.pop(p, None)


__all__ = ["oom_retry", "ResilientStep", "memory_budget", "OOMRecord", "Release", "split_batch"]

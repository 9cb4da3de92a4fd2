"""Counting storages on fake tensors: what a training step would hold, without allocating it.

Under ``FakeTensorMode`` every op still makes output tensors with real sizes and real storages' lifetimes, but no
memory. This mode, entered above it, counts each new storage once (keyed by its ``StorageImpl``: fake storages
have no data pointer), uncounts it when the storage dies, and keeps the figures the accountant keeps on real
tensors: the peak, each phase's peak, and the breakdown at the peak by category. A storage is born as the category
of its phase (``accounting.born_as``) and re-classified later (a parameter, a gradient, optimizer state, an
activation saved for backward); one born before the peak and re-classified after it is moved in the peak's
breakdown too (it was alive then), so the breakdown at the peak adds up to the peak.

``StandInScalars`` answers what fake tensors cannot: a value read back to Python (``loss.item()``, ``float(t)``,
``if t > 0``) gets a stand-in (1 or 1.0), so a script that logs its loss runs on. Control flow that depends on
the data then follows the stand-in, which the estimate says.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map

from torchdoctor.agent.memory.accounting import born_as
from torchdoctor.events import CATEGORIES

_SCALAR_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}


class StandInScalars(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0  # values read back to Python, each given a stand-in

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        if func in _SCALAR_OPS:
            self.reads += 1
            tensor = args[0]
            if func is torch.ops.aten.is_nonzero.default or tensor.dtype == torch.bool:
                return True
            return 1.0 if tensor.dtype.is_floating_point or tensor.dtype.is_complex else 1
        return func(*args, **(kwargs or {}))


class _Entry:
    __slots__ = ("nbytes", "cat", "seq")

    def __init__(self, nbytes: int, cat: int, seq: int) -> None:
        self.nbytes, self.cat, self.seq = nbytes, cat, seq


class FakeStorageCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, _Entry] = {}
        self._seq = 0
        self.phase = "other"
        self.current = 0
        self.cats = [0] * len(CATEGORIES)
        self.peak, self.peak_seq, self.peak_phase = 0, 0, "other"
        self.peak_cats = list(self.cats)
        self.phase_peaks: dict[str, int] = {}
        self.reset_span()

    # -- counting --------------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        if func in KERNEL_CORRECTIONS:
            KERNEL_CORRECTIONS[func](self, func, args, kwargs or {}, out)
        return out

    def add_bytes(self, tensor: torch.Tensor, delta: int) -> None:
        """Count ``delta`` more bytes on ``tensor``'s storage, for as long as it lives (a kernel's real size)."""
        try:
            entry = self._live.get(tensor.untyped_storage()._cdata)
        except (RuntimeError, NotImplementedError, TypeError, AttributeError):
            return
        if entry is not None and delta > 0:
            self._grow(entry, delta)

    def track(self, tensor: torch.Tensor, cat: int | None = None) -> None:
        try:
            storage = tensor.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError, AttributeError):
            return
        entry = self._live.get(key)
        if entry is not None:
            if nbytes != entry.nbytes:  # resized in place (resize_, set_): counted again at its new size
                self._grow(entry, nbytes - entry.nbytes)
            return
        self._seq += 1
        entry = self._live[key] = _Entry(0, born_as(self.phase) if cat is None else cat, self._seq)
        weakref.finalize(storage, self._free, key)
        self._grow(entry, nbytes)

    def _grow(self, entry: _Entry, delta: int) -> None:
        entry.nbytes += delta
        self.current += delta
        self.cats[entry.cat] += delta
        if delta > 0 and self.current > self.peak:
            self.peak, self.peak_seq, self.peak_phase = self.current, self._seq, self.phase
            self.peak_cats = list(self.cats)
        if self.current > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = self.current

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry.nbytes
            self.cats[entry.cat] -= entry.nbytes

    # -- classification ---------------------------------------------------------------------------------------
    def classify(self, tensors: Iterable[Any], cat: int, census: bool = False,
                 only_from: int | None = None) -> None:
        """Mark storages as ``cat`` (with ``only_from``: only those of that category now). ``census`` changes
        nothing here: under fake mode every storage is counted from its birth."""
        for tensor in tensors:
            if not isinstance(tensor, torch.Tensor):
                continue
            try:
                entry = self._live.get(tensor.untyped_storage()._cdata)
            except (RuntimeError, NotImplementedError, TypeError, AttributeError):
                continue
            if entry is None or entry.cat == cat or (only_from is not None and entry.cat != only_from):
                continue
            self.cats[entry.cat] -= entry.nbytes
            self.cats[cat] += entry.nbytes
            if entry.seq <= self.peak_seq:  # alive since before the peak, so alive at it
                self.peak_cats[entry.cat] -= entry.nbytes
                self.peak_cats[cat] += entry.nbytes
            entry.cat = cat

    def category(self, tensor: torch.Tensor) -> int | None:
        try:
            entry = self._live.get(tensor.untyped_storage()._cdata)
        except (RuntimeError, NotImplementedError, TypeError, AttributeError):
            return None
        return entry.cat if entry is not None else None

    # -- spans -------------------------------------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        self.phase = phase
        if self.current > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase] = self.current

    def reset_span(self) -> None:
        """A new span (an optimizer step) starts from what is held now."""
        self.peak, self.peak_seq, self.peak_phase = self.current, self._seq, self.phase
        self.peak_cats = list(self.cats)
        self.phase_peaks = {self.phase: self.current}

    def figures(self) -> dict[str, Any]:
        return {"peak_bytes": self.peak, "peak_phase": self.peak_phase, "held_bytes": self.current,
                "by_phase": dict(self.phase_peaks), "by_kind": dict(zip(CATEGORIES, self.peak_cats))}


# -- fake kernels whose sizes differ from the device's --------------------------------------------------------------
_REAL_SIZES: dict[Any, int] = {}  # (op, shapes, dtypes, other arguments) -> bytes the real kernel's output holds


def _real_output_bytes(func: Any, args: Any, kwargs: dict[str, Any], index: int) -> int:
    """The bytes of output ``index`` of ``func`` run for real on zeros of the arguments' shapes (once per shape)."""
    flat = tree_flatten(args)[0]
    key = (func, tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a for a in flat),
           tuple(sorted(kwargs.items())))
    if key not in _REAL_SIZES:
        with _disable_current_modes():
            real = tree_map(lambda a: torch.zeros(a.shape, dtype=a.dtype) if isinstance(a, torch.Tensor) else a, args)
            _REAL_SIZES[key] = func(*real, **kwargs)[index].untyped_storage().nbytes()
    return _REAL_SIZES[key]


def _rnn_workspace(counter: FakeStorageCounter, func: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
    """oneDNN's RNN layer keeps a workspace for its backward that the fake kernel makes 0 bytes long (8.2 MB per
    layer at batch 8, sequence 64, hidden 256): its real size is that of the real kernel on the same shapes."""
    fake = out[3]
    counter.add_bytes(fake, _real_output_bytes(func, args, kwargs, 3) - fake.untyped_storage().nbytes())


KERNEL_CORRECTIONS: dict[Any, Callable[..., None]] = {}
if hasattr(torch.ops.aten, "mkldnn_rnn_layer"):
    KERNEL_CORRECTIONS[torch.ops.aten.mkldnn_rnn_layer.default] = _rnn_workspace

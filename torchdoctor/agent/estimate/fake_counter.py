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
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from torch.utils.weak import WeakIdKeyDictionary

from torchdoctor.agent.estimate.gpu_ledger import GpuLedger
from torchdoctor.agent.estimate.kernel_buffers import MEASURED, KernelBuffers
from torchdoctor.agent.estimate.kernel_buffers import storage_key as _key
from torchdoctor.agent.estimate.ledger import Ledger
from torchdoctor.agent.memory.accounting import born_as

_SCALAR_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}


_FOUND_INF_OPS = {getattr(torch.ops.aten, name).default for name in ("_amp_foreach_non_finite_check_and_unscale_",
                                                                      "_amp_update_scale_")
                  if hasattr(torch.ops.aten, name)}


SMALL = 4096  # elements: the values of tensors up to this size are followed (positions, offsets, flags, masks)


def _stand_in(tensor: torch.Tensor) -> torch.Tensor:
    """The value given to a number nothing is known of: 1 (True for a condition), in the tensor's dtype."""
    with _disable_current_modes():
        return torch.ones((), dtype=tensor.dtype)


class StandInScalars(TorchDispatchMode):
    """Values read back to Python, kept as the device would have them where they can be known. Small tensors made
    from known values (``torch.arange(past, past + n)``, a Python number, an element of either) get their values
    computed for real, op by op, so ``cache_position[0] == 0`` and ``data[i:i + block_size]`` read as they would;
    a 0-dim value nothing is known of (an element of a fake batch, a loss, a reduction) reads 1 (True for a
    condition) and keeps that value, consistently with arithmetic on it. GradScaler's found-inf flags read 0: no
    inf, the scaler steps the optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0  # values read back to Python, each given a stand-in or a followed value
        self.values: WeakIdKeyDictionary = WeakIdKeyDictionary()  # fake tensor -> real values (by identity)

    def known(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """A fake tensor's real values: followed, a fake constant's, or for a 0-dim one the stand-in (then kept)."""
        known = self.values.get(tensor)
        if known is None:
            constant = getattr(tensor, "constant", None)  # fake mode keeps small tensors made from Python numbers
            if isinstance(constant, torch.Tensor):
                with _disable_current_modes():  # a copy: ops followed in place must not touch fake mode's own
                    known = constant.clone()
            elif tensor.dim() == 0:
                known = _stand_in(tensor)
            else:
                return None
            self.values[tensor] = known
        return known

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        if func in _SCALAR_OPS:
            self.reads += 1
            tensor = args[0]
            known = self.known(tensor)
            if known is None or known.numel() != 1:  # a one-element tensor nothing is known of
                known = _stand_in(tensor)
            with _disable_current_modes():
                value = known.reshape(()).item()
            return bool(value) if func is torch.ops.aten.is_nonzero.default else value
        if func in _FOUND_INF_OPS:  # (grads, found_inf, inv_scale) / (scale, growth_tracker, found_inf, ...)
            flag = args[1] if func is torch.ops.aten._amp_foreach_non_finite_check_and_unscale_.default else args[2]
            out = func(*args, **kwargs)
            with _disable_current_modes():
                self.values[flag] = torch.zeros(flag.shape, dtype=flag.dtype)
            return out
        out = func(*args, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)  # (unbind: iterating over a tensor)
        if outs and all(isinstance(o, torch.Tensor) and o.numel() <= SMALL for o in outs):
            self._follow(func, args, kwargs, outs)
        return out

    def _follow(self, func: Any, args: Any, kwargs: dict[str, Any], outs: Any) -> None:
        """The outputs' values, when every tensor the op read has known values: the op run for real on them."""
        flat, spec = tree_flatten((args, kwargs))
        real = []
        results: Any = None
        for value in flat:
            if isinstance(value, torch.Tensor):
                value = self.known(value)
                if value is None:  # a value not known: neither are the outputs' (an in-place op's target included)
                    break
            real.append(value)
        else:
            try:
                with _disable_current_modes():  # real tensors, out of fake mode (and fast)
                    real_args, real_kwargs = tree_unflatten(real, spec)
                    results = func(*real_args, **real_kwargs)
            except Exception:  # noqa: BLE001 - an op that will not run on these values: its outputs read stand-ins
                results = None
        results = results if isinstance(results, (tuple, list)) else (results,)
        for index, out in enumerate(outs):
            result = results[index] if index < len(results) else None
            if isinstance(result, torch.Tensor) and result.shape == out.shape:
                self.values[out] = result
            else:
                self.values.pop(out, None)


class _Entry:
    __slots__ = ("nbytes", "cat", "seq", "block")

    def __init__(self, nbytes: int, cat: int, seq: int) -> None:
        self.nbytes, self.cat, self.seq = nbytes, cat, seq
        self.block: Any = None  # its block in the modelled GPU allocator; None: not on the GPU


class FakeStorageCounter(TorchDispatchMode):
    def __init__(self, gpu: GpuLedger | None = None) -> None:
        super().__init__()
        self._live: dict[int, _Entry] = {}
        self._seq = 0
        self.phase = "other"
        self.ledger = Ledger()  # every storage, wherever it is (the host's figures when the target is the CPU)
        self.gpu = gpu  # the storages the script put on a GPU that is modelled (torchdoctor estimate --gpu)
        self.placement: bool | None = None  # set while a tensor is moved: True onto the GPU, False off it
        self.kernels: KernelBuffers | None = None  # CPU kernels' own buffers, measured (needs the allocator probe)

    @property
    def current(self) -> int:
        return self.ledger.current

    # -- counting --------------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        on_gpu = False
        if self.gpu is not None:
            on_gpu = self.placement if self.placement is not None else self._any_on_gpu(args, kwargs)
            if on_gpu:
                self.gpu.before_op(func, self.phase, self._seq)
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value, on_gpu=on_gpu)
        if func in KERNEL_CORRECTIONS and self.gpu is None:  # the CPU's kernels (oneDNN)
            KERNEL_CORRECTIONS[func](self, func, args, kwargs or {}, out)
        if self.kernels is not None and func in MEASURED:
            self.spike(self.kernels.extra_bytes(func, args, kwargs or {}, out))
        return out

    def spike(self, nbytes: int) -> None:
        """``nbytes`` held for the moment of the op running now (a kernel's own buffers), then given back."""
        if nbytes > 0:
            cat = born_as(self.phase)
            self.ledger.grow(cat, nbytes, self._seq, self.phase)
            self.ledger.grow(cat, -nbytes, self._seq, self.phase)

    def _any_on_gpu(self, args: Any, kwargs: Any) -> bool:
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, torch.Tensor):
                entry = self._entry(value)
                if entry is not None and entry.block is not None:
                    return True
        return False

    def _entry(self, tensor: torch.Tensor) -> _Entry | None:
        return self._live.get(_key(tensor))

    def on_gpu(self, tensor: torch.Tensor) -> bool:
        entry = self._entry(tensor)
        return entry is not None and entry.block is not None

    def add_bytes(self, tensor: torch.Tensor, delta: int) -> None:
        """Count ``delta`` more bytes on ``tensor``'s storage, for as long as it lives (a kernel's real size)."""
        entry = self._entry(tensor)
        if entry is not None and delta > 0:
            self._grow(entry, delta)

    def track(self, tensor: torch.Tensor, cat: int | None = None, on_gpu: bool = False) -> None:
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
        if on_gpu and self.gpu is not None:
            entry.block = self.gpu.new()
        self._grow(entry, nbytes)

    def _grow(self, entry: _Entry, delta: int) -> None:
        entry.nbytes += delta
        self.ledger.grow(entry.cat, delta, self._seq, self.phase)
        if entry.block is not None and self.gpu is not None:
            entry.block = self.gpu.resize(entry.block, entry.nbytes, entry.cat, self._seq, self.phase)

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.ledger.grow(entry.cat, -entry.nbytes, self._seq, self.phase)
            if entry.block is not None and self.gpu is not None:
                self.gpu.free(entry.block, entry.cat, self._seq, self.phase)

    # -- classification ---------------------------------------------------------------------------------------
    def classify(self, tensors: Iterable[Any], cat: int, census: bool = False,
                 only_from: int | None = None) -> None:
        """Mark storages as ``cat`` (with ``only_from``: only those of that category now). ``census`` changes
        nothing here: under fake mode every storage is counted from its birth."""
        for tensor in tensors:
            if not isinstance(tensor, torch.Tensor):
                continue
            entry = self._entry(tensor)
            if entry is None or entry.cat == cat or (only_from is not None and entry.cat != only_from):
                continue
            self.ledger.move(entry.nbytes, entry.cat, cat, entry.seq)
            if entry.block is not None and self.gpu is not None:
                self.gpu.move(entry.block, entry.cat, cat, entry.seq)
            entry.cat = cat

    def category(self, tensor: torch.Tensor) -> int | None:
        entry = self._entry(tensor)
        return entry.cat if entry is not None else None

    # -- spans -------------------------------------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.ledger.enter(phase)
        if self.gpu is not None:
            self.gpu.ledger.enter(phase)

    def reset_span(self) -> None:
        """A new span (an optimizer step) starts from what is held now."""
        self.ledger.reset_span(self._seq, self.phase)
        if self.gpu is not None:
            self.gpu.reset_span(self._seq, self.phase)

    def figures(self) -> dict[str, Any]:
        figures = self.ledger.figures()
        if self.gpu is not None:
            figures["gpu"] = self.gpu.figures()
        return figures


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
            output = func(*real, **kwargs)[index]
            _REAL_SIZES[key] = output.untyped_storage().nbytes() if isinstance(output, torch.Tensor) else 0
    return _REAL_SIZES[key]


def _rnn_workspace(counter: FakeStorageCounter, func: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
    """oneDNN's RNN layer keeps a workspace for its backward that the fake kernel makes 0 bytes long (8.2 MB per
    layer at batch 8, sequence 64, hidden 256): its real size is that of the real kernel on the same shapes."""
    fake = out[3]
    if not isinstance(fake, torch.Tensor):
        return  # no workspace (the layer runs without training: evaluation, no_grad)
    counter.add_bytes(fake, _real_output_bytes(func, args, kwargs, 3) - fake.untyped_storage().nbytes())


KERNEL_CORRECTIONS: dict[Any, Callable[..., None]] = {}
if hasattr(torch.ops.aten, "mkldnn_rnn_layer"):
    KERNEL_CORRECTIONS[torch.ops.aten.mkldnn_rnn_layer.default] = _rnn_workspace

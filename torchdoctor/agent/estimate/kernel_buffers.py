"""Kernels' own buffers on the CPU, which fake tensors cannot see: oneDNN's convolution backward reorders and
copies its input into buffers of the input's size that are not outputs (a conv net's peak was a quarter low
without them).

Each such op is run for real once per shape, on zeros laid out as the fake arguments are, with the allocator probe
(``memory/allocator_probe``) in front of torch's CPU allocator: the allocator's peak during the op, above what was
held before it and beyond the op's outputs, is what its kernel held for itself. The fake run adds that many bytes
for the moment of the op. A convolution whose input is large is measured on a slice of its batch and the buffers
scaled to the whole batch (they are proportional to it), so that an estimate never allocates a large batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map

MEASURE_BYTES = 32 << 20  # a convolution's input above this is measured on a slice of its batch
_aten = torch.ops.aten
CONVOLUTIONS = frozenset(op for op in (_aten.convolution.default, _aten.convolution_backward.default))
# The RNN layer's forward only: its backward reads the forward's workspace, which a run on zeros does not have
# (run on a zero-filled one it crashed the process); its scratch stays uncounted (docs/estimate.md).
RNNS = frozenset(getattr(_aten, name).default for name in ("mkldnn_rnn_layer",) if hasattr(_aten, name))
MEASURED = CONVOLUTIONS | RNNS


def _real(value: Any, whole: int, batch: int | None) -> Any:
    """Zeros laid out as the fake ``value``; a tensor of the whole batch (first dimension ``whole``) cut to
    ``batch``."""
    if not isinstance(value, torch.Tensor):
        return value
    shape = list(value.shape)
    if batch is not None and shape and shape[0] == whole:
        shape[0] = batch
    try:
        dense = value.is_contiguous() or value.is_contiguous(memory_format=torch.channels_last)
    except (RuntimeError, TypeError):
        dense = False
    if dense:
        return torch.empty_strided(shape, value.stride(), dtype=value.dtype).zero_()
    return torch.zeros(shape, dtype=value.dtype)


class KernelBuffers:
    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self._measured: dict[Any, tuple[int, int]] = {}  # (op, shapes) -> (buffer bytes, batch measured at)
        self.measured_ops = 0

    def extra_bytes(self, func: Any, args: Any, kwargs: dict[str, Any]) -> int:
        """The bytes ``func``'s kernel holds beyond its outputs, at the arguments' shapes."""
        flat = tree_flatten(args)[0]
        key = (func, tuple((tuple(a.shape), tuple(a.stride()), a.dtype) if isinstance(a, torch.Tensor) else a
                           for a in flat), tuple(sorted(kwargs.items())))
        if key not in self._measured:
            self._measured[key] = self._measure(func, args, kwargs)
        extra, scale = self._measured[key]
        return extra * scale

    def _measure(self, func: Any, args: Any, kwargs: dict[str, Any]) -> tuple[int, int]:
        tensors = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)]
        batch, scale, whole = None, 1, 0
        if func in CONVOLUTIONS:  # N first: (grad_output, input, weight, ...) / (input, weight, ...)
            source = tensors[1] if func is _aten.convolution_backward.default else tensors[0]
            nbytes = source.numel() * source.element_size()
            whole = source.shape[0]
            if nbytes > MEASURE_BYTES and whole > 1:
                batch = max(1, int(whole * MEASURE_BYTES // nbytes))
                while batch > 1 and whole % batch:  # a slice that divides the batch: the scaling is exact
                    batch -= 1
                scale = whole // batch
        elif sum(t.numel() * t.element_size() for t in tensors) > 8 * MEASURE_BYTES:
            return 0, 1  # a very large recurrent layer: not run for real (said by the estimate's limits)
        with _disable_current_modes():
            real = tree_map(lambda a: _real(a, whole, batch), args)
            before = self.probe.reset_peak()
            try:
                out = func(*real, **kwargs)
            except RuntimeError:  # the kernel refused zeros for these arguments: its buffers are not counted
                return 0, 1
            peak = self.probe.peak()
            storages = {o.untyped_storage()._cdata: o.untyped_storage().nbytes()
                        for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)}
            del out, real
        self.measured_ops += 1
        return max(0, peak - before - sum(storages.values())), scale

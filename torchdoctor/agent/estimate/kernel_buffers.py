"""Kernels' own buffers on the CPU, which fake tensors cannot see: oneDNN's convolution backward reorders and
copies its input into buffers of the input's size that are not outputs (a conv net's peak was a quarter low
without them), and its RNN layer keeps scratch of its weights' size in forward and backward (an LSTM 10% low).

Each such op is run for real once per shape, on zeros laid out as the fake arguments are, with the allocator probe
(``memory/allocator_probe``) in front of torch's CPU allocator: the allocator's peak during the op, above what was
held before it and beyond the op's outputs, is what its kernel held for itself. The fake run adds that many bytes
for the moment of the op. A convolution whose input is large is measured on a slice of its batch and the buffers
scaled to the whole batch (they are proportional to it), so that an estimate never allocates a large batch. An RNN
layer's backward reads its forward's workspace: the forward is run for real first, on zeros of the arguments its
own forward had (kept by workspace), with grad mode on (inside a backward it is off, and the kernel then keeps no
workspace).
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map

MEASURE_BYTES = 32 << 20  # a convolution's input above this is measured on a slice of its batch
_aten = torch.ops.aten
CONVOLUTIONS = frozenset(op for op in (_aten.convolution.default, _aten.convolution_backward.default))
_RNN = getattr(_aten, "mkldnn_rnn_layer", None)
_RNN_BACKWARD = getattr(_aten, "mkldnn_rnn_layer_backward", None)
# The RNN layer's backward reads its forward's workspace (a fake one holds 0 bytes; on a zero-filled one of that
# size the backward crashed the process): it is measured after a real forward on the arguments its own forward had.
RNNS = frozenset(op.default for op in (_RNN, _RNN_BACKWARD) if op is not None)
MEASURED = CONVOLUTIONS | RNNS


def _real(value: Any, batch: int | None = None) -> Any:
    """Zeros laid out as the fake ``value``, its first dimension (the batch) cut to ``batch`` if given."""
    if not isinstance(value, FakeTensor):
        return value  # not fake (a value, or a real tensor made for the measurement)
    shape = list(value.shape)
    if batch is not None and shape:
        shape[0] = batch
    return _zeros(shape, value.stride(), value.dtype)


def _zeros(shape: Any, stride: Any, dtype: torch.dtype) -> torch.Tensor:
    """Zeros with exactly this layout (a transposed or expanded one included: kernels copy such inputs into
    buffers of their own, which is what is measured)."""
    if any(size == 0 for size in shape):
        return torch.zeros(shape, dtype=dtype)
    extent = 1 + sum((size - 1) * step for size, step in zip(shape, stride))
    return torch.zeros(extent, dtype=dtype).as_strided(shape, stride)


class _Spec:
    """A fake tensor's shape, strides and dtype (an RNN forward's arguments, kept for its backward)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.shape, self.stride, self.dtype = tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype

    def _identity(self) -> tuple[Any, ...]:
        return (self.shape, self.stride, self.dtype)

    def __eq__(self, other: object) -> bool:  # the measurements' cache key holds these
        return isinstance(other, _Spec) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def zeros(self) -> torch.Tensor:
        return _zeros(self.shape, self.stride, self.dtype)


def _spec(value: Any) -> Any:
    return _Spec(value) if isinstance(value, torch.Tensor) else value


def storage_key(tensor: Any) -> int:
    """A tensor's storage, as the fake run keys it (its ``StorageImpl``; fake storages have no data pointer); -1
    for one without a storage."""
    try:
        return int(tensor.untyped_storage()._cdata)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return -1


def _with_real_forward(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The backward's arguments with its forward run for real (on zeros, with the forward's own arguments, kept in
    the workspace's place): the forward's output, final states and workspace, which the backward reads."""
    forward = [a.zeros() if isinstance(a, _Spec) else a for a in args[22]]
    with torch.enable_grad():  # (run from inside a backward, where grad mode is off: the kernel keeps no workspace)
        output, hy, cy, workspace = _RNN.default(*forward)  # type: ignore[union-attr]
    return (*args[:7], output, hy, cy, *args[10:22], workspace)


class KernelBuffers:
    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self._measured: dict[Any, tuple[int, int]] = {}  # (op, shapes) -> (buffer bytes, batch measured at)
        self._forwards: dict[int, Any] = {}  # an RNN layer's workspace storage -> the arguments of its forward
        self.measured_ops = 0
        self.failures: list[str] = []  # ops that could not be measured (their buffers are not counted)

    def extra_bytes(self, func: Any, args: Any, kwargs: dict[str, Any], out: Any = None) -> int:
        """The bytes ``func``'s kernel holds beyond its outputs, at the arguments' shapes."""
        if _RNN is not None and func is _RNN.default and isinstance(out, (tuple, list)):
            self._forwards[storage_key(out[3])] = tree_map(_spec, args)
        if _RNN_BACKWARD is not None and func is _RNN_BACKWARD.default:
            forward = self._forwards.get(storage_key(args[22]))
            if forward is None:
                return 0  # its forward was not seen: no real workspace to run it with
            args = (*args[:22], forward)  # measured with its forward's arguments in the workspace's place
        flat = tree_flatten(args)[0]
        key = (func, tuple((tuple(a.shape), tuple(a.stride()), a.dtype) if isinstance(a, torch.Tensor) else a
                           for a in flat), tuple(sorted(kwargs.items())))
        if key not in self._measured:
            self._measured[key] = self._measure(func, args, kwargs)
        extra, scale = self._measured[key]
        return extra * scale

    def _measure(self, func: Any, args: Any, kwargs: dict[str, Any]) -> tuple[int, int]:
        tensors = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)]
        batch, scale, batched = None, 1, 0  # a slice of the batch, and how many leading arguments are batch-major
        if func in CONVOLUTIONS:  # (grad_output, input, weight, ...) / (input, weight, ...): N first
            batched = 2 if func is _aten.convolution_backward.default else 1
            source = args[batched - 1]
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
            if _RNN_BACKWARD is not None and func is _RNN_BACKWARD.default:
                args = _with_real_forward(args)
            real = [_real(a, batch) for a in args[:batched]] + [tree_map(_real, a) for a in args[batched:]]
            before = self.probe.reset_peak()
            try:
                out = func(*real, **kwargs)
            except RuntimeError as exc:  # the kernel refused these arguments: its buffers are not counted, said
                self.failures.append(f"{func}: {str(exc).splitlines()[0][:120]}")
                return 0, 1
            peak = self.probe.peak()
            storages = {o.untyped_storage()._cdata: o.untyped_storage().nbytes()
                        for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)}
            del out, real
        self.measured_ops += 1
        return max(0, peak - before - sum(storages.values())), scale

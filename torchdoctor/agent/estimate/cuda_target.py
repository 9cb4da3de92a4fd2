"""A CUDA script on a machine without CUDA (``torchdoctor estimate --gpu NAME``): the script runs its CUDA path on
fake CPU tensors, and what it puts on the GPU is counted on the modelled GPU (``gpu_ledger``).

- ``torch.cuda.is_available()`` answers True, and the ``torch.cuda`` calls scripts make around training (device
  count, name, properties, seeds, synchronize, memory statistics) answer for the modelled card.
- A tensor moved to CUDA (``.to("cuda")``, ``.cuda()``, ``Module.to``/``cuda``, a factory's ``device="cuda"``) is
  made on the CPU instead, as a copy where the real move copies, and is marked as on the GPU; what an op makes from
  a tensor on the GPU is on the GPU. A tensor moved back (``.cpu()``, ``.to("cpu")``) is a host copy.
- ``torch.autocast("cuda", dtype)`` runs as CPU autocast with the same dtype (its op lists are close to CUDA's,
  not the same: said in the estimate).

What the script reads from a tensor's ``device`` is still "cpu" (a check of ``x.is_cuda`` takes its CPU branch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from torchdoctor.agent.estimate.fake_counter import FakeStorageCounter
from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.gpus import Gpu

CPU = torch.device("cpu")


def _is_cuda(device: Any) -> bool:
    if device is None or isinstance(device, (bool, torch.dtype, torch.Tensor)):
        return False
    if isinstance(device, int):
        return True  # an index: a CUDA device
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError, ValueError):
        return False


def _is_cpu(device: Any) -> bool:
    try:
        return isinstance(device, (str, torch.device)) and torch.device(device).type == "cpu"
    except (RuntimeError, TypeError, ValueError):
        return False


class CudaOnCpu(TorchFunctionMode):
    def __init__(self, counter: FakeStorageCounter) -> None:
        super().__init__()
        self.counter = counter

    def _placed(self, onto_gpu: bool, call: Any) -> Any:
        before, self.counter.placement = self.counter.placement, onto_gpu
        try:
            return call()
        finally:
            self.counter.placement = before

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            tensor = args[0]
            if self.counter.on_gpu(tensor):
                return tensor
            return self._placed(True, lambda: tensor.to(CPU, copy=True, non_blocking=kwargs.get("non_blocking",
                                                                                                 False)))
        if func is torch.Tensor.cpu:
            tensor = args[0]
            return self._placed(False, lambda: tensor.to(CPU, copy=True)) if self.counter.on_gpu(tensor) else tensor
        if func is torch.Tensor.pin_memory:
            return args[0]  # pinned host memory: not the GPU's, and no CUDA here to pin with
        if func is torch.Tensor.to:
            return self._to(func, args, kwargs)
        if _is_cuda(kwargs.get("device")):  # a factory (torch.zeros(..., device="cuda"), ..._like, tensor)
            kwargs["device"] = CPU
            return self._placed(True, lambda: func(*args, **kwargs))
        return func(*args, **kwargs)

    def _to(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        tensor, rest = args[0], list(args[1:])
        device = kwargs.pop("device", None)
        if device is None and rest and isinstance(rest[0], (str, int, torch.device)) and not isinstance(rest[0], bool):
            device = rest.pop(0)
        elif device is None and rest and isinstance(rest[0], torch.Tensor):  # .to(other): other's device and dtype
            other = rest.pop(0)
            device = "cuda" if self.counter.on_gpu(other) else CPU
            rest.insert(0, other.dtype)
        here = self.counter.on_gpu(tensor)
        if _is_cuda(device) and not here:
            kwargs["copy"] = True
            return self._placed(True, lambda: func(tensor, CPU, *rest, **kwargs))
        if _is_cpu(device) and here:
            kwargs["copy"] = True
            return self._placed(False, lambda: func(tensor, CPU, *rest, **kwargs))
        if device is not None:
            rest.insert(0, CPU)
        return func(tensor, *rest, **kwargs)


def _replaced_by(answer: Any) -> Any:
    """A patch maker that puts ``answer`` in place of what is there."""
    def make(current: Any) -> Any:
        return answer
    return make


class _Properties:
    def __init__(self, gpu: Gpu) -> None:
        self.name, self.total_memory = gpu.name, gpu.memory_bytes
        self.major, self.minor = gpu.capability
        self.multi_processor_count = 0

    def __repr__(self) -> str:
        return f"_CudaDeviceProperties(name='{self.name}', total_memory={self.total_memory >> 20}MB (modelled))"


class CudaTarget:
    """The patches and the function mode that make the script's CUDA path run on fake CPU tensors."""

    def __init__(self, gpu: Gpu, counter: FakeStorageCounter) -> None:
        self.gpu, self.counter = gpu, counter
        self.mode = CudaOnCpu(counter)
        self._patches = ClassPatches()

    def install(self) -> None:
        gpu, ledger = self.gpu, self.counter.gpu
        props = _Properties(gpu)

        allocator = ledger.allocator if ledger is not None else None

        def allocated() -> int:
            return allocator.allocated if allocator is not None else 0

        def reserved() -> int:
            return allocator.reserved if allocator is not None else 0

        def peak(which: int) -> int:
            return allocator.script_peaks[which] if allocator is not None else 0

        def reset_peaks(device: Any = None) -> None:
            if allocator is not None:
                allocator.reset_script_peaks()

        answers: dict[str, Any] = {
            "is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
            "set_device": lambda device: None, "synchronize": lambda device=None: None,
            "empty_cache": lambda: None, "manual_seed": lambda seed: None, "manual_seed_all": lambda seed: None,
            "seed": lambda: None, "seed_all": lambda: None, "init": lambda: None, "is_initialized": lambda: True,
            "get_device_name": lambda device=None: gpu.name,
            "get_device_capability": lambda device=None: gpu.capability,
            "get_device_properties": lambda device=None: props,
            "is_bf16_supported": lambda including_emulation=True: gpu.capability >= (8, 0),
            "memory_allocated": lambda device=None: allocated(), "memory_reserved": lambda device=None: reserved(),
            "max_memory_allocated": lambda device=None: peak(0),
            "max_memory_reserved": lambda device=None: peak(1),
            "reset_peak_memory_stats": reset_peaks,
            "mem_get_info": lambda device=None: (gpu.memory_bytes - reserved(), gpu.memory_bytes),
        }
        for name, answer in answers.items():
            self._patches.wrap(torch.cuda, name, _replaced_by(answer))
        autocast = torch.amp.autocast_mode.autocast

        def on_cpu(init: Any) -> Any:
            def __init__(self: Any, device_type: str, *args: Any, **kwargs: Any) -> None:
                init(self, "cpu" if device_type == "cuda" else device_type, *args, **kwargs)
            return __init__

        self._patches.wrap(autocast, "__init__", on_cpu)
        self.mode.__enter__()

    def remove(self) -> None:
        self.mode.__exit__(None, None, None)
        self._patches.restore()

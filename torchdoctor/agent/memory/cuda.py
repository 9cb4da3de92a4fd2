"""What CUDA says about memory, read without ever creating a CUDA context ourselves."""

from __future__ import annotations

from typing import Any

import torch


class CudaFigures:
    """The CUDA caching allocator's own counters (free to read) and NVML's device-level used memory.

    Peaks are reset after each read, so each sample's peak covers its own span. Nothing is read (and no
    CUDA context is created) unless the script itself has initialised CUDA.
    """

    def __init__(self) -> None:
        self._cuda_build = torch.version.cuda is not None or torch.version.hip is not None
        self._nvml: Any = None
        self._nvml_handles: dict[int, Any] = {}

    def read(self) -> dict[str, dict[str, Any]]:
        if not self._cuda_build or not torch.cuda.is_initialized():
            return {}
        figures = {}
        for index in range(torch.cuda.device_count()):
            allocated_peak = torch.cuda.max_memory_allocated(index)
            reserved = torch.cuda.memory_reserved(index)
            if allocated_peak == 0 and reserved == 0:
                continue  # a device the script does not use
            figures[f"cuda:{index}"] = {
                "cuda_allocated": torch.cuda.memory_allocated(index),
                "cuda_allocated_peak": allocated_peak,
                "cuda_reserved": reserved,
                "cuda_reserved_peak": torch.cuda.max_memory_reserved(index),
            }
            used = self._device_used(index)
            if used is not None:
                figures[f"cuda:{index}"]["device_used"] = used
            torch.cuda.reset_peak_memory_stats(index)
        return figures

    def _device_used(self, index: int) -> int | None:
        """NVML's used memory of the GPU behind CUDA device ``index`` (matched by UUID, so
        CUDA_VISIBLE_DEVICES reordering cannot mix devices up)."""
        if self._nvml is False:
            return None
        try:
            if self._nvml is None:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            handle = self._nvml_handles.get(index)
            if handle is None:
                uuid = str(torch.cuda.get_device_properties(index).uuid)
                uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
                handle = self._nvml_handles[index] = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
            return int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:  # noqa: BLE001 - no NVML: the figure is simply not there
            self._nvml = False
            return None

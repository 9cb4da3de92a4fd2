"""GPU and host probes that never create a CUDA context and never raise: unknown values are ``None``.

NVML (package ``nvidia-ml-py``) is the probe; GPUtil is only a guarded fallback (GPUtil 1.4.0 shells out to
``nvidia-smi`` and fails to import on Python >= 3.12 without setuptools).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    driver: str | None
    source: str  # "nvml" | "gputil"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuProbe:
    gpus: list[GpuInfo]
    explanation: str  # why there are none, or where they came from

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": [g.to_dict() for g in self.gpus], "explanation": self.explanation}


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlReader:
    """An open NVML session; ``used()`` reads device-level used memory in microseconds."""

    def __init__(self) -> None:
        import pynvml  # from nvidia-ml-py

        self._nvml = pynvml
        pynvml.nvmlInit()
        self.count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]

    def info(self) -> list[GpuInfo]:
        nv = self._nvml
        driver = _decode(nv.nvmlSystemGetDriverVersion())
        gpus = []
        for index, handle in enumerate(self._handles):
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GpuInfo(index, _decode(nv.nvmlDeviceGetName(handle)), int(mem.total), int(mem.used),
                                int(mem.free), driver, "nvml"))
        return gpus

    def used(self) -> dict[str, int]:
        figures = {}
        for index, handle in enumerate(self._handles):
            try:
                figures[f"gpu{index}"] = int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used)
            except Exception:  # noqa: BLE001 - a GPU that falls off the bus reads as unknown
                continue
        return figures

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def open_nvml() -> tuple[NvmlReader | None, str]:
    """An NVML reader, or None with the reason in words."""
    try:
        reader = NvmlReader()
    except ImportError:
        return None, "NVML bindings not installed (pip install nvidia-ml-py)"
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, driver not loaded, ...
        name = type(exc).__name__
        if "LibraryNotFound" in name:
            return None, "no NVIDIA driver (NVML library not found)"
        return None, f"NVML unavailable ({name}: {exc})"
    if reader.count == 0:
        reader.close()
        return None, "NVML found no GPU"
    return reader, "nvml"


def _gputil_gpus() -> list[GpuInfo]:
    try:
        import GPUtil  # noqa: N813 - may fail at import (distutils) on Python >= 3.12
    except Exception:  # noqa: BLE001
        return []
    try:
        found = GPUtil.getGPUs()
    except Exception:  # noqa: BLE001 - no nvidia-smi, or it failed
        return []
    mib = 1024 * 1024
    return [GpuInfo(int(g.id), str(g.name), int(g.memoryTotal * mib), int(g.memoryUsed * mib),
                    int(g.memoryFree * mib), str(g.driver), "gputil") for g in found]


def probe_gpus() -> GpuProbe:
    reader, why = open_nvml()
    if reader is not None:
        try:
            return GpuProbe(reader.info(), "nvml")
        finally:
            reader.close()
    fallback = _gputil_gpus()
    if fallback:
        return GpuProbe(fallback, "gputil (nvidia-smi)")
    return GpuProbe([], why)


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "memory_total_bytes": None,
    }
    try:
        import psutil

        info["memory_total_bytes"] = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001
        pass
    return info


def oom_kill_count() -> int | None:
    """How many processes the kernel's OOM killer has killed (cgroup v2 first, then the whole machine)."""
    for path, key in (("/sys/fs/cgroup/memory.events", "oom_kill"), ("/proc/vmstat", "oom_kill")):
        try:
            with open(path, encoding="ascii") as handle:
                for line in handle:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def cgroup_memory_peak(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """The kernel's own memory high-water mark of this process's cgroup (v2 ``memory.peak``, v1
    ``memory.max_usage_in_bytes``): every process of the group counted, at any instant, not sampled. None where
    there is no such file or it cannot be read."""
    try:
        with open(os.path.join(proc_root, "self", "cgroup"), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: 0::/path
            candidates.append(os.path.join(cgroup_root, path.lstrip("/"), "memory.peak"))
        elif "memory" in controllers.split(","):
            candidates.append(os.path.join(cgroup_root, "memory", path.lstrip("/"), "memory.max_usage_in_bytes"))
    for candidate in candidates:
        try:
            with open(candidate, encoding="ascii") as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            continue
    return None

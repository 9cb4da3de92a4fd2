"""Is this exception an out-of-memory error? A pure classifier, usable without torch or a GPU.

By type first (``torch.OutOfMemoryError``, which is ``torch.cuda.OutOfMemoryError``), then along the chain of
``__cause__``/``__context__`` (an OOM re-raised as another error), then by message: CUDA/HIP/XPU "out of memory",
MPS, the driver's "CUDA error: out of memory" (``torch.AcceleratorError``), cuBLAS/cuDNN allocation failures and
the CPU allocator's "DefaultCPUAllocator: can't allocate memory". Every argument of the exception is read, not
only the first. Errors that merely mention memory or CUDA (shape mismatches, NCCL, device-side asserts) are not
OOMs.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

_OOM_PATTERNS = [
    ("cuda", re.compile(r"\bCUDA out of memory\b", re.I)),
    ("hip", re.compile(r"\bHIP out of memory\b", re.I)),
    ("xpu", re.compile(r"\bXPU out of memory\b", re.I)),
    ("mps", re.compile(r"\bMPS backend out of memory\b", re.I)),
    ("cuda-driver", re.compile(r"\bCUDA error: out of memory\b", re.I)),
    ("cublas", re.compile(r"CUBLAS_STATUS_ALLOC_FAILED")),
    ("cudnn", re.compile(r"CUDNN_STATUS_(ALLOC_FAILED|NOT_SUPPORTED\. This error may appear if you passed in a "
                         r"non-contiguous input)")),
    ("cpu", re.compile(r"DefaultCPUAllocator: (can't allocate memory|not enough memory)")),
    ("torchdoctor-budget", re.compile(r"torchdoctor memory budget")),
]
# Mentions of memory that are not an allocation failure of this process.
_NOT_OOM = re.compile(r"NCCL (error|WARN)|device-side assert|Cuda failure \d+ 'out of memory'", re.I)
_SIZE = re.compile(r"Tried to allocate ([0-9.]+) ?([KMGT]i?B|bytes)", re.I)
_UNITS = {"bytes": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}


@dataclass(frozen=True)
class OOMInfo:
    """What an OOM says about itself."""

    backend: str  # "cuda", "cpu", "mps", "torchdoctor-budget", ... or "type" when only the type told us
    message: str
    requested_bytes: int | None


def _messages(exc: BaseException) -> list[str]:
    texts = [str(a) for a in getattr(exc, "args", ()) if isinstance(a, (str, bytes))]
    return texts or [str(exc)]


def _oom_type(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom_type is not None and isinstance(exc, oom_type)


def _classify_one(exc: BaseException) -> OOMInfo | None:
    messages = _messages(exc)
    text = " ".join(messages)
    if _NOT_OOM.search(text):
        return None
    for backend, pattern in _OOM_PATTERNS:
        if pattern.search(text):
            return OOMInfo(backend, text[:2000], _requested(text))
    if _oom_type(exc):
        return OOMInfo("type", text[:2000], _requested(text))
    return None


def _requested(text: str) -> int | None:
    match = _SIZE.search(text)
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def classify_oom(exc: BaseException | None) -> OOMInfo | None:
    """The OOM behind ``exc`` (itself or anything it was raised from), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        info = _classify_one(exc)
        if info is not None:
            return info
        exc = exc.__cause__ or exc.__context__
    return None


def is_oom(exc: BaseException | None) -> bool:
    """True when ``exc`` is, or was raised from, an out-of-memory error."""
    return classify_oom(exc) is not None

"""torchdoctor keeps PyTorch training runs alive and honest.

Importing this package installs nothing and does not import torch; the library API below loads on first use.

    @torchdoctor.oom_retry(batch_size_arg="batch_size")
    def evaluate(model, batch_size=1024): ...

    step = torchdoctor.ResilientStep(optimizer)
    loss = step(lambda mb: loss_fn(model(mb[0]), mb[1]), (x, y))

    with torchdoctor.memory_budget("16MiB"):  # the CPU behaves like a 16 MiB device
        ...

    with torchdoctor.watch(model, optimizer) as doctor:  # the training-loop doctor, in code
        ...

    torchdoctor.estimate_memory(train, batch_sizes=[8, 32], gpu="A100-40GB")  # peak memory, on fake tensors
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "oom_retry": "torchdoctor.agent.retry",
    "ResilientStep": "torchdoctor.agent.retry",
    "memory_budget": "torchdoctor.agent.retry",
    "OOMRecord": "torchdoctor.agent.retry",
    "is_oom": "torchdoctor.oom",
    "save_checkpoint": "torchdoctor.agent.checkpoint",
    "load_checkpoint": "torchdoctor.agent.checkpoint",
    "resume_batches": "torchdoctor.agent.checkpoint",
    "capture_rng": "torchdoctor.agent.checkpoint",
    "restore_rng": "torchdoctor.agent.checkpoint",
    "CheckpointError": "torchdoctor.agent.checkpoint",
    "classify_oom": "torchdoctor.oom",
    "watch": "torchdoctor.agent.watch",
    "TorchDoctorFinding": "torchdoctor.agent.watch",
    "FindingsError": "torchdoctor.agent.watch",
    "estimate_memory": "torchdoctor.agent.estimate.library",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchdoctor' has no attribute {name!r}")

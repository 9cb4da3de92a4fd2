"""``torchdoctor env``: what torch, CUDA and the GPUs are, without creating a CUDA context.

Runs in the CLI's own process (the one agent module it calls): it imports torch, and builds the allocator probe if
it is not cached yet, so the first ``torchdoctor run`` does not pay for it.
"""

from __future__ import annotations

import os
from typing import Any

from torchdoctor.devices import host_info, probe_gpus


def collect_environment() -> dict[str, Any]:
    # NVML-based device counting keeps torch from initialising CUDA just to count devices.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    from torchdoctor.agent.memory.allocator_probe import build

    gpus = probe_gpus()
    probe, why = build(torch)  # built here if not yet (once per torch version): env warms the cache
    return {
        "cpu_figures": {"source": "allocator" if probe else "tensor outputs", "probe": str(probe) if probe else None,
                        "why_not": why or None},
        "host": host_info(),
        "torch": {
            "version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.version.cuda else None,
            "cuda_devices": torch.cuda.device_count() if torch.version.cuda else 0,
            "cuda_initialized": torch.cuda.is_initialized(),
        },
        "gpus": gpus.to_dict(),
    }

"""``torchdoctor env``: what torch, CUDA and the GPUs are, without creating a CUDA context."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.table import Table

from torchdoctor.devices import host_info, probe_gpus
from torchdoctor.sizes import format_bytes


def collect_environment() -> dict[str, Any]:
    # NVML-based device counting keeps torch from initialising CUDA just to count devices.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    from torchdoctor.agent.allocator_probe import build

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


def render_environment(env: dict[str, Any], console: Console) -> None:
    host, t, gpus = env["host"], env["torch"], env["gpus"]
    console.print(f"torch {t['version']}  ·  CUDA {t['cuda_version'] or 'none (CPU build)'}"
                  + (f"  ·  cuDNN {t['cudnn_version']}" if t.get("cudnn_version") else ""))
    console.print(f"Python {host['python']}  ·  {host['platform']}  ·  {host['cpu_count']} CPUs  ·  "
                  f"{format_bytes(host['memory_total_bytes'])} RAM")
    cpu = env.get("cpu_figures") or {}
    if cpu.get("source") == "allocator":
        console.print(f"CPU memory figures: the c10 allocator's own, kernels' buffers included (probe {cpu['probe']})")
    elif cpu:
        console.print(f"CPU memory figures: tensor outputs only, kernels' buffers not seen ({cpu['why_not']})")
    if not gpus["gpus"]:
        console.print(f"No GPU: {gpus['explanation']}. torchdoctor measures CPU tensor memory instead.")
        return
    table = Table(show_edge=False)
    for column in ("gpu", "name", "total", "used", "free", "driver"):
        table.add_column(column)
    for g in gpus["gpus"]:
        table.add_row(str(g["index"]), g["name"], format_bytes(g["total_bytes"]), format_bytes(g["used_bytes"]),
                      format_bytes(g["free_bytes"]), g["driver"] or "n/a")
    console.print(table)
    console.print(f"(read through {gpus['explanation']}; no CUDA context was created: "
                  f"cuda initialized = {t['cuda_initialized']})")

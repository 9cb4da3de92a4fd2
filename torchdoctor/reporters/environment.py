"""``torchdoctor env`` shown: what torch, CUDA and the GPUs are (collected by ``torchdoctor.agent.environment``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from torchdoctor.sizes import format_bytes


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

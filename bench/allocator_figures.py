"""CPU memory figures side by side: the c10 allocator's own (torch.profiler's memory events, the script run bare),
torchdoctor with its allocator probe (the default), and torchdoctor counting op outputs only (no probe).

    python bench/allocator_figures.py [--batches 4,8,16] [--models mlp,cnn,lstm,transformer]

Each cell is the largest per-step peak of a 2-step training run of tests/scripts/peak_probe.py (width 256, Adam);
the ratios are to the allocator's figure. Prints a Markdown table (docs/memory.md keeps the latest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "scripts" / "peak_probe.py"


def profiled(model: str, batch: int, work: Path) -> int:
    out = work / f"{model}-{batch}.json"
    subprocess.run([sys.executable, str(SCRIPT), "--model", model, "--batch", str(batch), "--width", "256",
                    "--steps", "2", "--profile-out", str(out)], check=True, capture_output=True)
    return max(json.loads(out.read_text()).values())


def torchdoctor(model: str, batch: int, work: Path, probe: bool) -> int:
    run_dir = work / f"{model}-{batch}-{'probe' if probe else 'outputs'}"
    env = {**os.environ, "TORCHDOCTOR_ALLOCATOR_PROBE": "1" if probe else "0"}
    subprocess.run([sys.executable, "-m", "torchdoctor", "run", "-q", "--accounting", "exact", "--run-dir",
                    str(run_dir), str(SCRIPT), "--model", model, "--batch", str(batch), "--width", "256", "--steps",
                    "2"], check=True, capture_output=True, env=env, cwd=work)
    report = json.loads((run_dir / "report.json").read_text())
    return max(s["devices"]["cpu"]["tensor_peak"] for s in report["samples"] if s["span"] == "step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,lstm,transformer")
    parser.add_argument("--batches", default="4,8,16")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}\n")
    print("| model | batch | allocator (profiler) | torchdoctor, allocator probe | / allocator | "
          "torchdoctor, op outputs only | / allocator |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                truth = profiled(model, batch, work)
                probe = torchdoctor(model, batch, work, probe=True)
                outputs = torchdoctor(model, batch, work, probe=False)
                print(f"| {model} | {batch} | {truth:,} | {probe:,} | {probe / truth:.4f} | {outputs:,} | "
                      f"{outputs / truth:.4f} |", flush=True)
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()

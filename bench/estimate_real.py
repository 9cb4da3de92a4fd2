"""``torchdoctor estimate`` on the real-shaped training scripts of tests/scripts/real (written in the shapes public
scripts take: nanoGPT, minGPT, the word language model, the MNIST and VAE and DCGAN examples, an LBFGS closure, a
hand-batched trainer, transformers' Trainer, Lightning's Trainer), side by side with the CPU allocator's peak of
the same first two optimizer steps (``torchdoctor ci --steps 2``), in one run.

    python bench/estimate_real.py [--scripts nanogpt_char.py,vae_sum.py]

Each script runs with its manifest arguments in a temporary directory (its outputs go there). Prints a Markdown
table: the estimate, the truth, the error, whether the estimate ran on fake tensors or fell back to real ones, its
wall time and the stand-ins it gave to values read back.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "tests" / "scripts" / "real"


def torchdoctor(args: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torchdoctor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", default="", help="comma-separated script names (default: all in the manifest)")
    options = parser.parse_args()
    manifest = json.loads((REAL / "manifest.json").read_text())
    names = [n for n in options.scripts.split(",") if n] or list(manifest)
    print("| script | estimate, bytes | allocator (ci), bytes | error | how | estimate wall s | stand-ins |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    errors = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            args = [a.replace("{out}", "out") for a in manifest[name]["args"]]
            began = time.monotonic()
            estimate = torchdoctor(["estimate", "--json", "estimate.json", str(REAL / name), *args], tmp)
            seconds = time.monotonic() - began
            torchdoctor(["ci", "--steps", "2", "--run-dir", "ci", str(REAL / name), *args], tmp)
            try:
                document = json.loads(Path(tmp, "estimate.json").read_text())
                peaks = json.loads(Path(tmp, "ci", "report.json").read_text())["peaks"]
            except (OSError, ValueError):
                print(f"| {name} | failed: {(estimate.stderr.strip().splitlines() or ['?'])[-1][:120]} | | | | | |")
                continue
            truth = next(p["bytes"] for p in peaks if p["kind"] == "tensor_bytes")
            row = document["estimates"][0]
            error = (row["peak_bytes"] - truth) / truth
            errors.append(abs(error))
            how = "real tensors (fallback)" if document.get("fallback") else "fake tensors"
            print(f"| {name} | {row['peak_bytes']:,} | {truth:,} | {100 * error:+.3f} % | {how} | {seconds:.1f} | "
                  f"{row.get('stand_ins', 0)} |")
    if errors:
        within = sum(e <= 0.02 for e in errors)
        print(f"\nmean abs. error {100 * sum(errors) / len(errors):.2f} %, {within} of {len(errors)} within 2 %")


if __name__ == "__main__":
    main()

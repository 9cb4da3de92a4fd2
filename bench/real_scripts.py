"""The real-shaped training scripts (tests/scripts/real) under the budgets of tests/e2e/test_real_scripts.py, side by
side with their bare runs: what torchdoctor did, what its report says, and what really happened to the final loss
and the step count. Prints the Markdown table of docs/recovery.md (not a test; run it by hand, ~3 min).

    python bench/real_scripts.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REAL = os.path.join(ROOT, "tests", "scripts", "real")
MANIFEST = json.load(open(os.path.join(REAL, "manifest.json")))

# script, budget, torchdoctor options, the script's own options that shorten it (as in the tests)
CASES = [
    ("nanogpt_char.py", "17MiB", ["--remedies", "micro-batch"], []),
    ("mingpt_endless.py", "21MiB", [], ["--max-iters", "12"]),
    ("word_lm.py", "11MiB", [], ["--epochs", "1"]),
    ("mnist_cnn.py", "29MiB", [], ["--epochs", "1"]),
    ("vae_sum.py", "8MiB", [], ["--epochs", "2"]),
    ("dcgan.py", "27MiB", [], ["--niter", "1"]),
    ("lbfgs_sequence.py", "23MiB", [], []),
    ("hand_batched_trainer.py", "12MiB", [], []),
    ("hf_trainer.py", "21MiB", [], []),
    ("lightning_trainer.py", "18MiB", ["--allow-batchnorm-split"], []),
]


def run(cmd: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("TORCHDOCTOR_EVENTS", None)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def final_loss(text: str) -> float | None:
    found = re.search(r"^final val loss (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def steps(report: dict) -> int:
    training = report["attempts"][-1].get("training") or {}
    return sum(u["steps"] for u in training.get("updates") or [])


def main() -> None:
    print("| script | budget (manifest peak: op outputs, before the allocator probe) | attempts: remedies | report says | "
          "final val loss (bare) | steps (bare) |")
    print("|---|---|---|---|---|---|")
    for name, budget, options, shorter in CASES:
        with tempfile.TemporaryDirectory() as work:
            script = os.path.join(REAL, name)
            args = [a.replace("{out}", "out") for a in MANIFEST[name]["args"]] + shorter
            for sub in ("ref", "plain", "got"):
                os.makedirs(os.path.join(work, sub))
            bare = run([sys.executable, script, *args], os.path.join(work, "ref"))
            plain = run([sys.executable, "-m", "torchdoctor", "run", "-q", "--run-dir", "run", script, *args],
                        os.path.join(work, "plain"))
            got = run([sys.executable, "-m", "torchdoctor", "run", "-q", "--memory-budget", budget, *options,
                       "--run-dir", "run", script, *args], os.path.join(work, "got"))
            assert plain.returncode == 0 and plain.stdout == bare.stdout, plain.stderr[-500:]
            asked = json.load(open(os.path.join(work, "plain", "run", "report.json")))
            report = json.load(open(os.path.join(work, "got", "run", "report.json")))
        recovery = report.get("recovery") or {}
        remedies = ", ".join(recovery.get("remedies") or []) or "–"
        said = "; ".join(f"{i['key'].replace('_', ' ')} {i['status']}" for i in recovery.get("invariants") or [])
        if not said:
            said = f"gave up: {(recovery.get('gave_up') or '')[:80]}"
        peak = MANIFEST[name]["peak_bytes"] / 2**20
        print(f"| {name} {' '.join(options + shorter)} | {budget} ({peak:.1f} MiB) | {len(report['attempts'])}: "
              f"{remedies} | exit {got.returncode}; {said} | {final_loss(got.stdout)} ({final_loss(bare.stdout)}) | "
              f"{steps(report)} ({steps(asked)}) |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

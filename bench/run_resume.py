"""`torchdoctor run` after a SIGKILL: resuming from run checkpoints against restarting from the beginning.

    python bench/run_resume.py [--kill-at 30] [--every 5] [--sleep 0.05] [--repeats 3]

Runs tests/scripts/plain_train.py (3 epochs of 12 steps; ``--sleep`` seconds of extra work per step stand in for
a bigger model) under ``torchdoctor run``, SIGKILLs the child from outside once ``--kill-at`` steps are done, and
reads the relaunch's events:

- kill -> first resumed step: from the kill to the first optimizer step the relaunch takes after resuming;
- kill -> back where it was: from the kill to the relaunch's step number ``--kill-at`` again, with
  ``--checkpoint-every N`` (resume) and without it (restart from the beginning), side by side in the same run;
- steps redone: steps the relaunch trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "scripts" / "plain_train.py"


def _events(path: Path) -> list[dict]:
    found = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return found
    for line in lines:
        try:
            found.append(json.loads(line))
        except ValueError:
            pass
    return found


def one_run(every: int, kill_at: int, sleep: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        args = [sys.executable, "-m", "torchdoctor", "run", "-q", "--run-dir", str(run_dir)]
        if every:
            args += ["--checkpoint-every", str(every)]
        args += [str(SCRIPT), "--out", str(Path(tmp) / "out.pt"), "--sleep", str(sleep)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        killed_t = None
        while proc.poll() is None and killed_t is None:
            time.sleep(0.01)
            events = _events(run_dir / "events.jsonl")
            pid = next((e["pid"] for e in events if e["kind"] == "run_started"), None)
            steps = max((e["step"] for e in events if e["kind"] == "memory_sample" and e["span"] == "step"), default=0)
            if pid and steps >= kill_at:
                os.kill(pid, signal.SIGKILL)
                killed_t = time.time()
        proc.wait(timeout=600)
        events = _events(run_dir / "events.jsonl")
        starts = [i for i, e in enumerate(events) if e["kind"] == "run_started"]
        first_attempt, second = events[:starts[1]], events[starts[1]:]
        died_at = max(e["step"] for e in first_attempt if e["kind"] == "memory_sample" and e["span"] == "step")
        resume = next((e for e in second if e["kind"] == "resume"), None)
        resumed_from = resume["step"] if resume and resume["status"] == "resumed" else 0
        steps = [e for e in second if e["kind"] == "memory_sample" and e["span"] == "step"]
        first_step_t = steps[0]["t"]
        back_t = next(e["t"] for e in steps if e["step"] >= died_at)
        return {"killed_at": died_at, "resumed_from": resumed_from, "redone": died_at - resumed_from,
                "to_first_step": first_step_t - killed_t, "to_back": back_t - killed_t,
                "exit": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-at", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"resume": [], "restart": []}
    for _ in range(args.repeats):  # alternate, so drift on a noisy machine hits both alike
        rows["resume"].append(one_run(args.every, args.kill_at, args.sleep))
        rows["restart"].append(one_run(0, args.kill_at, args.sleep))
    print(f"plain_train.py, {args.sleep * 1000:.0f} ms of extra work per step, SIGKILL at step {args.kill_at}, "
          f"median of {args.repeats}")
    print(f"{'relaunch':<34} {'steps redone':>12} {'kill->first step':>17} {'kill->back at kill step':>24}")
    for name, label in (("resume", f"resume (--checkpoint-every {args.every})"), ("restart", "restart from the beginning")):
        runs = rows[name]
        assert all(r["exit"] == 0 for r in runs), runs
        print(f"{label:<34} {statistics.median(r['redone'] for r in runs):>12.0f} "
              f"{statistics.median(r['to_first_step'] for r in runs):>16.2f}s "
              f"{statistics.median(r['to_back'] for r in runs):>23.2f}s")
    ratio = (statistics.median(r["to_back"] for r in rows["restart"])
             / statistics.median(r["to_back"] for r in rows["resume"]))
    print(f"back at the kill step: resume is x{ratio:.2f} faster than restarting")


if __name__ == "__main__":
    main()

"""Relaunch latency: a fresh ``python -c <boot>`` child against a fork of the torch-preloaded zygote.

    python bench/relaunch.py [--rounds 5] [--threads 1] [--json FILE]

For each workload and each round, starts the next attempt both ways, in alternating order, exactly as the
supervisor would: the fresh child with the supervisor's own command line (``BOOT``), the zygote child with
``Zygote.spawn`` (same argv, environment, working directory; stdout to a pipe). Each time is measured from just
before the launch call ("start the next attempt") to

- **first line**: the script's first line of output read from the pipe (tiny_train.py prints only at its end,
  so there it is the whole run; bench/relaunch_gpt.py prints right after ``import torch`` and building the model);
- **torch imported**: the agent's ``run_started`` event (its time stamp), written once the script's
  ``import torch`` is done and the agent is up;
- **first step**: the first ``memory_sample`` event with span "step" (its time stamp: right after the first
  ``optimizer.step()``);
- **exit**: the child's exit seen by the launcher.

One untimed warm-up round comes first. The table gives the median and the minimum of each, and the ratio of the
medians (fresh / zygote). The zygote's own start (import torch, the agent, torch._dynamo) is printed once: it is
paid while the first attempt runs, not at the relaunch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchdoctor.supervisor.child import BOOT, PACKAGE_ROOT  # noqa: E402 - the supervisor's exact child command
from torchdoctor.supervisor.zygote import Zygote  # noqa: E402

WORKLOADS = {
    "tiny_train.py": [str(REPO / "tests" / "scripts" / "tiny_train.py"), "--steps", "8"],
    "relaunch_gpt.py": [str(REPO / "bench" / "relaunch_gpt.py"), "--steps", "10"],
}
FIGURES = ("first_line", "torch_imported", "first_step", "exit")


def _events(path: Path) -> list[dict]:
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            pass
    return found


def one_run(mode: str, argv: list[str], zygote: Zygote, env: dict[str, str], work: Path, n: int) -> dict:
    events = work / f"events-{n}.jsonl"
    events.write_text("")
    env = {**env, "TORCHDOCTOR_EVENTS": str(events)}
    read, write = os.pipe()
    err = os.open(work / f"stderr-{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    null = os.open(os.devnull, os.O_RDONLY)
    began = time.time()
    if mode == "fresh":
        child = subprocess.Popen([sys.executable, "-c", BOOT.format(root=PACKAGE_ROOT), *argv], env=env,
                                 cwd=work, stdin=null, stdout=write, stderr=err)
    else:
        child = zygote.spawn(argv, env, str(work), null, write, err)
    for fd in (write, err, null):
        os.close(fd)
    with os.fdopen(read, "rb") as out:
        out.readline()
        first_line = time.time()
        out.read()
    returncode = child.wait(600)
    ended = time.time()
    if returncode != 0:
        raise RuntimeError(f"{mode} run of {argv[0]} exited {returncode}: "
                           f"{(work / f'stderr-{n}').read_text()[-2000:]}")
    recorded = _events(events)
    started = next(e["t"] for e in recorded if e["kind"] == "run_started")
    step = next(e["t"] for e in recorded if e["kind"] == "memory_sample" and e["span"] == "step")
    return {"mode": mode, "first_line": first_line - began, "torch_imported": started - began,
            "first_step": step - began, "exit": ended - began}


def run(rounds: int, threads: int) -> tuple[dict, list[dict]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDOCTOR_")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # both ways alike (the zygote imports torch under this env too)
    began = time.monotonic()
    zygote = Zygote.start(PACKAGE_ROOT, env=env)
    try:
        if not zygote.ready(300):
            raise RuntimeError(f"the zygote did not start: {zygote.failure}")
        info = {**zygote.info, "ready_after_s": round(time.monotonic() - began, 3)}
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            n = 0
            for name, argv in WORKLOADS.items():
                for round_ in range(rounds + 1):  # round 0: warm-up, not counted
                    order = ("fresh", "zygote") if round_ % 2 else ("zygote", "fresh")
                    for mode in order:
                        n += 1
                        result = one_run(mode, argv, zygote, env, Path(tmp), n)
                        if round_:
                            results.append({"workload": name, "round": round_, **result})
                        print(f"  {name} round {round_}{' (warm-up)' if not round_ else ''} {mode}: "
                              + ", ".join(f"{f} {result[f]:.3f} s" for f in FIGURES), file=sys.stderr, flush=True)
    finally:
        zygote.close()
    return info, results


def table(results: list[dict]) -> str:
    lines = ["| workload | launch | first line | torch imported | first step | exit |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name in WORKLOADS:
        medians: dict[str, dict[str, float]] = {}
        for mode in ("fresh", "zygote"):
            runs = [r for r in results if r["workload"] == name and r["mode"] == mode]
            cells = []
            medians[mode] = {}
            for figure in FIGURES:
                values = [r[figure] for r in runs]
                medians[mode][figure] = statistics.median(values)
                cells.append(f"{statistics.median(values):.3f} s (min {min(values):.3f})")
            label = "fresh `python -c <boot>`" if mode == "fresh" else "zygote fork"
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
        ratios = [f"×{medians['fresh'][f] / medians['zygote'][f]:.1f}" for f in FIGURES]
        lines.append(f"| {name} | ratio of medians (fresh / zygote) | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for every run (0: leave the environment's); one keeps runs on a "
                             "2-core machine from fighting over the cores")
    parser.add_argument("--json", help="write every figure of every run to this file")
    args = parser.parse_args()
    info, results = run(args.rounds, args.threads)
    print(f"Python {platform.python_version()}, torch {info.get('torch')}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; zygote ready {info['ready_after_s']:.2f} s after its start "
          f"(its imports: {info.get('import_seconds')} s); {args.rounds} rounds, OMP_NUM_THREADS="
          f"{args.threads or os.environ.get('OMP_NUM_THREADS', 'unset')}; times from the launch call")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"zygote": info, "runs": results}, indent=2))


if __name__ == "__main__":
    main()

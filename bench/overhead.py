"""How much slower does a training step get under ``torchdoctor run``? (Not a test; run it by hand.)

    python bench/overhead.py                 # defaults: 300 steps, 5 pairs (sampled), 3 pairs (exact, off)
    python bench/overhead.py --quick         # a rough look in about a minute
    python bench/overhead.py --models mlp --modes sampled --pairs 8

For each model (``bench/train_bench.py``: an MLP and a small transformer LM, CPU, synthetic data) and each
accounting mode, it runs the same training script bare (``python bench/train_bench.py ...``) and under
``python -m torchdoctor run -q --accounting MODE ...``, alternating bare and torchdoctor runs (the order
within a pair flips every round, and the rounds go through the modes in turn, so slow drifts of the machine
fall on both sides). Each run's figure is the median time of one training-loop iteration, measured inside the
script, over the steps after the first 5 (start-up and warm-up are left out). The table shows the median over
the pairs of those per-run medians, and the overhead as the median of the per-pair ratios.

The "mean" column is the same ratio for the mean step time: it includes the rare steps that sampled
accounting measures exactly (and the census before each), which the median leaves out.
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
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAIN = os.path.join(HERE, "train_bench.py")
MODES = ("sampled", "exact", "off")
MODELS = ("mlp", "transformer")


@dataclass
class Run:
    model: str
    mode: str | None  # None: bare
    result: dict[str, Any]
    wall_s: float
    report: dict[str, Any] | None = None


@dataclass
class Cell:
    model: str
    mode: str
    pairs: list[tuple[Run, Run]] = field(default_factory=list)  # (bare, torchdoctor)


def run_once(model: str, mode: str | None, args: argparse.Namespace, workdir: str, index: int) -> Run:
    out = os.path.join(workdir, f"{index:03d}-{model}-{mode or 'bare'}.json")
    script = [TRAIN, "--model", model, "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--threads", str(args.threads), "--out", out, "--label", mode or "bare"]
    if mode is None:
        command = [sys.executable, *script]
    else:
        run_dir = os.path.join(workdir, f"{index:03d}-{model}-{mode}-run")
        command = [sys.executable, "-m", "torchdoctor", "run", "-q", "--accounting", mode,
                   "--sample-every", str(args.sample_every), "--run-dir", run_dir, *script]
    env = dict(os.environ)
    # Run torchdoctor from this checkout even when it is not installed.
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - began
    if proc.returncode != 0 or not os.path.exists(out):
        sys.stderr.write(f"\nrun failed (exit {proc.returncode}): {' '.join(command)}\n{proc.stdout}{proc.stderr}\n")
        raise SystemExit(1)
    with open(out, encoding="utf-8") as handle:
        result = json.loads(handle.readline())
    report = None
    if mode is not None:
        with open(os.path.join(run_dir, "report.json"), encoding="utf-8") as handle:
            report = json.load(handle)
        if report.get("steps") != args.steps:
            sys.stderr.write(f"\ntorchdoctor saw {report.get('steps')} steps, expected {args.steps}: {run_dir}\n")
            raise SystemExit(1)
    return Run(model, mode, result, wall, report)


def measured_steps(run: Run) -> int | None:
    """How many steps torchdoctor measured exactly in a run (from its event stream)."""
    if run.report is None:
        return None
    path = os.path.join((run.report.get("run") or {}).get("run_dir") or "", "events.jsonl")
    try:
        with open(path, encoding="utf-8") as handle:
            return sum(1 for line in handle if '"span": "step"' in line.replace('"span":"step"', '"span": "step"')
                       and ('"measured": true' in line or '"measured":true' in line))
    except OSError:
        return None


def summarize(cell: Cell) -> dict[str, Any]:
    bare = [b.result["median_ms"] for b, _ in cell.pairs]
    td = [t.result["median_ms"] for _, t in cell.pairs]
    ratios = [t.result["median_ms"] / b.result["median_ms"] for b, t in cell.pairs]
    mean_ratios = [t.result["mean_ms"] / b.result["mean_ms"] for b, t in cell.pairs]
    measured = [m for m in (measured_steps(t) for _, t in cell.pairs) if m is not None]
    return {
        "model": cell.model,
        "mode": cell.mode,
        "pairs": len(cell.pairs),
        "bare_ms": statistics.median(bare),
        "td_ms": statistics.median(td),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "mean_ratio": statistics.median(mean_ratios),
        "measured_steps": statistics.median(measured) if measured else None,
        "bare_wall_s": statistics.median(b.wall_s for b, _ in cell.pairs),
        "td_wall_s": statistics.median(t.wall_s for _, t in cell.pairs),
        "pair_ratios": ratios,
        "bare_runs": [b.result for b, _ in cell.pairs],
        "td_runs": [t.result for _, t in cell.pairs],
    }


def table(rows: list[dict[str, Any]], steps: int, markdown: bool) -> str:
    header = ["model", "mode", "pairs", "bare ms/step", "torchdoctor ms/step", "ratio", "overhead",
              "pair ratios (min-max)", "overhead (mean)", "measured steps", "wall s bare / td"]
    lines = []
    for r in rows:
        mode = "sampled (default)" if r["mode"] == "sampled" else r["mode"]
        measured = "-" if r["measured_steps"] is None else f"{r['measured_steps']:.0f} / {steps}"
        lines.append([r["model"], mode, str(r["pairs"]), f"{r['bare_ms']:.2f}", f"{r['td_ms']:.2f}",
                      f"{r['ratio']:.3f}", f"{(r['ratio'] - 1) * 100:+.1f}%",
                      f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}", f"{(r['mean_ratio'] - 1) * 100:+.1f}%",
                      measured, f"{r['bare_wall_s']:.1f} / {r['td_wall_s']:.1f}"])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*line) for line in lines])


def machine() -> str:
    try:
        import torch

        torch_version = torch.__version__
    except Exception:  # noqa: BLE001
        torch_version = "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python "
            f"{platform.python_version()}, torch {torch_version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    parser.add_argument("--pairs", type=int, default=5, help="bare/torchdoctor pairs for the sampled mode (5)")
    parser.add_argument("--extra-pairs", type=int, default=None,
                        help="pairs for the exact and off modes (default 3, or --pairs if smaller)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (300)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of each run's median (5)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in the script (1)")
    parser.add_argument("--sample-every", type=int, default=50, help="torchdoctor --sample-every (50, its default)")
    parser.add_argument("--quick", action="store_true", help="2 pairs for sampled, 1 for the others, 150 steps")
    parser.add_argument("--json", dest="json_path", default=None, help="also write every figure to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed at the end)")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.extra_pairs, args.steps = 2, 1, 150
    if args.extra_pairs is None:
        args.extra_pairs = min(3, args.pairs)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for name, chosen, allowed in (("model", models, MODELS), ("mode", modes, MODES)):
        bad = [c for c in chosen if c not in allowed]
        if bad or not chosen:
            parser.error(f"unknown {name} {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
    if args.steps <= args.warmup + 1 or args.pairs < 1 or args.extra_pairs < 1:
        parser.error("need --steps > --warmup + 1 and at least one pair")

    pairs_for = {mode: args.pairs if mode == "sampled" else args.extra_pairs for mode in modes}
    total_runs = 2 * len(models) * sum(pairs_for.values())
    print(f"machine: {machine()}")
    print(f"{total_runs} runs: models {', '.join(models)}; modes {', '.join(f'{m} x{pairs_for[m]}' for m in modes)}; "
          f"{args.steps} steps per run, median over steps {args.warmup + 1}-{args.steps}; "
          f"torch threads {args.threads}", flush=True)

    workdir = tempfile.mkdtemp(prefix="torchdoctor-bench-")
    cells = {(model, mode): Cell(model, mode) for model in models for mode in modes}
    began = time.perf_counter()
    index = 0
    for model in models:
        for round_no in range(max(pairs_for.values())):
            # Rotate the order of modes each round, and flip bare/torchdoctor order within each pair.
            order = modes[round_no % len(modes):] + modes[:round_no % len(modes)]
            for mode in order:
                if round_no >= pairs_for[mode]:
                    continue
                sides: list[str | None] = [None, mode] if (round_no + index) % 2 == 0 else [mode, None]
                done: dict[str | None, Run] = {}
                for side in sides:
                    index += 1
                    done[side] = run_once(model, side, args, workdir, index)
                bare, td = done[None], done[mode]
                cells[(model, mode)].pairs.append((bare, td))
                print(f"  {model:<11} {mode:<7} pair {round_no + 1}: bare {bare.result['median_ms']:7.2f} ms  "
                      f"torchdoctor {td.result['median_ms']:7.2f} ms  ratio "
                      f"{td.result['median_ms'] / bare.result['median_ms']:.3f}  "
                      f"[{time.perf_counter() - began:5.0f} s]", flush=True)

    rows = [summarize(cells[(model, mode)]) for model in models for mode in modes]
    print()
    print(table(rows, args.steps, args.markdown))
    print(f"\nbenchmark took {time.perf_counter() - began:.0f} s")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine(), "args": vars(args), "rows": rows}, handle, indent=1)
        print(f"figures written to {args.json_path}")
    if args.keep:
        print(f"run directories kept in {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

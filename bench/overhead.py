"""How much slower does a training step get under ``torchdoctor run``? (Not a test; run it by hand.)

    python bench/overhead.py                 # 300 steps a run; 5 pairs sampled, 3 off, 2 exact (~9 min on 2 cores)
    python bench/overhead.py --quick         # a rough look: 150 steps, 2 pairs sampled, 1 each other (~2 min)
    python bench/overhead.py --control       # add bare-vs-bare pairs: the noise floor of the machine
    python bench/overhead.py --models mlp --modes sampled --pairs 8

For each model (``bench/train_bench.py``: an MLP and a small transformer LM, CPU, synthetic data) and each
accounting mode, it runs the same training script bare (``python bench/train_bench.py ...``) and under
``python -m torchdoctor run -q --accounting MODE ...``, alternating bare and torchdoctor runs (the order
within a pair flips from one pair to the next, and the rounds go through the modes in turn, so slow drifts of
the machine fall on both sides). Each run's figure is the median time of one training-loop iteration, measured inside the
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
CONTROL = "control"  # an A/A check: both runs of each pair are bare, so its "overhead" is the noise floor
MODELS = ("mlp", "transformer", "lbfgs")


@dataclass
class Run:
    model: str
    mode: str | None  # None: bare
    result: dict[str, Any]
    wall_s: float
    report: dict[str, Any] | None = None
    run_dir: str | None = None


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
        if report.get("steps") not in (None, args.steps):
            sys.stderr.write(f"\ntorchdoctor saw {report.get('steps')} steps, expected {args.steps}: {run_dir}\n")
            raise SystemExit(1)
    return Run(model, mode, result, wall, report, run_dir if mode is not None else None)


def measured_steps(run: Run) -> int | None:
    """How many steps torchdoctor measured exactly in a run (from its event stream)."""
    if run.run_dir is None:
        return None
    path = os.path.join(run.run_dir, "events.jsonl")
    count = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                event = json.loads(line)
                if event.get("kind") == "memory_sample" and event.get("span") == "step" and event.get("measured"):
                    count += 1
    except (OSError, ValueError):
        return None
    return count


def summarize(cell: Cell) -> dict[str, Any]:
    def ratios(key: str) -> list[float]:
        return [t.result[key] / b.result[key] for b, t in cell.pairs]

    median_ratios = ratios("median_ms")
    measured = [m for m in (measured_steps(t) for _, t in cell.pairs) if m is not None]
    return {
        "model": cell.model,
        "mode": cell.mode,
        "pairs": len(cell.pairs),
        "bare_ms": statistics.median(b.result["median_ms"] for b, _ in cell.pairs),
        "td_ms": statistics.median(t.result["median_ms"] for _, t in cell.pairs),
        "ratio": statistics.median(median_ratios),
        "ratio_min": min(median_ratios),
        "ratio_max": max(median_ratios),
        "mean_ratio": statistics.median(ratios("mean_ms")),
        "cpu_ratio": statistics.median(ratios("cpu_median_ms")),
        "measured_steps": statistics.median(measured) if measured else None,
        "bare_wall_s": statistics.median(b.wall_s for b, _ in cell.pairs),
        "td_wall_s": statistics.median(t.wall_s for _, t in cell.pairs),
        "pair_ratios": median_ratios,
        "bare_runs": [b.result for b, _ in cell.pairs],
        "td_runs": [t.result for _, t in cell.pairs],
    }


def _mode_name(mode: str) -> str:
    return {"sampled": "sampled (default)", CONTROL: "none (bare vs bare)"}.get(mode, mode)


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def render(header: list[str], lines: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*line) for line in lines])


def tables(rows: list[dict[str, Any]], steps: int, markdown: bool) -> str:
    main_header = ["model", "mode", "bare ms/step", "torchdoctor ms/step", "ratio", "overhead"]
    main_lines = [[r["model"], _mode_name(r["mode"]), f"{r['bare_ms']:.2f}", f"{r['td_ms']:.2f}", f"{r['ratio']:.3f}",
                   _pct(r["ratio"])] for r in rows]
    detail_header = ["model", "mode", "pairs", "pair ratios (min-max)", "overhead (mean step)",
                     "overhead (CPU time)", "steps measured exactly", "run wall s bare / td"]
    detail_lines = [[r["model"], _mode_name(r["mode"]), str(r["pairs"]), f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}",
                     _pct(r["mean_ratio"]), _pct(r["cpu_ratio"]),
                     "-" if r["measured_steps"] is None else f"{r['measured_steps']:.0f} of {steps}",
                     f"{r['bare_wall_s']:.1f} / {r['td_wall_s']:.1f}"] for r in rows]
    return render(main_header, main_lines, markdown) + "\n\n" + render(detail_header, detail_lines, markdown)


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
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from: {', '.join(MODES)}, {CONTROL} (bare vs bare, the noise floor)")
    parser.add_argument("--control", action="store_true", help=f"add the {CONTROL} mode (same as listing it)")
    parser.add_argument("--pairs", type=int, default=None, help="bare/torchdoctor pairs for the sampled mode (5)")
    parser.add_argument("--extra-pairs", type=int, default=None,
                        help=f"pairs for the off and {CONTROL} modes (3, or --pairs if smaller)")
    parser.add_argument("--exact-pairs", type=int, default=None,
                        help="pairs for the exact mode (2, or --extra-pairs if smaller; its cost is far above the noise)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (300)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of each run's median (5)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in the script (1)")
    parser.add_argument("--sample-every", type=int, default=50, help="torchdoctor --sample-every (50, its default)")
    parser.add_argument("--quick", action="store_true",
                        help="a rough look: 2 pairs for sampled, 1 for the others, 150 steps (unless given)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write every figure to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed at the end)")
    args = parser.parse_args()
    quick = {"pairs": 2, "extra_pairs": 1, "exact_pairs": 1, "steps": 150}
    normal = {"pairs": 5, "extra_pairs": 3, "exact_pairs": 2, "steps": 300}
    for name, value in (quick if args.quick else normal).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.extra_pairs = min(args.extra_pairs, args.pairs)
    args.exact_pairs = min(args.exact_pairs, args.extra_pairs)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.control and CONTROL not in modes:
        modes.append(CONTROL)
    for name, chosen, allowed in (("model", models, MODELS), ("mode", modes, (*MODES, CONTROL))):
        bad = [c for c in chosen if c not in allowed]
        if bad or not chosen:
            parser.error(f"unknown {name} {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
    if args.steps <= args.warmup + 1 or min(args.pairs, args.extra_pairs, args.exact_pairs) < 1:
        parser.error("need --steps > --warmup + 1 and at least one pair")

    pairs_for = {mode: {"sampled": args.pairs, "exact": args.exact_pairs}.get(mode, args.extra_pairs) for mode in modes}
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
            # Rotate the order of modes each round; flip the bare/torchdoctor order every pair (B T, T B, ...).
            order = modes[round_no % len(modes):] + modes[:round_no % len(modes)]
            for mode in order:
                if round_no >= pairs_for[mode]:
                    continue
                sides: list[str | None] = [None, mode] if (index // 2) % 2 == 0 else [mode, None]
                done: dict[str | None, Run] = {}
                for side in sides:
                    index += 1
                    done[side] = run_once(model, None if side == CONTROL else side, args, workdir, index)
                bare, td = done[None], done[mode]
                cells[(model, mode)].pairs.append((bare, td))
                print(f"  {model:<11} {mode:<7} pair {round_no + 1}: bare {bare.result['median_ms']:7.2f} ms  "
                      f"torchdoctor {td.result['median_ms']:7.2f} ms  ratio "
                      f"{td.result['median_ms'] / bare.result['median_ms']:.3f}  "
                      f"[{time.perf_counter() - began:5.0f} s]", flush=True)

    rows = [summarize(cells[(model, mode)]) for model in models for mode in modes]
    print()
    print(tables(rows, args.steps, args.markdown))
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

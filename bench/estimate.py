"""Peak-memory estimators side by side against the CPU allocator's peak of the first 2 optimizer steps.

    python bench/estimate.py [--workloads mlp,cnn,gpt,lstm] [--batches 8,32] [--threads 1] [--json FILE]

For each workload of bench/estimate_workloads/ (MLP, conv + BatchNorm CNN, small GPT, 2-layer LSTM; fp32, data
made in the script) and batch size, in one run:

- truth: `torchdoctor ci --steps 2` on the real script: the CPU allocator's own peak over the first 2 optimizer
  steps (report.json `peaks`, kind `tensor_bytes`, device `cpu`; kernels' own buffers included, docs/memory.md);
- `torchdoctor estimate --batch-sizes B --json FILE` on the same script (fake tensors, no memory allocated);
- torchinfo's "Estimated Total Size" (input + "Forward/backward pass size" + params, bytes; one real forward),
  when torchinfo is installed (it is not a dependency of torchdoctor);
- torch's MemTracker (`torch.distributed._tools.mem_tracker`) over the same 2 steps, on real tensors and under
  FakeTensorMode (built from the workload's own functions, in this process);
- accelerate's `estimate_training_usage(size, "float32")["step"]` (4 x the parameters' bytes: weights, gradients,
  2 Adam states; batch size 1 by design), computed by hand when accelerate is not installed.

Errors are (estimate - truth) / truth. Wall times: ci and estimate are whole processes (`torchdoctor ...` from its
start to its end, torch import included); the in-process estimators are timed from building the model to the
figure (this process has imported torch and them already). Prints Markdown tables (docs/estimate.md keeps the latest).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = REPO / "bench" / "estimate_workloads"
BATCHES = {"mlp": (32, 256, 2048), "cnn": (8, 32, 64), "gpt": (4, 16, 64), "lstm": (8, 32, 128)}
ESTIMATORS = ("torchdoctor estimate", "torchinfo", "MemTracker (real)", "MemTracker (fake)", "accelerate (4 x params)")
MIB = 1 << 20


def torchdoctor(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torchdoctor", *args], capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - started, done


def truth(script: Path, batch: int, work: Path) -> dict[str, Any]:
    run_dir = work / f"{script.stem}-{batch}-ci"
    wall, done = torchdoctor("ci", "--steps", "2", "--run-dir", str(run_dir), str(script), "--batch-size",
                             str(batch), cwd=work)
    if done.returncode != 0:
        raise RuntimeError(f"torchdoctor ci exited {done.returncode}: {done.stderr.strip()[-400:]}")
    report = json.loads((run_dir / "report.json").read_text())
    peak = next(p for p in report["peaks"] if p["kind"] == "tensor_bytes" and p["device"] == "cpu")
    return {"bytes": peak["bytes"], "phase": peak["phase"], "step": peak["step"], "by_kind": peak["breakdown"],
            "by_phase": peak["phase_peaks"], "cpu_figures": report["accounting"]["cpu_figures"], "wall_s": wall}


def td_estimate(script: Path, batch: int, work: Path) -> dict[str, Any]:
    out = work / f"{script.stem}-{batch}-estimate.json"
    wall, done = torchdoctor("estimate", "--batch-sizes", str(batch), "--json", str(out), str(script),
                             "--batch-size", str(batch), cwd=work)
    if done.returncode != 0:
        raise RuntimeError(f"torchdoctor estimate exited {done.returncode}: {done.stderr.strip()[-400:]}")
    doc = json.loads(out.read_text())
    (est,) = doc["estimates"]
    return {"bytes": est["peak_bytes"], "phase": est["peak_phase"], "by_kind": est["by_kind"],
            "by_phase": est["by_phase"], "own_seconds": doc["seconds"], "wall_s": wall}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"estimate_workload_{name}", WORKLOADS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchinfo_total(workload: ModuleType, batch: int) -> int:
    import torch
    from torchinfo import summary

    torch.manual_seed(0)
    model, _ = workload.model_and_optimizer()
    x, _ = workload.make_batch(batch, torch.Generator().manual_seed(1))
    stats = summary(model, input_data=[x], mode="train", verbose=0)
    return int(stats.total_input + stats.total_output_bytes + stats.total_param_bytes)


def memtracker(workload: ModuleType, batch: int, fake: bool) -> int:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode() if fake else contextlib.nullcontext():
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        model, optimizer = workload.model_and_optimizer()
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        peak = 0
        with tracker:
            for _ in range(2):
                x, y = workload.make_batch(batch, g)
                optimizer.zero_grad(set_to_none=True)
                workload.loss_of(model, x, y).backward()
                optimizer.step()
                peak = max(peak, sum(per["Total"] for per in tracker.get_tracker_snapshot("peak").values()))
                tracker.reset_mod_stats()  # MemTracker refuses a second forward of a module without it
    return peak


def accelerate_step(workload: ModuleType, batch: int) -> int:
    import torch

    with torch.device("meta"):
        model, _ = workload.model_and_optimizer()
    try:
        from accelerate.commands.estimate import estimate_training_usage
        from accelerate.utils import calculate_maximum_sizes
    except ImportError:  # the same rule by hand: weights, gradients and 2 Adam states, fp32
        return 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    size, _ = calculate_maximum_sizes(model)
    return int(estimate_training_usage(size, "float32")["step"])


def timed(fn: Callable[..., int], *args: Any, **kwargs: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        figure: dict[str, Any] = {"bytes": fn(*args, **kwargs)}
    except ImportError as exc:
        figure = {"error": "not installed", "detail": str(exc)}
    except Exception as exc:  # an estimator that fails is a result of the benchmark, not its end
        figure = {"error": f"failed: {type(exc).__name__}", "detail": str(exc)[:300]}
    figure["wall_s"] = time.perf_counter() - started
    return figure


def guarded(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    try:
        return fn(*args)
    except Exception as exc:
        return {"error": f"failed: {type(exc).__name__}", "detail": str(exc)[:400]}


def pct(value: float) -> str:
    return f"{value:+.4f}%" if abs(value) < 0.01 else f"{value:+.3f}%" if abs(value) < 1 else f"{value:+.1f}%"


def mib(n: int) -> str:
    return f"{n / MIB:.2f} MiB"


def profiled_peak(name: str, batch: int, top: int) -> None:
    """The workload's 2 steps under torch.profiler(profile_memory=True): the allocations live at the allocator's peak,
    largest first, each with the ops that were running when it was made (outermost aten op with its input shapes,
    then the innermost ones). Printed as JSON lines for --explain (run in a child process of its own)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    workload = load(name)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
        model, optimizer = workload.model_and_optimizer()
        for _ in range(2):
            x, y = workload.make_batch(batch, g)
            optimizer.zero_grad(set_to_none=True)
            workload.loss_of(model, x, y).backward()
            optimizer.step()
    allocations: list[tuple[int, int, int, list[str]]] = []  # (time, address, bytes, ops running)

    def walk(node: Any, ops: list[str]) -> None:
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation":
            allocations.append((node.start_time_ns, fields.ptr, fields.alloc_size, ops))
        else:
            label = node.name
            if label.startswith("aten::") and not any(op.startswith("aten::") for op in ops):
                shapes = [tuple(i.sizes) for i in getattr(fields, "inputs", []) if hasattr(i, "sizes")]
                label += str([s for s in shapes if s])
            ops = [*ops, label]
        for child in node.children:
            walk(child, ops)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, [])
    allocations.sort(key=lambda a: a[0])
    live: dict[int, tuple[int, list[str]]] = {}
    held, peak, at_peak = 0, 0, {}
    for _, address, nbytes, ops in allocations:
        held += nbytes
        if nbytes > 0:
            live[address] = (nbytes, ops)
        else:
            live.pop(address, None)
        if held > peak:
            peak, at_peak = held, dict(live)
    print(json.dumps({"peak": peak}))
    for nbytes, ops in sorted(at_peak.values(), key=lambda v: -v[0])[:top]:
        outer = next((op for op in ops if op.startswith("aten::")), "-")
        inner = [op.split("[")[0] for op in ops[ops.index(outer) + 1:]] if outer != "-" else ops[-2:]
        print(json.dumps({"bytes": nbytes, "op": outer, "inside": " > ".join(inner[-3:])}))


def explain(name: str, batch: int, top: int = 12) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, __file__, "--profile-peak", name, str(batch), str(top)],
                          capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    if sys.argv[1:2] == ["--profile-peak"]:
        profiled_peak(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mlp,cnn,gpt,lstm")
    parser.add_argument("--batches", help="batch sizes for every workload (default: three per workload, "
                        + ", ".join(f"{w} {'/'.join(map(str, b))}" for w, b in BATCHES.items()) + ")")
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS for every run (default 1: 2 shared cores)")
    parser.add_argument("--json", help="also write every figure as JSON")
    parser.add_argument("--no-explain", action="store_true", help="do not profile the workloads torchdoctor "
                        "estimate misses by more than 2%% (the allocations live at the allocator's peak)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ["OMP_NUM_THREADS"] = args.threads
    started = time.time()
    import torch

    torch.set_num_threads(int(args.threads))
    for module in ("torchinfo", "accelerate.commands.estimate", "torch.distributed._tools.mem_tracker"):
        with contextlib.suppress(ImportError):  # imported once here: the wall times below leave imports out
            importlib.import_module(module)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, OMP_NUM_THREADS="
          f"{args.threads}, {time.strftime('%Y-%m-%d')}\n", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.workloads.split(","):
            script = WORKLOADS / f"{name}.py"
            workload = load(name)
            batches = [int(b) for b in args.batches.split(",")] if args.batches else BATCHES[name]
            for batch in batches:
                row: dict[str, Any] = {"workload": name, "batch": batch,
                                       "truth": guarded(truth, script, batch, work)}
                row["torchdoctor estimate"] = guarded(td_estimate, script, batch, work)
                row["torchinfo"] = timed(torchinfo_total, workload, batch)
                row["MemTracker (real)"] = timed(memtracker, workload, batch, fake=False)
                row["MemTracker (fake)"] = timed(memtracker, workload, batch, fake=True)
                row["accelerate (4 x params)"] = timed(accelerate_step, workload, batch)
                true_bytes = row["truth"].get("bytes")
                for key in ESTIMATORS:
                    if true_bytes and "bytes" in row[key]:
                        row[key]["error_pct"] = 100 * (row[key]["bytes"] - true_bytes) / true_bytes
                rows.append(row)
                print(f"  {name} {batch}: truth {true_bytes} · "
                      + " · ".join(f"{k} {row[k].get('bytes', row[k].get('error'))}" for k in ESTIMATORS),
                      file=sys.stderr, flush=True)

    def cell(figure: dict[str, Any]) -> str:
        if "bytes" not in figure:
            return figure.get("error", "-")
        if "error_pct" not in figure:
            return mib(figure["bytes"])
        return f"{mib(figure['bytes'])} ({pct(figure['error_pct'])})"

    print("Peak of the first 2 optimizer steps (error vs the allocator's peak)\n")
    print("| workload | batch | allocator peak (ci), bytes | phase | torchdoctor estimate, bytes | error | "
          + " | ".join(ESTIMATORS[1:]) + " |")
    print("|---|---:|---:|---|---:|---:|" + "---:|" * (len(ESTIMATORS) - 1))
    for row in rows:
        t, e = row["truth"], row["torchdoctor estimate"]
        print(f"| {row['workload']} | {row['batch']} | "
              + (f"{t['bytes']:,} | {t['phase']} | " if "bytes" in t else f"{t.get('error')} | - | ")
              + (f"{e['bytes']:,} | " + (pct(e["error_pct"]) if "error_pct" in e else "-") + " | "
                 if "bytes" in e else f"{e.get('error')} | - | ")
              + " | ".join(cell(row[k]) for k in ESTIMATORS[1:]) + " |")

    print("\nWall time, s (ci and estimate: the whole `torchdoctor` process; estimate's own figure in brackets; "
          "the others in this process)\n")
    print("| workload | batch | torchdoctor ci (truth) | " + " | ".join(ESTIMATORS) + " |")
    print("|---|---:|---:|" + "---:|" * len(ESTIMATORS))
    for row in rows:
        t, e = row["truth"], row["torchdoctor estimate"]
        est = f"{e['wall_s']:.2f} ({e['own_seconds']:.2f})" if "wall_s" in e else "-"
        print(f"| {row['workload']} | {row['batch']} | " + (f"{t['wall_s']:.2f}" if "wall_s" in t else "-")
              + f" | {est} | " + " | ".join(f"{row[k]['wall_s']:.2f}" for k in ESTIMATORS[1:]) + " |")

    print("\nSummary over the configurations each estimator gave a figure for\n")
    print("| estimator | configurations | mean abs. error | worst error | within 2% | mean wall s |")
    print("|---|---:|---:|---|---:|---:|")
    for key in ESTIMATORS:
        got = [row for row in rows if "error_pct" in row[key]]
        if not got:
            print(f"| {key} | 0 of {len(rows)} | - | - | - | - |")
            continue
        errors = [row[key]["error_pct"] for row in got]
        worst = max(got, key=lambda row: abs(row[key]["error_pct"]))
        walls = [row[key]["wall_s"] for row in got]
        print(f"| {key} | {len(got)} of {len(rows)} | {sum(map(abs, errors)) / len(errors):.2f}% | "
              f"{pct(worst[key]['error_pct'])} ({worst['workload']} {worst['batch']}) | "
              f"{sum(abs(x) <= 2 for x in errors)} | {sum(walls) / len(walls):.2f} |")

    off = [row for row in rows if abs(row["torchdoctor estimate"].get("error_pct", 0)) > 2]
    if off:
        print("\ntorchdoctor estimate more than 2% off: the peak's phase and kinds, allocator (ci) vs estimate\n")
        print("| workload | batch | phase peaks (ci / estimate) | kinds at the peak (ci / estimate), differing |")
        print("|---|---:|---|---|")
        for row in off:
            t, e = row["truth"], row["torchdoctor estimate"]
            phases = ", ".join(f"{p} {mib(t['by_phase'].get(p, 0))} / {mib(e['by_phase'].get(p, 0))}"
                               for p in t["by_phase"])
            kinds = ", ".join(f"{k} {mib(t['by_kind'].get(k, 0))} / {mib(e['by_kind'].get(k, 0))}"
                              for k in sorted(set(t["by_kind"]) | set(e["by_kind"]))
                              if abs(t["by_kind"].get(k, 0) - e["by_kind"].get(k, 0)) > MIB / 100)
            print(f"| {row['workload']} | {row['batch']} | {phases} | {kinds} |")

    for row in off if not args.no_explain else []:
        print(f"\n{row['workload']} {row['batch']}: the largest allocations live at the allocator's peak "
              "(torch.profiler, profile_memory=True; ops running when each was made)\n")
        print("| bytes | op (its input shapes) | made inside |")
        print("|---:|---|---|")
        try:
            lines = explain(row["workload"], row["batch"])
        except subprocess.CalledProcessError as exc:
            print(f"| - | profiling failed: {exc.stderr.strip()[-300:]} | |")
            continue
        row["explain"] = lines
        for line in lines[1:]:
            print(f"| {line['bytes']:,} | {line['op']} | {line['inside'] or '(the op itself)'} |")
        print(f"\nprofiler's peak: {lines[0]['peak']:,} bytes")

    failures = [(row["workload"], row["batch"], key, row[key]["detail"]) for row in rows
                for key in ("truth", *ESTIMATORS) if "detail" in row[key]]
    for workload_name, batch, key, detail in failures:
        print(f"\n{workload_name} {batch}, {key}: {detail}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "torch": torch.__version__}, indent=1))
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()

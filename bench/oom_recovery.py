"""OOM recovery compared: torchdoctor (ResilientStep in process, ``torchdoctor run --memory-budget`` on the
unmodified script) and accelerate's ``find_executable_batch_size``. (Not a test; run it by hand.)

    pip install accelerate                 # bench-only; not a torchdoctor dependency
    python bench/oom_recovery.py           # the three default cases (~5 min on 2 cores)
    python bench/oom_recovery.py --cases a:10MiB,late:12MiB --json results.json

Each case is a workload (bench/oom/workloads.py) and a CPU memory budget (exact tensor accounting raises
``torch.OutOfMemoryError`` at the allocation that would exceed it):

    a     MLP, DataLoader batch 1024, SGD+momentum, 2 epochs (16 steps): batch 1024 does not fit from step 1
    late  bag-of-vectors MLP, batch 256, 1 epoch (40 steps): one rare bag twice as long, in batch 31, does not fit

Every variant runs in a fresh process (bench/oom/inproc.py, or ``torchdoctor run``), one at a time:

    reference          the plain loop, no budget: the weights and step count every variant is compared with
    no-OOM timings     each tool with a 1 TiB budget (the accounting's cost, no OOM): the plain loop (what
                       accelerate runs when nothing fails), ResilientStep, ``torchdoctor run --memory-budget
                       1TiB``: what each run's wall time is compared with
    true largest       bisection of the plain loop's batch size under the budget
    accelerate as is   @find_executable_batch_size(starting_batch_size=B) on the training function, under
                       torchdoctor.agent.retry.memory_budget, unchanged
    accelerate         the same, with the budget's OOM message put in the CUDA format accelerate matches
                       (" out of memory."): what it would see from a real GPU
    ResilientStep      torchdoctor.ResilientStep(opt) around each step of the same loop, same budget; when it
                       gives up, also ResilientStep(opt, undo_partial_step=False) (no copy of the parameters
                       and optimizer state before optimizer.step: on the CPU that copy counts against the budget)
    torchdoctor run    ``python -m torchdoctor run -q --memory-budget SIZE bench/oom/train_script.py``; when it
                       gives up, also with ``--max-retries 6`` (default 3: at most 8 micro-batches)
    accumulation check ResilientStep(micro_batches=K) from step 1 with no OOM, K as torchdoctor run ended with:
                       how far gradient accumulation alone moves the weights from the reference

Columns: attempts (runs of the training function, tries of the failing step, or processes) until the
configuration that fits; the (micro-)batch size it trains with, and that size over the true largest fitting
batch; optimizer steps done in attempts that were thrown away; seconds from the first OOM to the next
optimizer step that completes, and to the moment training has again done as many samples as it had when
the first OOM hit, plus the failed batch (progress regained); whether the effective batch (samples per
optimizer step) is the script's; optimizer steps of the finished run over the reference's; the largest
relative weight difference from the reference (max over tensors of max|a-b| / max|a|); the run's wall
time (in process: the training function; torchdoctor run: all its attempts, interpreter start included) and,
in brackets, the same tool's run without an OOM (under a 1 TiB budget).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OOM_DIR = os.path.join(HERE, "oom")
INPROC = os.path.join(OOM_DIR, "inproc.py")
SCRIPT = os.path.join(OOM_DIR, "train_script.py")
sys.path.insert(0, OOM_DIR)

import torch  # noqa: E402
import workloads as w  # noqa: E402

DEFAULT_CASES = "a:10MiB,a:6MiB,late:12MiB"


def sh(cmd: list[str], cwd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TORCHDOCTOR_EVENTS", None)
    t0 = time.time()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    result.wall_s = time.time() - t0  # type: ignore[attr-defined]
    return result


def inproc(variant: str, scenario: str, work: str, name: str, budget: str | None = None,
           extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], str | None]:
    out, js = os.path.join(work, f"{name}.pt"), os.path.join(work, f"{name}.json")
    cmd = [sys.executable, INPROC, variant, "--scenario", scenario, "--json", js, "--out", out, *extra]
    if budget:
        cmd += ["--budget", budget]
    result = sh(cmd, cwd=work)
    if result.returncode != 0 or not os.path.exists(js):
        raise SystemExit(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    with open(js) as f:
        return json.load(f), out if os.path.exists(out) else None


# -- metrics from the step logs ---------------------------------------------------------------------------------
def from_log(log: dict[str, Any], first_batch: int) -> dict[str, Any]:
    """Seconds from the first OOM to the next completed step and to progress regained; steps thrown away."""
    steps, ooms = log["steps"], log["ooms"]
    final = max((s["attempt"] for s in steps), default=0)
    redone = sum(1 for s in steps if s["attempt"] != final)
    if not ooms:
        return {"to_next_step_s": None, "to_regained_s": None, "steps_redone": redone}
    first = ooms[0]
    after = [s for s in steps if s["t"] > first["t"]]
    target = first["samples_done"] + first_batch
    regained = [s for s in after if s["attempt"] == final and s["samples"] >= target]
    return {"to_next_step_s": after[0]["t"] - first["t"] if after else None,
            "to_regained_s": regained[0]["t"] - first["t"] if regained else None,
            "steps_redone": redone, "first_oom_after_steps": first["steps_done"]}


def torchdoctor_metrics(run_dir: str) -> dict[str, Any]:
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    events = [json.loads(line) for line in open(os.path.join(run_dir, "events.jsonl"))]
    attempt, samples, ooms = 0, [], []
    for e in events:
        if e["kind"] == "run_started":
            attempt = e.get("attempt", attempt + 1)
        elif e["kind"] == "memory_sample" and e.get("span") == "step":
            samples.append((attempt, e["step"], e["t"]))
        elif e["kind"] == "out_of_memory":
            ooms.append((attempt, e["step"], e["t"]))
    final = report["attempts"][-1]
    out: dict[str, Any] = {
        "attempts": len(report["attempts"]), "micro_batches": final["plan"].get("micro_batches") or 1,
        "micro_size": final["plan"].get("micro_size"),
        "launched": [a.get("launched") for a in report["attempts"]],
        "steps": report["steps"], "outcome": report["outcome"], "recovery": report["recovery"],
        "wall_s": sum(a["seconds"] for a in report["attempts"]),
        "steps_redone": sum(a["steps"] for a in report["attempts"][:-1]),
        "last_oom": final.get("oom"),
        "oom_steps": [(a["attempt"], (a.get("oom") or {}).get("step"), (a.get("oom") or {}).get("phase"))
                      for a in report["attempts"] if a["outcome"] == "oom"],
    }
    if ooms:
        oom_attempt, oom_step, t = ooms[0]  # ``step`` of an OOM: the step in progress (1-based)
        after = [s for s in samples if s[2] > t]
        regained = [s for s in after if s[0] == final["attempt"] and s[1] >= oom_step]
        out.update(to_next_step_s=after[0][2] - t if after else None,
                   to_regained_s=regained[0][2] - t if regained else None, first_oom_after_steps=oom_step - 1)
    return out


# -- one case ---------------------------------------------------------------------------------------------------
def run_case(scenario: str, budget: str, work: str, say: Any) -> dict[str, Any]:
    start = w.BATCH[scenario]
    rows: list[dict[str, Any]] = []
    say(f"[{scenario} @ {budget}] reference")
    ref, ref_pt = inproc("reference", scenario, work, "reference")
    ref_w = torch.load(ref_pt)
    bare = sh([sys.executable, SCRIPT, "--scenario", scenario, "--out", os.path.join(work, "bare.pt")], cwd=work)
    assert bare.returncode == 0, bare.stderr
    bare_diff = w.max_relative_difference(ref_w, torch.load(os.path.join(work, "bare.pt")))
    say(f"[{scenario} @ {budget}] no-OOM timings")
    fits, _ = inproc("reference", scenario, work, "reference-1TiB", "1TiB")
    td_fits_dir = os.path.join(work, "td-run-1TiB")
    td_fits = sh([sys.executable, "-m", "torchdoctor", "run", "-q", "--memory-budget", "1TiB", "--run-dir",
                  td_fits_dir, SCRIPT, "--scenario", scenario], cwd=work)
    assert td_fits.returncode == 0, td_fits.stderr
    td_fits_s = torchdoctor_metrics(td_fits_dir)["wall_s"]
    say(f"[{scenario} @ {budget}] true largest batch (bisection)")
    bis, _ = inproc("bisect", scenario, work, "bisect", budget)
    largest = bis["largest"]
    say(f"[{scenario} @ {budget}] true largest micro-batch with gradient accumulation (bisection)")
    bis_acc, _ = inproc("bisect", scenario, work, "bisect-accumulate", budget, ("--accumulate",))
    largest_accumulated = bis_acc["largest"]

    def diff(pt: str | None) -> float | None:
        return w.max_relative_difference(ref_w, torch.load(pt)) if pt else None

    say(f"[{scenario} @ {budget}] accelerate as is")
    asis, _ = inproc("accelerate", scenario, work, "accelerate-asis", budget, ("--as-is",))
    asis_error = asis["error"] and ('OOM not recognised (no " out of memory." in the budget\'s message), '
                                    'so re-raised at the first OOM')
    rows.append({"tool": "accelerate, as is", "attempts": len(asis["tried"]), "size": asis["found"],
                 "error": asis_error, **from_log(asis["log"], start), "steps": asis["steps"],
                 "effective_batch_kept": None, "diff": None, "wall_s": asis["wall_s"], "no_oom_s": fits["wall_s"]})

    say(f"[{scenario} @ {budget}] accelerate")
    acc, acc_pt = inproc("accelerate", scenario, work, "accelerate", budget)
    rows.append({"tool": "accelerate find_executable_batch_size", "attempts": len(acc["tried"]),
                 "size": acc["found"], "tried": acc["tried"], "error": acc["error"], **from_log(acc["log"], start),
                 "steps": acc["steps"], "effective_batch_kept": acc["found"] == start, "diff": diff(acc_pt),
                 "wall_s": acc["wall_s"], "no_oom_s": fits["wall_s"]})

    for no_undo in (False, True):
        name = "ResilientStep(undo_partial_step=False)" if no_undo else "ResilientStep"
        say(f"[{scenario} @ {budget}] {name}")
        flags = ("--no-undo",) if no_undo else ()
        tag = "resilient-no-undo" if no_undo else "resilient"
        res, res_pt = inproc("resilient", scenario, work, tag, budget, flags)
        res_fits, _ = inproc("resilient", scenario, work, f"{tag}-1TiB", "1TiB", flags)
        failed = res["error"] is not None
        rows.append({"tool": f"torchdoctor {name}", "attempts": 1 + len(res["history"]),
                     "size": None if failed else math.ceil(start / res["micro_batches"]),
                     "micro_batches": res["micro_batches"], "history": res["history"], "error": res["error"],
                     **from_log(res["log"], start), "steps": res["steps"],
                     "effective_batch_kept": None if failed else res["steps"] == ref["steps"],
                     "diff": diff(res_pt), "wall_s": res["wall_s"], "no_oom_s": res_fits["wall_s"]})
        if not failed:  # the variant without the undo snapshot is shown only when the default gives up
            break

    accumulation_check = None
    for max_retries in (None, 6):
        label = "torchdoctor run" + (f" --max-retries {max_retries}" if max_retries else "")
        say(f"[{scenario} @ {budget}] {label}")
        tag = f"td-run-r{max_retries}" if max_retries else "td-run"
        run_dir, td_pt = os.path.join(work, tag), os.path.join(work, f"{tag}.pt")
        td = sh([sys.executable, "-m", "torchdoctor", "run", "-q", "--memory-budget", budget, "--run-dir", run_dir,
                 *(["--max-retries", str(max_retries)] if max_retries else []),
                 SCRIPT, "--scenario", scenario, "--out", td_pt], cwd=work)
        m = torchdoctor_metrics(run_dir)
        ok = td.returncode == 0
        error = None
        if not ok:
            last = m["last_oom"] or {}
            error = (f"gave up ({(m['recovery'] or {}).get('gave_up')}) at {m['micro_batches']} micro-batches of "
                     f"~{math.ceil(start / m['micro_batches'])}: OOM at step {last.get('step')} ({last.get('phase')})")
        retries = f" --max-retries {max_retries}" if max_retries else ""
        size = (m["micro_size"] or math.ceil(start / m["micro_batches"])) if ok else None
        rows.append({"tool": f"torchdoctor run --memory-budget{retries}",
                     "attempts": m["attempts"], "size": size, "launched": m["launched"],
                     "micro_batches": m["micro_batches"], "error": error,
                     "steps": m["steps"], "effective_batch_kept": (m["recovery"] or {}).get("effective_batch_kept"),
                     "diff": diff(td_pt if ok else None), "wall_s": m["wall_s"], "no_oom_s": td_fits_s,
                     "oom_steps": m["oom_steps"], "summary": td.stderr.strip().splitlines()[-2:],
                     **{k: m.get(k) for k in ("to_next_step_s", "to_regained_s", "steps_redone",
                                              "first_oom_after_steps")}})
        if ok and m["micro_batches"] > 1:
            # gradient accumulation's own rounding: the same micro-batches from step 1, in process, no OOM
            say(f"[{scenario} @ {budget}] accumulation check")
            _, acc_check_pt = inproc("resilient", scenario, work, "accumulation-check", "1TiB",
                                     ("--micro-batches", str(m["micro_batches"])))
            check_w = torch.load(acc_check_pt)
            accumulation_check = {"micro_batches": m["micro_batches"],
                                  "vs_reference": w.max_relative_difference(ref_w, check_w),
                                  "vs_torchdoctor_run": w.max_relative_difference(check_w, torch.load(td_pt))}
        if ok:  # the run with more retries is shown only when the default gives up
            break
    for row in rows:
        row["fraction"] = row["size"] / largest if row.get("size") and largest else None
        accumulates = row["tool"].startswith("torchdoctor") and (row.get("micro_batches") or 1) > 1
        row["fraction_accumulated"] = (row["size"] / largest_accumulated
                                       if accumulates and row.get("size") and largest_accumulated else None)
    return {"scenario": scenario, "budget": budget, "start_batch": start, "reference": ref,
            "bare_script_vs_reference": bare_diff, "largest": largest, "bisection": bis, "rows": rows,
            "largest_accumulated": largest_accumulated, "bisection_accumulated": bis_acc,
            "accumulation_check": accumulation_check}


# -- the table --------------------------------------------------------------------------------------------------
def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    return format(v, spec)


def table(cases: list[dict[str, Any]]) -> str:
    head = ("| case | tool | attempts | (micro-)batch found | / true largest | / largest with accumulation "
            "| steps redone | s: OOM → next step | s: OOM → progress regained | effective batch kept "
            "| optimizer steps (ref) | max rel. diff vs ref | run s (no OOM) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cases:
        label = (f"{c['scenario']} @ {c['budget']}: batch {c['start_batch']}, true largest {c['largest']} "
                 f"({c.get('largest_accumulated')} with accumulation)")
        ref = c["reference"]
        for i, r in enumerate(c["rows"]):
            case = label if i == 0 else ""
            if r["error"] and r["size"] is None:
                error = r["error"] if len(r["error"]) <= 130 else r["error"][:130] + "…"
                lines.append(f"| {case} | {r['tool']} | {r['attempts']} | failed: {error} | – | – | "
                             f"{r['steps_redone']} | – | – | – | – | – | {fmt(r['wall_s'], '.1f')} "
                             f"({r['no_oom_s']:.1f}) |")
                continue
            size = str(r["size"])
            if r.get("micro_batches"):
                size = f"{r['size']} ({r['micro_batches']} × micro)" if r["micro_batches"] > 1 else f"{r['size']}"
            lines.append(
                f"| {case} | {r['tool']} | {r['attempts']} | {size} | {fmt(r['fraction'], '.2f')} | "
                f"{fmt(r.get('fraction_accumulated'), '.2f')} | {r['steps_redone']} | {fmt(r.get('to_next_step_s'), '.2f')} | {fmt(r.get('to_regained_s'), '.2f')} "
                f"| {fmt(r['effective_batch_kept'])} | {r['steps']} ({ref['steps']}) | {fmt(r['diff'], '.1e')} | "
                f"{fmt(r['wall_s'], '.1f')} ({r['no_oom_s']:.1f}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"scenario:budget,... (default {DEFAULT_CASES})")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--keep", help="keep the runs' files in this folder")
    args = p.parse_args()
    try:
        import accelerate
    except ImportError:
        raise SystemExit("accelerate is not installed: pip install accelerate (a bench-only dependency)") from None
    work_root = args.keep or tempfile.mkdtemp(prefix="torchdoctor-oom-bench-")
    os.makedirs(work_root, exist_ok=True)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.time()
    load_before = os.getloadavg()[0]
    cases = []
    for i, spec in enumerate(args.cases.split(",")):
        scenario, budget = spec.split(":")
        work = os.path.join(work_root, f"{i}-{scenario}-{budget}")
        os.makedirs(work, exist_ok=True)
        cases.append(run_case(scenario, budget, work, say))
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, torch {torch.__version__}, accelerate {accelerate.__version__}, "
               f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"machine: {machine}; {time.time() - t0:.0f} s in all\n")
    print(table(cases))
    print()
    for c in cases:
        acc = next(r for r in c["rows"] if r["tool"].startswith("accelerate find"))
        print(f"{c['scenario']} @ {c['budget']}: accelerate tried {acc.get('tried')}; bisection probes "
              f"{[(p['batch'], p['fits']) for p in c['bisection']['probes']]}, full run at {c['largest']} "
              f"fits: {c['bisection'].get('verified_full_run')}; bare script vs in-process reference: "
              f"{c['bare_script_vs_reference']:.1e}")
        for r in c["rows"]:
            if r.get("first_oom_after_steps") is not None:
                print(f"    {r['tool']}: first OOM after {r['first_oom_after_steps']} completed steps")
            if r.get("oom_steps"):
                print(f"    {r['tool']}: OOMs (attempt, step, phase) {r['oom_steps']}")
        if c["accumulation_check"]:
            a = c["accumulation_check"]
            print(f"    gradient accumulation alone (ResilientStep(micro_batches={a['micro_batches']}) from step 1, "
                  f"no OOM): {a['vs_reference']:.1e} from the reference, {a['vs_torchdoctor_run']:.1e} from "
                  f"torchdoctor run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "cases": cases}, f, indent=1, default=str)
    if not args.keep:
        import shutil
        shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    main()

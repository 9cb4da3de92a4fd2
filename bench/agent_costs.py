"""Where the agent's time goes: times torchdoctor's per-step hooks inside one training process.

    python bench/agent_costs.py                      # mlp, sampled, 300 steps
    python bench/agent_costs.py --model transformer --accounting exact

``bench/overhead.py`` compares whole runs, which on a busy machine is noisy; this script instead installs the
agent (``AgentSession`` with the real ``FileEmitter``, as ``torchdoctor run`` does) around the training loop of
``bench/train_bench.py`` in-process and wraps the agent's own functions with timers, so each piece's cost per
step is measured directly. The wrappers add about a microsecond per call. The figures are the cost on the
training thread: the event-writer thread's work (JSON encoding, the write) runs beside it, and shows here only
where it holds the GIL the training thread waits for (inside "sink.emit").

This reaches into torchdoctor's internals (names of private methods); a piece it cannot find is skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import torch  # noqa: E402
from train_bench import MODELS  # noqa: E402

# (label, path from the session object, method name); nesting shown by indentation.
PIECES = [
    ("optimizer pre-hook (_step_pre)", "", "_step_pre"),
    ("optimizer post-hook (_step_post)", "", "_step_post"),
    ("  sample (_sample)", "", "_sample"),
    ("    RSS read (psutil memory_info)", "_process", "memory_info"),
    ("    CUDA counters", "_cuda", "read"),
    ("  emit (FileEmitter.emit)", "sink", "emit"),
    ("  schedule.record", "schedule", "record"),
    ("  open window (_start_measuring)", "", "_start_measuring"),
    ("    census (gc.get_objects scan)", "", "_census"),
    ("  close window (_stop_measuring)", "", "_stop_measuring"),
    ("  accountant.reset_span", "accountant", "reset_span"),
    ("phase changes (phases.set)", "phases", "set"),
    ("doctor: before a step", "doctor", "before_step"),
    ("doctor: before a backward", "doctor", "before_backward"),
    ("doctor: before a zero_grad", "doctor.gradients", "before_reset"),
    ("doctor: after a zero_grad", "doctor", "zero_grad"),
    ("doctor: a DataLoader pass starts", "doctor", "pass_opened"),
    ("doctor: gradient clipping", "doctor.params", "clipping"),
    ("before a backward (training figures, loss reduction, scaling)", "phases", "transform_backward"),
    ("  training figures: the backward", "ledger", "backward"),
    ("a batch delivered (training figures)", "recovery.loaders", "on_batch"),
    ("training figures: a step", "ledger", "stepped"),
]
DOCTOR = [label for label, path, _ in PIECES if path.startswith("doctor")]


def _wrap(owner: Any, name: str, record: Callable[[float], None]) -> bool:
    original = getattr(owner, name, None)
    if original is None or not callable(original):
        return False

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            record(time.perf_counter() - began)

    try:
        setattr(owner, name, timed)
    except (AttributeError, TypeError):
        return False
    return True


def _thread_cpu(native_id: int | None) -> float | None:
    """CPU seconds a thread of this process has run (Linux, from /proc); None where it cannot be read."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", encoding="ascii") as handle:
            return int(handle.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def train(model: torch.nn.Module, data: list[Any], loss_fn: Any, optimizer: torch.optim.Optimizer,
          steps: int) -> list[float]:
    """``steps`` steps over a DataLoader of the bench batches: a pass ("epoch") every len(data) steps."""
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    times: list[float] = []
    while len(times) < steps:
        for x, y in loader:
            if len(times) == steps:
                break
            times.append(_step(model, x, y, loss_fn, optimizer))
    return times


def _step(model: torch.nn.Module, x: Any, y: Any, loss_fn: Any, optimizer: torch.optim.Optimizer) -> float:
    began = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--accounting", choices=("sampled", "exact", "off"), default="sampled")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from torchdoctor.agent.emitter import FileEmitter
    from torchdoctor.agent.session import AgentSession
    from torchdoctor.config import AgentSettings

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, data, loss_fn = MODELS[args.model](16, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bare = train(model, data, loss_fn, optimizer, args.steps // 2)  # also warms up
    bare_ms = statistics.median(bare[args.warmup:]) * 1e3

    workdir = tempfile.mkdtemp(prefix="torchdoctor-costs-")
    sink = FileEmitter(os.path.join(workdir, "events.jsonl"))
    session = AgentSession(AgentSettings(accounting=args.accounting), sink)
    costs: dict[str, list[float]] = {}
    for label, path, name in PIECES:
        owner: Any = session
        for part in filter(None, path.split(".")):
            owner = getattr(owner, part, None)
        if owner is not None and _wrap(owner, name, costs.setdefault(label, []).append):
            continue
        costs.pop(label, None)
    writer = getattr(getattr(sink, "_thread", None), "native_id", None)
    session.start()
    writer_began = _thread_cpu(writer)
    try:
        times = train(model, data, loss_fn, optimizer, args.steps)
        writer_cpu = None if writer_began is None else (_thread_cpu(writer) or 0.0) - writer_began
    finally:
        import inspect

        # finish() has taken (exit_code, exception) in some versions of the agent and nothing in others.
        session.finish(*([0, None] if len(inspect.signature(session.finish).parameters) >= 2 else []))
        sink.close()
    step_ms = statistics.median(times[args.warmup:]) * 1e3
    mean_ms = statistics.fmean(times[args.warmup:]) * 1e3

    print(f"{args.model}, --accounting {args.accounting}, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(f"step time: bare median {bare_ms:.2f} ms (first {args.steps // 2} steps, no agent); with the agent "
          f"median {step_ms:.2f} ms, mean {mean_ms:.2f} ms")
    print()
    header = f"{'piece':<36} {'calls':>6} {'median us':>10} {'% of step':>10} {'total ms':>9} {'max ms':>8}"
    print(header)
    print("-" * len(header))
    for label, _, _ in PIECES:
        values = costs.get(label)
        if not values:
            continue
        median_us = statistics.median(values) * 1e6
        print(f"{label:<36} {len(values):>6} {median_us:>10.1f} {median_us / 10 / step_ms:>9.2f}% "
              f"{sum(values) * 1e3:>9.2f} {max(values) * 1e3:>8.2f}")
    def median_us(label: str) -> float:
        values = costs.get(label)
        return statistics.median(values) * 1e6 if values else 0.0

    plain = median_us("optimizer pre-hook (_step_pre)") + median_us("optimizer post-hook (_step_post)")
    backward = 2 * median_us("phase changes (phases.set)")  # the backward wrapper: "backward", then "other"
    print(f"\na plain step (median): hooks {plain:.0f} us + backward wrapper ~{backward:.0f} us = "
          f"{(plain + backward) / 10 / step_ms:.2f}% of a median step")
    if writer_cpu is not None:
        print(f"event-writer thread (JSON encoding and writing, beside the training thread, mostly holding the "
              f"GIL): {writer_cpu / args.steps * 1e6:.0f} us CPU per step ({writer_cpu / args.steps * 1e5 / step_ms:.2f}% "
              f"of a median step)")
    doctor_total = sum(sum(costs.get(label, [])) for label in DOCTOR)
    print(f"doctor (training-loop checks): {doctor_total / args.steps * 1e6:.0f} us per step on average = "
          f"{doctor_total / args.steps * 1e5 / step_ms:.2f}% of a median step (the first {4} steps and every 50th "
          f"are watched in full)")
    census = costs.get("    census (gc.get_objects scan)", [])
    hooks_total = sum(sum(costs.get(label, [])) for label in
                      ("optimizer pre-hook (_step_pre)", "optimizer post-hook (_step_post)"))
    print(f"whole run: hooks {hooks_total * 1e3:.1f} ms over {args.steps} steps, of which {len(census)} census "
          f"scan(s) {sum(census) * 1e3:.1f} ms; in all {hooks_total / args.steps * 1e5 / step_ms:.2f}% of "
          f"{args.steps} median steps (exact accounting's own cost, inside every op of a measured step, is not "
          f"in these figures: it shows in the step time)")

if __name__ == "__main__":
    main()

"""One in-process variant of bench/oom_recovery.py, in a fresh process of its own (so that nothing a previous
variant left alive counts against the next one's budget). Writes a JSON result and the final weights.

    python bench/oom/inproc.py reference  --scenario a --json R.json --out W.pt [--budget 1TiB]
    python bench/oom/inproc.py bisect     --scenario a --budget 10MiB --json R.json [--accumulate]
    python bench/oom/inproc.py accelerate --scenario a --budget 10MiB --json R.json --out W.pt [--as-is]
    python bench/oom/inproc.py resilient  --scenario a --budget 10MiB --json R.json --out W.pt [--no-undo]
                                          [--micro-batches K]

Times are wall-clock (``time.time()``); the moment of an OOM is taken when the budget raises it (the
accountant's ``on_budget_exceeded`` callback, just before ``torch.OutOfMemoryError`` is raised).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import workloads as w  # noqa: E402

from torchdoctor.agent.memory.live import live_tensor_bytes  # noqa: E402
from torchdoctor.agent.retry import ResilientStep, memory_budget  # noqa: E402


class Log:
    """What a variant did: every completed optimizer step (attempt, step, samples so far, time) and every OOM."""

    def __init__(self) -> None:
        self.attempt = 0
        self.steps: list[dict[str, Any]] = []
        self.ooms: list[dict[str, Any]] = []
        self.samples = 0

    def new_attempt(self) -> None:
        self.attempt += 1
        self.samples = 0

    def step(self, step: int, batch_len: int) -> None:
        self.samples += batch_len
        self.steps.append({"attempt": self.attempt, "step": step, "samples": self.samples, "t": w.now()})

    def oom(self, info: dict[str, Any]) -> None:
        done = [s for s in self.steps if s["attempt"] == self.attempt]
        self.ooms.append({"attempt": self.attempt, "t": w.now(), "steps_done": len(done),
                          "samples_done": done[-1]["samples"] if done else 0, "phase": info.get("phase"),
                          "message": info.get("message")})


def batch_len(batch: Any) -> int:
    return int(batch[-1].shape[0])  # the labels


def loop(scenario: str, batch_size: int, log: Log, resilient: dict[str, Any] | None = None,
         stop_after: int | None = None, holder: list[Any] | None = None) -> tuple[torch.nn.Module, int, Any]:
    """The user's training loop (workloads.train), written out so that each step is logged; with
    ``resilient`` (its keyword arguments), each step goes through ``ResilientStep`` as its docstring shows."""
    model, opt, loader = w.setup(scenario, batch_size)
    loss_fn = w.SCENARIOS[scenario]["loss"]
    step = ResilientStep(opt, **resilient) if resilient is not None else None
    if holder is not None:
        holder.append(step)
    steps = 0
    for _ in range(w.SCENARIOS[scenario]["epochs"]):
        for batch in loader:
            if step is None:
                opt.zero_grad()
                loss = loss_fn(model, batch)
                loss.backward()
                opt.step()
            else:
                step(lambda mb: loss_fn(model, mb), batch)
            steps += 1
            log.step(steps, batch_len(batch))
            if stop_after is not None and steps >= stop_after:
                return model, steps, step
    return model, steps, step


def with_budget(budget: str | None, log: Log):  # type: ignore[no-untyped-def]
    if budget is None:
        import contextlib
        return contextlib.nullcontext()
    cm = memory_budget(budget)

    class Hooked:
        def __enter__(self) -> Any:
            accountant = cm.__enter__()
            accountant.on_budget_exceeded = log.oom
            return accountant

        def __exit__(self, *exc: Any) -> Any:
            return cm.__exit__(*exc)

    return Hooked()


# -- variants ---------------------------------------------------------------------------------------------------
def reference(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The plain loop; with ``--budget`` (a budget it fits in), its time includes the accounting's cost."""
    log = Log()
    log.new_attempt()
    t0 = w.now()
    with with_budget(args.budget, log):
        model, steps, _ = loop(args.scenario, w.BATCH[args.scenario], log)
    return {"steps": steps, "batch": w.BATCH[args.scenario], "wall_s": w.now() - t0, "log": log.__dict__}, model


def probe(scenario: str, batch_size: int, log: Log) -> None:
    """The plain loop's memory at ``batch_size``, quickly: steps 1-3 (from step 2 on, the momentum buffers are
    held) and, in scenario late, the batch that holds the long bag, the largest of the run; the batches in
    between are loaded but not trained on (memory depends on shapes only; the weights are not used)."""
    model, opt, loader = w.setup(scenario, batch_size)
    loss_fn = w.SCENARIOS[scenario]["loss"]
    for i, batch in enumerate(loader, 1):
        largest = scenario == "late" and batch[0].shape[1] > w.BAG_LEN
        if i <= 3 or largest:
            opt.zero_grad()
            loss_fn(model, batch).backward()
            opt.step()
            log.step(i, batch_len(batch))
        if i >= 3 and (scenario == "a" or largest):
            return
    raise AssertionError("the largest batch was not found")


def probe_accumulated(scenario: str, batch_size: int, micro: int, log: Log) -> None:
    """The memory of micro-batches of ``micro`` samples (the rest last) with gradient accumulation over each batch of
    ``batch_size``, as ``torchdoctor run`` makes them: the DataLoader collates the micro-batches themselves
    (torchdoctor's MicroBatchSampler); steps 1-3 (scenario a) or the whole epoch (late: the long bag's batch)."""
    from torchdoctor.agent.recovery.micro_batches import MicroBatchSampler, split_sizes

    model, opt, loader = w.setup(scenario, batch_size)
    sampler = MicroBatchSampler(loader.batch_sampler, len(split_sizes(batch_size, 1, micro)), size=micro)
    object.__setattr__(loader, "batch_sampler", sampler)
    loss_fn = w.SCENARIOS[scenario]["loss"]
    steps = 0
    for chunk in loader:
        info = sampler.pending.popleft()
        if info.index == 0:
            opt.zero_grad()
        (loss_fn(model, chunk) * info.weight).backward()
        if info.last:
            opt.step()
            steps += 1
            log.step(steps, batch_len(chunk))
            if scenario == "a" and steps >= 3:
                return


def bisect(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The largest batch size with which the plain loop fits the budget: bisection over [1, start] (fitting is
    monotonic in the batch size here), each size probed in a fresh budget (``probe``)."""
    start = w.BATCH[args.scenario]
    probes: list[dict[str, Any]] = []

    def fits(b: int) -> bool:
        gc.collect()
        before = sum(live_tensor_bytes().values())
        log = Log()
        log.new_attempt()
        ok = True
        try:
            with with_budget(args.budget, log):
                if args.accumulate:
                    probe_accumulated(args.scenario, start, b, log)
                else:
                    probe(args.scenario, b, log)
        except torch.OutOfMemoryError:
            ok = False
        gc.collect()
        probes.append({"batch": b, "fits": ok, "steps_run": len(log.steps), "live_bytes_before": before})
        return ok

    if fits(start):
        return {"largest": start, "at_least": True, "probes": probes}, None
    lo, hi = 0, start  # lo fits (0: nothing known), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    verified = None
    if lo and not args.accumulate:  # the whole run at the size found, as a check of the probes
        log = Log()
        log.new_attempt()
        gc.collect()
        try:
            with with_budget(args.budget, log):
                loop(args.scenario, lo, log)
            verified = True
        except torch.OutOfMemoryError:
            verified = False
    return {"largest": lo, "at_least": False, "verified_full_run": verified, "probes": probes}, None


def accelerate(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """accelerate's documented usage: the training function takes the batch size first, builds its model,
    optimizer and DataLoader inside, and is decorated with ``find_executable_batch_size``."""
    import accelerate
    from accelerate.utils import find_executable_batch_size

    log = Log()
    tried: list[int] = []

    def as_gpu_message(fn):  # type: ignore[no-untyped-def]
        """Re-raise a budget OOM with the message a CUDA device gives ("CUDA out of memory. Tried to ..."):
        accelerate's should_reduce_batch_size looks for " out of memory." in the message, and the budget's
        "CPU out of memory (torchdoctor memory budget). Tried ..." does not contain it."""
        import functools

        @functools.wraps(fn)
        def inner(batch_size: int) -> Any:
            error = None
            try:
                return fn(batch_size)
            except torch.OutOfMemoryError as exc:
                error = torch.OutOfMemoryError(str(exc).replace(" (torchdoctor memory budget).", "."))
            raise error  # outside the except block: the failed attempt's frames are not chained to it

        return inner

    def training_function(batch_size: int) -> Any:
        tried.append(batch_size)
        log.new_attempt()
        model, steps, _ = loop(args.scenario, batch_size, log)
        return model, steps, batch_size

    fn = training_function if args.as_is else as_gpu_message(training_function)
    # what ``@find_executable_batch_size(starting_batch_size=B)`` above ``def training_function`` does
    decorated = find_executable_batch_size(fn, starting_batch_size=w.BATCH[args.scenario])
    t0 = w.now()
    error = None
    model = None
    try:
        with with_budget(args.budget, log):
            model, steps, found = decorated()
    except Exception as exc:  # noqa: BLE001 - recorded: the as-is run ends here
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        steps, found = None, None
        traceback.print_exc()
    return {"tool": f"accelerate {accelerate.__version__}", "as_is": args.as_is, "tried": tried, "found": found,
            "steps": steps, "error": error, "wall_s": w.now() - t0, "log": log.__dict__}, model


def resilient(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    log = Log()
    log.new_attempt()
    holder: list[ResilientStep] = []
    options: dict[str, Any] = {"undo_partial_step": False} if args.no_undo else {}
    if args.micro_batches:
        options["micro_batches"] = args.micro_batches
    t0 = w.now()
    model, steps, error = None, None, None
    try:
        with with_budget(args.budget, log):
            model, steps, _ = loop(args.scenario, w.BATCH[args.scenario], log, resilient=options, holder=holder)
    except torch.OutOfMemoryError as exc:  # ResilientStep gave up: recorded
        notes = " ".join(getattr(exc, "__notes__", []))
        error = f"{type(exc).__name__} in {_where(exc)}" + (f"; {notes}" if notes else " (outside ResilientStep)")
        traceback.print_exc()
    step = holder[0]
    history = [{"change": r.change, "leaked_bytes": r.leaked_bytes, "message": r.message[:120]}
               for r in step.history]
    return {"options": options, "steps": steps, "micro_batches": step.micro_batches, "history": history,
            "error": error, "wall_s": w.now() - t0, "log": log.__dict__}, model


def _where(exc: BaseException) -> str:
    """The innermost frame of the user's and torch's code that raised (``file:function``)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "torchdoctor" not in f.filename
              and "_compile.py" not in f.filename and "eval_frame.py" not in f.filename]
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].name}" if frames else "?"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variant", choices=["reference", "bisect", "accelerate", "resilient"])
    p.add_argument("--scenario", choices=sorted(w.SCENARIOS), required=True)
    p.add_argument("--budget")
    p.add_argument("--as-is", action="store_true", help="accelerate without the message adaptation")
    p.add_argument("--no-undo", action="store_true", help="ResilientStep(undo_partial_step=False)")
    p.add_argument("--micro-batches", type=int, help="ResilientStep(micro_batches=N) from the first step")
    p.add_argument("--accumulate", action="store_true",
                   help="bisect: the largest micro-batch with gradient accumulation over the whole batch")
    p.add_argument("--json", required=True)
    p.add_argument("--out")
    args = p.parse_args()
    result, model = globals()[args.variant](args)
    if args.out and model is not None:
        torch.save(w.weights(model), args.out)
    with open(args.json, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()

"""What to do after a failed attempt: pure decisions on plain data (no torch, no processes).

Each remedy is tried only where it can act on the phase that ran out of memory, and only where it keeps the
training the script asked for, or, for mixed precision, after every exact remedy (unless ``--remedies`` orders it
otherwise). The default order (``plan.REMEDIES``): evaluation without autograd, evaluation batches split, the
optimizer's single-tensor path, activation checkpointing, micro-batches with gradient accumulation (the script's
own accumulation setting first), saved activations offloaded to host memory (CUDA), mixed precision. Every remedy
passed over is listed with the reason, so the report says why each was or was not tried. What the failed attempt
measured (``TrainingFigures``: its optimizers, loop, settings, BatchNorm layers, blocks) decides where splitting
batches would change the training: manual parameter updates, optimizer closures (LBFGS), BatchNorm (unless
allowed), loops that stop by their own count.
"""

from __future__ import annotations

from typing import Any

from torchdoctor.plan import Plan
from torchdoctor.supervisor.recovery_types import (  # noqa: F401 - the planner's inputs, imported from here
    Decision,
    Failure,
    FailureFacts,
    LoaderInfo,
    RecoveryOptions,
)
from torchdoctor.supervisor.remedy_tries import TRIES


def next_plan(plan: Plan, failure: Failure, options: RecoveryOptions, previous: Failure | None = None) -> Decision:
    """The plan of the next attempt, or why there is none. ``previous``: the failure the last remedy answered
    (when this attempt failed otherwise with it, the remedy is undone and the next one tried for that one)."""
    if failure.kind == "resume-abandoned":
        new = plan.next_attempt(resume_from=None, applied=plan.applied + ("restart",))
        return Decision(new, "restart", "relaunching from the beginning, as it was")
    broken = _broken_remedy(plan, failure, previous)
    if broken is not None:
        return _undo(plan, failure, previous, options, broken)  # type: ignore[arg-type]
    if failure.kind not in ("oom", "host-kill"):
        return Decision(None, None, "not an out-of-memory failure: its exit code is passed through")
    if plan.attempt > options.max_retries:
        return Decision(None, None, f"--max-retries {options.max_retries} reached")
    if failure.kind == "host-kill":
        return _after_host_kill(plan, failure, options)
    facts = FailureFacts(failure)
    passed: list[str] = []
    for remedy in options.remedies:
        if remedy in plan.excluded:
            passed.append(f"{remedy}: undone earlier (the script failed with it)")
            continue
        found = TRIES[remedy](plan, failure, facts, options)
        if isinstance(found, Decision):
            return Decision(found.plan, found.remedy, found.reason, found.changes, tuple(passed))
        passed.append(f"{remedy}: {found}")
    return Decision(None, None, "no remedy acts on this OOM: " + "; ".join(passed), passed_over=tuple(passed))


def _broken_remedy(plan: Plan, failure: Failure, previous: Failure | None) -> str | None:
    """The remedy the last attempt added, when that attempt failed in another way than running out of memory."""
    if failure.kind == "eval-needs-grad" and plan.eval_no_grad:
        return "eval-no-grad"
    if failure.kind != "other" or previous is None or not plan.applied:
        return None
    last = plan.applied[-1]
    return last if last in TRIES and last not in plan.excluded else None


UNDO: dict[str, dict[str, Any]] = {
        "eval-no-grad": {"eval_no_grad": False}, "eval-split": {"eval_loaders": (), "eval_parts": 1},
        "optimizer-foreach": {"foreach_off": False}, "checkpoint": {"checkpoint": False},
        "offload": {"offload": False}, "amp": {"amp": None},
        "micro-batch": {"micro_batches": 1, "micro_size": None, "train_loaders": (), "batch_arg": None,
                        "batch_arg_size": None, "accumulation": "torchdoctor", "accumulation_arg": None,
                        "accumulation_size": None, "framework": None, "keep_effective_batch": True}}
UNDO["smaller-batch"] = UNDO["micro-batch"]


def _undo(plan: Plan, failure: Failure, previous: Failure, options: RecoveryOptions, remedy: str) -> Decision:
    """Undo ``remedy``, which made the script fail, and answer the OOM it was meant for with the next one."""
    what = (failure.message or "it failed").splitlines()[0][:160]
    undone = Plan(**{**plan.to_dict(), **UNDO[remedy], "attempt": plan.attempt,
                     "applied": plan.applied + (f"undo {remedy}",), "excluded": plan.excluded + (remedy,)})
    if remedy == "eval-no-grad":  # the script needs gradients in evaluation: it runs with autograd again
        return Decision(undone.next_attempt(), f"undo {remedy}", "the script needs gradients in eval mode; "
                        "evaluation runs with autograd again", {"remedies": tuple(r for r in options.remedies
                                                                                 if r != remedy)})
    if plan.attempt > options.max_retries:
        return Decision(None, None, f"{remedy} made the script fail ({what}); --max-retries {options.max_retries} "
                                    f"reached")
    decision = next_plan(undone, previous, options)
    why = f"{remedy} made the script fail ({what}): undone"
    if decision.plan is None:
        return Decision(None, None, f"{why}; {decision.reason}", passed_over=decision.passed_over)
    return Decision(decision.plan, decision.remedy, f"{why}; next: {decision.reason}", decision.changes,
                    decision.passed_over)


def _after_host_kill(plan: Plan, failure: Failure, options: RecoveryOptions) -> Decision:
    if failure.oom_killer is False:
        return Decision(plan.next_attempt(applied=plan.applied + ("relaunch",)), "relaunch",
                        "killed by SIGKILL, not by the kernel's OOM killer: relaunching as it was")
    if failure.has_workers and plan.host_workers_cap != 0:
        cap = 0 if plan.host_workers_cap is None else plan.host_workers_cap // 2
        new = plan.next_attempt(host_workers_cap=cap, applied=plan.applied + ("fewer-workers",))
        return Decision(new, "fewer-workers", f"host memory ran out (killed by the kernel): DataLoader workers "
                                              f"capped at {cap}")
    if "micro-batch" in options.remedies:
        split = TRIES["micro-batch"](plan, failure, FailureFacts(failure), options)
        if isinstance(split, Decision):
            return split
    return Decision(plan.next_attempt(applied=plan.applied + ("relaunch",)), "relaunch",
                    "killed by the kernel (host memory?): relaunching as it was")

"""What to do after a failed attempt: pure decisions on plain data (no torch, no processes).

Remedies that keep the training mathematically the same come first (no_grad for evaluation, micro-batches with
gradient accumulation); mixed precision, which changes the numerics, comes after them unless the user orders
it otherwise with ``--remedies``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchdoctor.plan import REMEDIES, Plan


@dataclass(frozen=True)
class RecoveryOptions:
    max_retries: int = 3
    min_batch_size: int = 1
    remedies: tuple[str, ...] = REMEDIES
    keep_effective_batch: bool = True
    batch_arg: str | None = None  # the script's batch-size option, named by the user


@dataclass(frozen=True)
class LoaderInfo:
    index: int
    batch_size: int | None
    training: bool


@dataclass(frozen=True)
class Failure:
    kind: str  # "oom" | "host-kill" | "eval-needs-grad" | "other"
    phase: str | None = None
    message: str = ""
    loaders: tuple[LoaderInfo, ...] = ()
    argument: tuple[str, int] | None = None  # (option, batch size) read from the script's command line
    has_workers: bool = False
    oom_killer: bool | None = None  # for a SIGKILL: whether the kernel's OOM killer fired (None: unknown)


@dataclass(frozen=True)
class Decision:
    plan: Plan | None  # None: stop here
    remedy: str | None
    reason: str
    changes: dict[str, object] = field(default_factory=dict)


def next_parts(current: int) -> int:
    """The next number of micro-batches per batch: 1, 2, 3, 5, 8, 12, 18, ... (x1.5, finer than halving, so the
    micro-batch found stays close to the largest that fits)."""
    return max(current + 1, -(-current * 3 // 2))


SPLITTABLE_PHASES = ("forward", "backward", None)  # None: the phase was not tracked when it failed


def _split(plan: Plan, failure: Failure, options: RecoveryOptions) -> Decision | None:
    if failure.phase not in SPLITTABLE_PHASES:
        return None  # an OOM in the optimizer step, or outside the training step: smaller batches cannot help
    parts = next_parts(plan.micro_batches)
    training = [lo for lo in failure.loaders if lo.training and lo.batch_size]
    if training:
        smallest = min(lo.batch_size for lo in training)  # type: ignore[type-var]
        micro = -(-smallest // parts)
        if micro < options.min_batch_size or parts > smallest:
            return None
        new = plan.next_attempt(micro_batches=parts, train_loaders=tuple(lo.index for lo in training),
                                keep_effective_batch=options.keep_effective_batch,
                                applied=plan.applied + ("micro-batch",))
        how = ("with gradient accumulation, so the effective batch stays " + str(smallest)
               if options.keep_effective_batch else "without accumulation (--no-keep-effective-batch)")
        return Decision(new, "micro-batch", f"split each batch of {smallest} into {parts} micro-batches of "
                                            f"~{micro} {how}")
    if failure.argument is not None:
        option, size = failure.argument
        while parts <= size and size % parts:  # the option takes a whole number: a divisor of the batch
            parts += 1
        if parts > size or size // parts < options.min_batch_size:
            return None
        new = plan.next_attempt(micro_batches=parts, batch_arg=option, batch_arg_size=size,
                                keep_effective_batch=options.keep_effective_batch,
                                applied=plan.applied + ("micro-batch",))
        return Decision(new, "micro-batch", f"pass {option} {size // parts} and accumulate {parts} micro-batches "
                                            f"per optimizer step (effective batch {size})")
    return None


def next_plan(plan: Plan, failure: Failure, options: RecoveryOptions) -> Decision:
    """The plan of the next attempt, or why there is none."""
    if failure.kind == "eval-needs-grad" and plan.eval_no_grad:
        new = plan.next_attempt(eval_no_grad=False, applied=plan.applied + ("undo eval-no-grad",))
        options_left = tuple(r for r in options.remedies if r != "eval-no-grad")
        return Decision(new, "undo eval-no-grad", "the script needs gradients in eval mode; evaluation runs with "
                                                  "autograd again", {"remedies": options_left})
    if failure.kind == "resume-abandoned":
        new = plan.next_attempt(resume_from=None, applied=plan.applied + ("restart",))
        return Decision(new, "restart", "relaunching from the beginning, as it was")
    if failure.kind not in ("oom", "host-kill"):
        return Decision(None, None, "not an out-of-memory failure: its exit code is passed through")
    if plan.attempt > options.max_retries:
        return Decision(None, None, f"--max-retries {options.max_retries} reached")
    if failure.kind == "host-kill":
        if failure.oom_killer is False:
            return Decision(plan.next_attempt(applied=plan.applied + ("relaunch",)), "relaunch",
                            "killed by SIGKILL, not by the kernel's OOM killer: relaunching as it was")
        if failure.has_workers and plan.host_workers_cap != 0:
            cap = 0 if plan.host_workers_cap is None else plan.host_workers_cap // 2
            new = plan.next_attempt(host_workers_cap=cap, applied=plan.applied + ("fewer-workers",))
            return Decision(new, "fewer-workers", f"host memory ran out (killed by the kernel): DataLoader workers "
                                                  f"capped at {cap}")
        split = _split(plan, failure, options) if "micro-batch" in options.remedies else None
        if split is not None:
            return split
        return Decision(plan.next_attempt(applied=plan.applied + ("relaunch",)), "relaunch",
                        "killed by the kernel (host memory?): relaunching as it was")
    cannot_split = ""
    for remedy in options.remedies:
        if remedy == "eval-no-grad" and failure.phase == "evaluation" and not plan.eval_no_grad:
            new = plan.next_attempt(eval_no_grad=True, applied=plan.applied + ("eval-no-grad",))
            return Decision(new, remedy, "the OOM was in evaluation: eval-mode forwards run under torch.no_grad(); "
                                         "training is untouched")
        if remedy == "micro-batch" and failure.phase != "evaluation":
            decision = _split(plan, failure, options)
            if decision is not None:
                return decision
            cannot_split = _why_no_split(plan, failure, options)
        if remedy == "amp" and plan.amp is None:
            new = plan.next_attempt(amp="bf16", applied=plan.applied + ("amp",))
            return Decision(new, remedy, cannot_split + "forwards run under autocast (bfloat16): this changes the "
                                                        "numerics")
    return Decision(None, None, cannot_split + "no remedy left")


def _why_no_split(plan: Plan, failure: Failure, options: RecoveryOptions) -> str:
    if failure.phase not in SPLITTABLE_PHASES:
        return f"the OOM was in the {failure.phase} phase, where smaller batches do not help; "
    if not [lo for lo in failure.loaders if lo.training and lo.batch_size] and failure.argument is None:
        return ("cannot change this script's batch (no DataLoader with a batch size fed backward, and no batch-size "
                "option was found: name it with --batch-arg); ")
    return f"batches cannot be split further (--min-batch-size {options.min_batch_size}); "

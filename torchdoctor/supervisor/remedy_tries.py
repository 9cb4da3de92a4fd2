"""One function per remedy: given the failed attempt, the next plan with that remedy applied (a ``Decision``), or
why the remedy does not apply here (a string the report lists). ``TRIES`` maps the names of ``plan.REMEDIES`` to them;
adding a remedy is a function here, its name in ``plan.REMEDIES`` and its agent side in ``agent/recovery/``."""

from __future__ import annotations

from typing import Any

from torchdoctor.plan import Plan, next_parts
from torchdoctor.supervisor.micro_batch_sizing import SPLITTABLE_PHASES, next_micro
from torchdoctor.supervisor.recovery_types import Decision, Failure, FailureFacts, RecoveryOptions


def _split_blockers(facts: FailureFacts, options: RecoveryOptions, own_accumulation: bool) -> str | None:
    """Why splitting the script's batches would change its training (None: it would not)."""
    if facts.closure and not own_accumulation:
        return ("an optimizer step takes a closure (LBFGS, or a framework's automatic optimization) that runs the "
                "forward and backward passes inside the step: torchdoctor cannot accumulate micro-batches across it")
    if facts.batchnorm and not options.allow_batchnorm_split:
        return ("the model has BatchNorm layers, which would normalise over micro-batches "
                "(--allow-batchnorm-split accepts that)")
    if facts.manual and not own_accumulation:
        return ("the script updates its parameters itself (no torch.optim optimizer), so torchdoctor cannot defer "
                "its updates to the end of a batch")
    return None


def _ready(plan: Plan, options: RecoveryOptions, remedy: str, **changes: Any) -> Plan:
    """The next attempt's plan: ``plan`` with ``changes`` and ``remedy`` noted as applied."""
    return plan.next_attempt(applied=plan.applied + (remedy,), **changes)


def _eval_no_grad(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions) -> Decision | str:
    if failure.phase != "evaluation":
        return "the OOM was not in evaluation"
    if plan.eval_no_grad:
        return "already on"
    if facts.oom.get("grad_enabled") is False:
        return "evaluation already ran under no_grad"
    return Decision(_ready(plan, options, "eval-no-grad", eval_no_grad=True), "eval-no-grad",
                    "the OOM was in evaluation: eval-mode forwards run under torch.no_grad(); training is untouched")


def _eval_split(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions) -> Decision | str:
    index = facts.oom.get("loader")
    loader = next((lo for lo in failure.loaders if lo.index == index and not lo.training), None)
    making = failure.phase == "data" and loader is not None  # an evaluation DataLoader making its batch
    if failure.phase != "evaluation" and not making:
        return "the OOM was not in evaluation"
    if (not making and facts.oom.get("grad_enabled") is not False and not plan.eval_no_grad
            and "eval-no-grad" in options.remedies):
        return "evaluation ran with autograd on: eval-no-grad first"
    if loader is None or not loader.batch_size:
        return "the evaluation's batches do not come from a DataLoader with a batch size"
    parts = next_parts(plan.eval_parts)
    if plan.eval_loaders and index not in plan.eval_loaders:
        parts = 2  # another evaluation loader than the one split so far
    if parts > loader.batch_size:
        return f"evaluation batches of {loader.batch_size} cannot be split further"
    micro = -(-loader.batch_size // parts)
    loaders = tuple(dict.fromkeys((*plan.eval_loaders, index)))
    return Decision(_ready(plan, options, "eval-split", eval_loaders=loaders, eval_parts=parts), "eval-split",
                    f"split the evaluation batches of {loader.batch_size} (DataLoader #{index}) into {parts} of "
                    f"~{micro}: each sample's outputs are the same; a metric the script averages per batch now "
                    f"averages over {parts} times as many, smaller batches")


def _optimizer_foreach(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions) -> Decision | str:
    if failure.phase != "optimizer":
        return "the OOM was not in optimizer.step"
    if plan.foreach_off:
        return "already on"
    if not facts.foreach:
        return "no optimizer uses the foreach implementation here (it is not the default on the CPU)"
    return Decision(_ready(plan, options, "optimizer-foreach", foreach_off=True), "optimizer-foreach",
                    "the OOM was in optimizer.step: optimizers take their single-tensor path (foreach=False), whose "
                    "temporaries are one parameter's size instead of all of them; the same update")


def _checkpoint(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions) -> Decision | str:
    if failure.phase not in SPLITTABLE_PHASES:
        return f"the OOM was in the {failure.phase} phase, where saved activations are not what fills memory"
    if plan.checkpoint:
        return "already on"
    if not facts.blocks:
        return "the model has no repeated blocks to checkpoint"
    blocks = f"{facts.blocks} block{'s' if facts.blocks != 1 else ''}"
    return Decision(_ready(plan, options, "checkpoint", checkpoint=True), "checkpoint",
                    f"activation checkpointing of the model's {blocks}: their activations are recomputed in "
                    f"backward instead of kept (the same values; about one more forward of compute); the loop is "
                    f"untouched")


def _micro_batch(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions) -> Decision | str:
    if failure.phase not in SPLITTABLE_PHASES and not _data_phase_of_training(failure):
        return f"the OOM was in the {failure.phase} phase, where smaller batches do not help"
    if plan.micro_batches > 1 and plan.accumulation == "script":
        return _script_knob(plan, failure, facts, options, plan.batch_arg or "", plan.batch_arg_size or 0)
    knob = _knob(facts)
    if plan.micro_batches == 1 and knob is not None:
        found = _script_knob(plan, failure, facts, options, *knob)
        if isinstance(found, Decision):
            return found
    why: list[str] = []
    if plan.micro_batches == 1 or plan.train_loaders:
        decision = _split_loaders(plan, failure, facts, options)
        if isinstance(decision, Decision):
            return decision
        why.append(decision)
    if plan.micro_batches == 1 or plan.batch_arg:
        decision = _split_argument(plan, failure, facts, options)
        if isinstance(decision, Decision):
            return decision
        why.append(decision)
    return "; ".join(dict.fromkeys(w for w in why if w))


def _knob(facts: FailureFacts) -> tuple[str, int] | None:
    """The script's batch-size setting, when it also has a gradient-accumulation setting to multiply."""
    batch, accumulation = facts.settings.get("batch"), facts.settings.get("accumulation")
    if batch and accumulation and batch.get("value") and accumulation.get("value"):
        return batch["name"], int(batch["value"])
    return None


def _script_knob(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions, option: str,
                 size: int) -> Decision | str:
    batch, accumulation = facts.settings.get("batch") or {}, facts.settings.get("accumulation") or {}
    if plan.accumulation == "script":
        size, steps = plan.batch_arg_size or size, plan.accumulation_size or 1
        via = plan.framework or "argument"
    else:
        steps, via = int(accumulation.get("value") or 1), batch.get("via", "argument")
    blocked = _split_blockers(facts, options, own_accumulation=True)
    if blocked:
        return blocked
    current = size // plan.micro_batches
    micro, _ = next_micro(size, current, failure, facts, divisor=True)  # equal: the script's scaling stays exact
    if micro >= current or micro < options.min_batch_size:
        return f"the batch of {size} cannot be divided further (--min-batch-size {options.min_batch_size})"
    parts = size // micro
    framework = via if via in ("hf", "lightning") else None
    loaders = plan.train_loaders
    if framework == "lightning":  # Lightning's batches come from the script's DataLoader: split it, ungated
        loaders = tuple(lo.index for lo in failure.loaders if lo.training and lo.batch_size) or loaders
    new = _ready(plan, options, "micro-batch", micro_batches=parts, accumulation="script",
                 batch_arg=None if framework else option, batch_arg_size=size, framework=framework,
                 accumulation_arg=None if framework else accumulation.get("name", plan.accumulation_arg),
                 accumulation_size=steps, train_loaders=loaders)
    name = accumulation.get("name") or plan.accumulation_arg or "its accumulation setting"
    return Decision(new, "micro-batch", f"the script's own gradient accumulation: batch {size} -> {size // parts} and "
                                        f"{name} {steps} -> {steps * parts}, so each optimizer step still sees "
                                        f"{size * steps} samples and the loop is the script's own")


def _split_loaders(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions,
                   smaller: bool = False) -> Decision | str:
    training = [lo for lo in failure.loaders if lo.training and lo.batch_size]
    if not training:
        return "no DataLoader with a batch size fed backward"
    if not smaller:
        blocked = _split_blockers(facts, options, own_accumulation=False)
        if blocked:
            return blocked
        for loader in training:
            endless = facts.endless(loader.index)
            if endless:
                return endless
    smallest = min(lo.batch_size or 0 for lo in training)  # every one has a batch size (filtered above)
    current = plan.micro_size or -(-smallest // plan.micro_batches)
    micro, chosen = next_micro(smallest, current, failure, facts, divisor=False)
    if micro < options.min_batch_size or current <= 1:
        return f"batches cannot be split further (--min-batch-size {options.min_batch_size})"
    parts = -(-smallest // micro)
    keep = options.keep_effective_batch and not smaller
    new = _ready(plan, options, "smaller-batch" if smaller else "micro-batch", micro_batches=parts, micro_size=micro,
                 train_loaders=tuple(lo.index for lo in training), keep_effective_batch=keep)
    how = ("with gradient accumulation, so each optimizer step still sees the whole batch" if keep else
           "without accumulation: each is a step of its own (the training changes; the report says how)" if smaller
           else "without accumulation (--no-keep-effective-batch)")
    rest = smallest - (parts - 1) * micro
    shape = f"{parts} micro-batches of {micro}" + (f" (the last {rest})" if rest != micro else "")
    return Decision(new, "smaller-batch" if smaller else "micro-batch",
                    f"split each batch of {smallest} into {shape} ({chosen}) {how}")


def _split_argument(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions,
                    smaller: bool = False) -> Decision | str:
    if failure.argument is None:
        return "no batch-size option was found (name it with --batch-arg)"
    if not smaller:
        blocked = _split_blockers(facts, options, own_accumulation=False)
        if blocked:
            return blocked
        if facts.loop.get("bound") == "count":
            return (f"the training loop ({facts.loop.get('header')}, {facts.loop.get('where')}) stops by its own "
                    f"count, which would count micro-batches")
    option, size = failure.argument
    if plan.batch_arg_size:
        size = plan.batch_arg_size
    current = size // plan.micro_batches
    micro, chosen = next_micro(size, current, failure, facts, divisor=True)
    if micro >= current or micro < options.min_batch_size:
        return f"the batch of {size} cannot be divided further (--min-batch-size {options.min_batch_size})"
    parts = size // micro
    keep = options.keep_effective_batch and not smaller
    new = _ready(plan, options, "smaller-batch" if smaller else "micro-batch", micro_batches=parts, batch_arg=option,
                 batch_arg_size=size, keep_effective_batch=keep)
    if smaller:
        return Decision(new, "smaller-batch", f"pass {option} {micro} instead of {size}, without accumulation: the "
                                              f"training changes (the report says how; {chosen})")
    return Decision(new, "micro-batch", f"pass {option} {micro} and accumulate {parts} micro-batches per optimizer "
                                        f"step (effective batch {size}; {chosen})")


def _smaller_batch(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions) -> Decision | str:
    """The last resort, after every remedy that keeps the training: smaller batches without accumulation, where
    micro-batches were refused (manual updates, BatchNorm, a counted loop, a closure). It changes the training,
    and the report says how (samples per step, steps, BatchNorm statistics), measured."""
    if failure.phase not in SPLITTABLE_PHASES and not _data_phase_of_training(failure):
        return f"the OOM was in the {failure.phase} phase, where smaller batches do not help"
    if plan.micro_batches > 1 and plan.keep_effective_batch:
        return "micro-batches with accumulation are on (they keep the training): more of them first"
    why = []
    for split in (_split_loaders, _split_argument):
        if split is _split_loaders and plan.batch_arg or split is _split_argument and plan.train_loaders:
            continue
        decision = split(plan, failure, facts, options, smaller=True)
        if isinstance(decision, Decision):
            return decision
        why.append(decision)
    return "; ".join(dict.fromkeys(why))


def _data_phase_of_training(failure: Failure) -> bool:
    """An OOM while a training DataLoader made a batch: smaller batches help there."""
    index = (failure.oom or {}).get("loader")
    return failure.phase == "data" and any(lo.index == index and lo.training for lo in failure.loaders)


def _offload(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions) -> Decision | str:
    if failure.phase not in SPLITTABLE_PHASES:
        return f"the OOM was in the {failure.phase} phase"
    if plan.offload:
        return "already on"
    if not str(facts.device).startswith("cuda"):
        return "saved activations are offloaded from a GPU to host memory; this run is not on a GPU"
    return Decision(_ready(plan, options, "offload", offload=True), "offload",
                    "saved activations of training forwards go to pinned host memory and come back for backward "
                    "(torch.autograd.graph.save_on_cpu): the same values, at the cost of the transfers")


def _amp(plan: Plan, failure: Failure, facts: FailureFacts, options: RecoveryOptions) -> Decision | str:
    if failure.phase not in SPLITTABLE_PHASES:
        return f"the OOM was in the {failure.phase} phase, where autocast of training forwards does not help"
    if plan.amp is not None:
        return "already on"
    return Decision(_ready(plan, options, "amp", amp="bf16"), "amp",
                    "forwards run under autocast (bfloat16): this changes the numerics")


TRIES = {"eval-no-grad": _eval_no_grad, "eval-split": _eval_split, "optimizer-foreach": _optimizer_foreach,
         "checkpoint": _checkpoint, "micro-batch": _micro_batch, "offload": _offload, "amp": _amp,
         "smaller-batch": _smaller_batch}

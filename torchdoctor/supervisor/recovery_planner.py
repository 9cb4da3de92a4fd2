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

from dataclasses import dataclass, field
from typing import Any

from torchdoctor.plan import REMEDIES, Plan, next_parts

ENDLESS_BATCHES = 1_000_000  # a pass this long is a sampler drawn from until the loop's own count stops it


@dataclass(frozen=True)
class RecoveryOptions:
    max_retries: int = 3
    min_batch_size: int = 1
    remedies: tuple[str, ...] = REMEDIES
    keep_effective_batch: bool = True
    batch_arg: str | None = None  # the script's batch-size option, named by the user
    allow_batchnorm_split: bool = False  # micro-batches may reach BatchNorm layers (their statistics change)


@dataclass(frozen=True)
class LoaderInfo:
    index: int
    batch_size: int | None
    training: bool


@dataclass(frozen=True)
class Failure:
    kind: str  # "oom" | "host-kill" | "eval-needs-grad" | "resume-abandoned" | "success" | "other"
    phase: str | None = None
    message: str = ""
    loaders: tuple[LoaderInfo, ...] = ()
    argument: tuple[str, int] | None = None  # (option, batch size) read from the script's command line
    has_workers: bool = False
    oom_killer: bool | None = None  # for a SIGKILL: whether the kernel's OOM killer fired (None: unknown)
    oom: dict[str, Any] | None = None  # the OutOfMemory event (device, loader, grad_enabled, figures)
    training: dict[str, Any] | None = None  # what the attempt measured of its training loop (TrainingFigures)
    step_peak: dict[str, Any] | None = None  # the largest tensor peak of a completed step on the OOM's device


@dataclass(frozen=True)
class Decision:
    plan: Plan | None  # None: stop here
    remedy: str | None
    reason: str
    changes: dict[str, object] = field(default_factory=dict)
    passed_over: tuple[str, ...] = ()  # "remedy: why it was not used" for the remedies before this one


SPLITTABLE_PHASES = ("forward", "backward", None)  # None: the phase was not tracked when it failed
# what grows with the batch: activations, kernels' buffers for them, and the batches themselves
SCALING = ("activations_saved", "activations_other", "inputs_data")
MARGIN = 0.95  # of the estimated largest micro-batch that fits: the estimate rests on the OOM's figures
# Optimizer state per parameter byte, for the state an optimizer makes at its first step (if the OOM came first).
STATE_PER_PARAM = {"Adam": 2, "AdamW": 2, "NAdam": 2, "RAdam": 2, "Adamax": 2, "Adadelta": 2, "Rprop": 2,
                   "SparseAdam": 2, "ASGD": 2, "Adagrad": 1, "RMSprop": 1, "SGD": 1}


def fitting_micro(current: int, failure: Failure, facts: Any, missed: bool = False) -> tuple[int, str] | None:
    """The largest micro-batch (samples) that should fit, and what it was estimated from, or None when the attempt
    did not measure enough (no capacity, no breakdown). Two estimates, the smaller wins:

    - from the OOM: the memory a step holds whatever its size (parameters, their gradients, the optimizer's state,
      and the one extra gradient accumulation makes when the OOM was that allocation, or once a split has run out
      too: ``missed``) and, per sample, the activations (and other tensors) held when it ran out: a lower bound of
      a step's need when it ran out mid-forward;
    - from the largest peak of a step the attempt completed with whole batches (the whole forward, backward and
      update, measured), per sample scaled by the input elements per sample of the batch that ran out against
      those of the completed steps (a batch padded to a longer sequence needs more per sample). Not once batches
      are split (``missed``): a micro-batch's peak then holds what does not shrink with it (the whole batch as
      delivered, accumulation's extra gradient), and bench/oom_recovery.py's 6 MiB case fell from 59 to 39."""
    oom = failure.oom or {}
    capacity, in_use, asked = oom.get("capacity_bytes"), oom.get("in_use_bytes"), oom.get("requested_bytes")
    breakdown = oom.get("breakdown") or {}
    if not capacity or in_use is None or not asked or not breakdown or current < 1:
        return None
    params = breakdown.get("parameters", 0)
    optimizers = (failure.training or {}).get("optimizers") or []
    state = max(breakdown.get("optimizer_state", 0),
                sum(STATE_PER_PARAM.get(o.get("name", ""), 2) for o in optimizers[:1]) * params)
    sizes = {n for o in optimizers for n in o.get("param_bytes") or []}
    # it ran out making a parameter's gradient (or a split sized like this already ran out): with accumulation one
    # is made before it is added to .grad, beside all the others, so the largest such gradient counts too
    extra = max(sizes) if sizes and (missed or (failure.phase == "backward" and asked in sizes)) else 0
    fixed = params + max(breakdown.get("gradients", 0), params) + state + extra
    # what scales with the batch: activations (and other tensors) held at the OOM, plus the tensor asked for when
    # the forward asked (in backward it may be a parameter's gradient, which does not scale; once a split has run
    # out too, an activation's gradient asked for in backward is counted as well: the conservative reading)
    grows = failure.phase == "forward" or (missed and failure.phase == "backward" and asked not in sizes)
    per_sample = (sum(breakdown.get(k, 0) for k in SCALING) + (asked if grows else 0)) / current
    estimates = []
    if per_sample > 0 and capacity > fixed:
        estimates.append((int((capacity - fixed) / per_sample * MARGIN), "estimated from the OOM's figures"))
    peak = failure.step_peak or {}
    at_peak = peak.get("breakdown") or {}
    ratio = _elements_ratio(failure.training or {})
    scaling = sum(at_peak.get(k, 0) for k in SCALING)
    if scaling and ratio is not None and not missed:
        fixed = at_peak.get("parameters", 0) + at_peak.get("gradients", 0) + state + extra
        per_sample = scaling / current * ratio
        if capacity > fixed:
            how = f"estimated from step {peak.get('step')}'s measured peak" + (
                f", scaled by {ratio:.3g}x the input elements per sample" if ratio != 1 else "")
            estimates.append((int((capacity - fixed) / per_sample * MARGIN), how))
    if not estimates:
        return None
    size, how = min(estimates)
    return max(1, size), how


def _elements_ratio(training: dict[str, Any]) -> float | None:
    """Input elements per sample of the step that ran out over those of the completed steps (1.0 when they were
    not counted), or None when the completed steps differ among themselves (their peak then says little)."""
    updates = training.get("updates") or []
    if not updates:
        return None
    samples, items = updates[0].get("samples") or {}, updates[0].get("items") or {}
    pairs = list(zip(sorted(int(k) for k in samples), sorted(int(k) for k in items)))
    if not pairs or len(samples) != len(items) or any(n < 1 for n, _ in pairs):
        return None
    per_sample = {round(k / n, 6) for n, k in pairs}
    pending = updates[0].get("pending") or {}
    if len(per_sample) != 1:
        return None
    done = per_sample.pop()
    if not done or not pending.get("samples") or not pending.get("items"):
        return 1.0
    return max(1.0, pending["items"] / pending["samples"] / done)


def _next_micro(batch: int, current: int, failure: Failure, facts: Any, divisor: bool) -> tuple[int, str]:
    """The next micro-batch size below ``current`` for batches of ``batch``: the estimate from the attempt's
    figures when it has one, else the next of 2, 3, 5, 8... parts; a divisor of ``batch`` when the micro-batches
    must be equal (the script's own scaling, or a batch option that takes one number)."""
    estimate, how = fitting_micro(current, failure, facts, missed=current < batch) or (None, "")
    if estimate is None or estimate >= current:
        estimate = -(-batch // next_parts(-(-batch // current)))
        how = "the next split"
    if divisor:
        estimate = max((d for d in range(1, estimate + 1) if batch % d == 0), default=1)
    return estimate, how


class _Facts:
    """What the failed attempt says about the script, read from its measured figures."""

    def __init__(self, failure: Failure) -> None:
        self.training = failure.training or {}
        self.oom = failure.oom or {}
        self.settings = self.training.get("settings") or {}
        updates = self.training.get("updates") or []
        optimizers = self.training.get("optimizers")
        self.manual = bool(updates and updates[0]["name"] == "manual updates") or (
            optimizers == [] and self.training.get("backwards", 0) > 0)
        self.closure = bool(self.training.get("closure"))
        self.batchnorm = bool((self.training.get("batchnorm") or {}).get("layers"))
        self.blocks = int(self.training.get("blocks") or 0)
        self.foreach = any(o.get("foreach") for o in optimizers or [])
        self.device = self.training.get("device") or self.oom.get("device") or ""
        self.loop = self.training.get("loop") or {}

    def endless(self, loader: int) -> str | None:
        """Why the loop over ``loader`` stops by its own count, not when its data runs out (None: it does not)."""
        passes = [p for p in self.training.get("passes") or [] if p["loader"] == loader]
        if any(p.get("length") is not None and p["length"] >= ENDLESS_BATCHES for p in passes):
            return (f"DataLoader #{loader}'s sampler is endless ({passes[0]['length']:,} batches a pass), so the loop "
                    f"stops by its own count, which would count micro-batches")
        left = [p for p in passes[:-1] if not p.get("exhausted")]
        if left:
            return (f"the loop left DataLoader #{loader} after {left[0]['batches']} of its {left[0]['length']} "
                    f"batches, so it stops by its own count, which would count micro-batches")
        return None


def _split_blockers(facts: _Facts, options: RecoveryOptions, own_accumulation: bool) -> str | None:
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


def _eval_no_grad(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions) -> Decision | str:
    if failure.phase != "evaluation":
        return "the OOM was not in evaluation"
    if plan.eval_no_grad:
        return "already on"
    if facts.oom.get("grad_enabled") is False:
        return "evaluation already ran under no_grad"
    return Decision(_ready(plan, options, "eval-no-grad", eval_no_grad=True), "eval-no-grad",
                    "the OOM was in evaluation: eval-mode forwards run under torch.no_grad(); training is untouched")


def _eval_split(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions) -> Decision | str:
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


def _optimizer_foreach(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions) -> Decision | str:
    if failure.phase != "optimizer":
        return "the OOM was not in optimizer.step"
    if plan.foreach_off:
        return "already on"
    if not facts.foreach:
        return "no optimizer uses the foreach implementation here (it is not the default on the CPU)"
    return Decision(_ready(plan, options, "optimizer-foreach", foreach_off=True), "optimizer-foreach",
                    "the OOM was in optimizer.step: optimizers take their single-tensor path (foreach=False), whose "
                    "temporaries are one parameter's size instead of all of them; the same update")


def _checkpoint(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions) -> Decision | str:
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


def _micro_batch(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions) -> Decision | str:
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


def _knob(facts: _Facts) -> tuple[str, int] | None:
    """The script's batch-size setting, when it also has a gradient-accumulation setting to multiply."""
    batch, accumulation = facts.settings.get("batch"), facts.settings.get("accumulation")
    if batch and accumulation and batch.get("value") and accumulation.get("value"):
        return batch["name"], int(batch["value"])
    return None


def _script_knob(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions, option: str,
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
    micro, _ = _next_micro(size, current, failure, facts, divisor=True)  # equal: the script's scaling stays exact
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


def _split_loaders(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions,
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
    smallest = min(lo.batch_size for lo in training)  # type: ignore[type-var]
    current = plan.micro_size or -(-smallest // plan.micro_batches)
    micro, chosen = _next_micro(smallest, current, failure, facts, divisor=False)
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


def _split_argument(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions,
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
    micro, chosen = _next_micro(size, current, failure, facts, divisor=True)
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


def _smaller_batch(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions) -> Decision | str:
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


def _offload(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions) -> Decision | str:
    if failure.phase not in SPLITTABLE_PHASES:
        return f"the OOM was in the {failure.phase} phase"
    if plan.offload:
        return "already on"
    if not str(facts.device).startswith("cuda"):
        return "saved activations are offloaded from a GPU to host memory; this run is not on a GPU"
    return Decision(_ready(plan, options, "offload", offload=True), "offload",
                    "saved activations of training forwards go to pinned host memory and come back for backward "
                    "(torch.autograd.graph.save_on_cpu): the same values, at the cost of the transfers")


def _amp(plan: Plan, failure: Failure, facts: _Facts, options: RecoveryOptions) -> Decision | str:
    if failure.phase not in SPLITTABLE_PHASES:
        return f"the OOM was in the {failure.phase} phase, where autocast of training forwards does not help"
    if plan.amp is not None:
        return "already on"
    return Decision(_ready(plan, options, "amp", amp="bf16"), "amp",
                    "forwards run under autocast (bfloat16): this changes the numerics")


TRIES = {"eval-no-grad": _eval_no_grad, "eval-split": _eval_split, "optimizer-foreach": _optimizer_foreach,
         "checkpoint": _checkpoint, "micro-batch": _micro_batch, "offload": _offload, "amp": _amp,
         "smaller-batch": _smaller_batch}


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
    facts = _Facts(failure)
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


UNDO = {"eval-no-grad": {"eval_no_grad": False}, "eval-split": {"eval_loaders": (), "eval_parts": 1},
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
        split = _micro_batch(plan, failure, _Facts(failure), options)
        if isinstance(split, Decision):
            return split
    return Decision(plan.next_attempt(applied=plan.applied + ("relaunch",)), "relaunch",
                    "killed by the kernel (host memory?): relaunching as it was")

"""How small the next micro-batch must be: estimated from what the failed attempt measured at its OOM, or the next
split when its figures say too little. Pure."""

from __future__ import annotations

from typing import Any

from torchdoctor.plan import next_parts
from torchdoctor.supervisor.recovery_types import Failure

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


def next_micro(batch: int, current: int, failure: Failure, facts: Any, divisor: bool) -> tuple[int, str]:
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

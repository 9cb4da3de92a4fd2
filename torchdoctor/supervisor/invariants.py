"""Did the recovered run train as the script asked? Each invariant of the training (optimizer steps, samples per
step, data order, numerics, BatchNorm statistics) is stated as ``kept``, ``changed`` (how, with figures) or
``unknown`` (why), from what the agent measured in the attempts (``TrainingFigures``): the first attempt ran as
asked until its OOM, the last one as done. Pure: plain data in, plain data out; nothing here is said without the
figures it rests on.
"""

from __future__ import annotations

from typing import Any

KEPT, CHANGED, UNKNOWN = "kept", "changed", "unknown"
LOSS_TOLERANCE = 1e-5  # relative: one batch's loss on the same weights, computed in micro-batches or whole
PRINT_TOLERANCE = 1e-9  # relative: a float64 sum of the same data, summed in parts or whole


def _invariant(key: str, status: str, evidence: str, as_asked: Any = None, as_done: Any = None) -> dict[str, Any]:
    return {"key": key, "status": status, "as_asked": as_asked, "as_done": as_done, "evidence": evidence}


def _relative(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale else 0.0


def _histogram(counts: dict[str, int]) -> str:
    items = sorted(((int(k), v) for k, v in counts.items()), key=lambda kv: -kv[1])
    return ", ".join(f"{value} ({n} step{'s' if n != 1 else ''})" for value, n in items)


def _mode(counts: dict[str, int]) -> int | None:
    if not counts:
        return None
    return int(max(counts.items(), key=lambda kv: (kv[1], int(kv[0])))[0])


def _asked_steps(asked: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps attempt 1 measured: its completed first steps, then its unfinished one."""
    updates = asked.get("updates") or []
    if not updates:
        return []
    first = list(updates[0].get("first") or [])
    if updates[0].get("pending"):
        first.append({**updates[0]["pending"], "pending": True})
    return first


def _splits_loop(plan: dict[str, Any]) -> str | None:
    """How torchdoctor split the script's loop into micro-batch iterations (None: it did not)."""
    if plan.get("micro_batches", 1) <= 1 or plan.get("accumulation") == "script":
        return None
    return "dataloader" if plan.get("train_loaders") else "argument" if plan.get("batch_arg") else None


def optimizer_steps(asked: dict[str, Any], done: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    updates = done.get("updates") or []
    steps = sum(u["steps"] for u in updates)
    shown = " + ".join(f"{u['steps']} ({u['name']})" for u in updates) if len(updates) > 1 else str(steps)
    if not updates:
        return _invariant("optimizer_steps", UNKNOWN, "no optimizer step and no parameter update was seen")
    manual = updates[0]["name"] == "manual updates"
    split = _splits_loop(plan)
    resumed = (done.get("resumed") or {}).get("step")
    if resumed:
        steps += resumed
        shown = f"{resumed} before the checkpoint it resumed from + {shown} after it"
    if split is None:
        remedies = ", ".join(plan.get("applied") or []) or "none"
        return _invariant("optimizer_steps", KEPT, f"{shown} steps; the remedies ({remedies}) leave the script's "
                                                   f"loop iterations as they are", steps, steps)
    parts = plan.get("micro_batches", 1)
    calls, iterations = done.get("step_calls", 0), done.get("iterations", 0)
    if not plan.get("keep_effective_batch", True):
        return _unaccumulated_steps(done, split, shown, steps, parts, "parameter updates" if manual else "steps")
    if manual:
        return _invariant("optimizer_steps", CHANGED, (
            f"{steps} parameter updates: the script updates its parameters itself (no torch.optim optimizer), so "
            f"micro-batches could not be accumulated and each of its {iterations} loop iterations updated"),
            None, steps)
    if split == "argument":
        loop = done.get("loop") or {}
        where = f"`{loop.get('header')}` at {loop.get('where')}" if loop else "the training loop"
        if loop.get("bound") == "data":
            return _invariant("optimizer_steps", KEPT, (
                f"{shown} steps from {iterations} backward passes ({parts} per step): the batch-size option was "
                f"divided, and the loop runs over its data ({where} follows the batch size), so it ran {parts} "
                f"times as many iterations"), steps, steps)
        if loop.get("bound") == "count":
            return _invariant("optimizer_steps", CHANGED, (
                f"{shown} steps instead of about {calls // len(updates)}: the batch-size option was divided but the "
                f"loop stops by its own count ({where}), so it ran as many iterations, each {parts} times smaller"),
                calls // len(updates), steps)
        return _invariant("optimizer_steps", UNKNOWN, (
            f"{shown} steps from {iterations} backward passes ({parts} per step): the batch-size option was divided "
            f"and every {parts} backward passes formed one step; what bounds {where} could not be read: had it "
            f"counted its iterations it would have taken {calls} steps as asked, had it run over its data, {steps}"),
            None, steps)
    passes = done.get("passes") or []
    left = [p for p in passes if not p.get("exhausted")]
    every = calls == iterations * len(updates)
    if left:
        p = left[-1]
        length = f" of its {p['length']}" if p.get("length") is not None else ""
        return _invariant("optimizer_steps", CHANGED, (
            f"{shown} steps instead of about {calls // len(updates)}: the loop left DataLoader #{p['loader']} after "
            f"{p['batches']}{length} batches, before its data ran out, so it stops by its own count, which "
            f"counted {iterations} micro-batch iterations ({parts} per batch); as asked each iteration is a whole "
            f"batch and a step"), calls // len(updates), steps)
    if not every:
        return _invariant("optimizer_steps", UNKNOWN, (
            f"{shown} steps: the script called optimizer.step() {calls} times in {iterations} loop iterations (its "
            f"own count decides when), and micro-batches are loop iterations here"), None, steps)
    batches = sum(p["batches"] for p in passes)
    if passes and all(u["steps"] == batches for u in updates):
        return _invariant("optimizer_steps", KEPT, (
            f"{shown} steps, one per whole batch: {len(passes)} pass{'es' if len(passes) != 1 else ''} over "
            f"DataLoader #{passes[0]['loader']} ran to the end of the data ({batches} batches) and the script "
            f"steps on every loop iteration"), batches, steps)
    return _invariant("optimizer_steps", UNKNOWN, f"{shown} steps for {batches} whole batches", None, steps)


def _unaccumulated_steps(done: dict[str, Any], split: str, shown: str, steps: int, parts: int,
                         unit: str = "steps") -> dict[str, Any]:
    """Smaller batches without accumulation: each loop iteration is a step; how many there are depends on what
    bounds the loop (its data: more steps; its own count: as many)."""
    passes = done.get("passes") or []
    if split == "dataloader" and passes:
        if any(not p.get("exhausted") for p in passes):
            return _invariant("optimizer_steps", KEPT, (
                f"{shown} {unit}: the loop stops by its own count (it left DataLoader #{passes[0]['loader']} before "
                f"its data ran out), so as many iterations as asked, each now a step on a smaller batch"), steps, steps)
        batches = sum(p["batches"] for p in passes)
        return _invariant("optimizer_steps", CHANGED, (
            f"{shown} {unit} instead of {batches}: batches were split without accumulation and the loop runs over "
            f"its data, so each micro-batch is a step"), batches, steps)
    loop = done.get("loop") or {}
    where = f"`{loop.get('header')}` at {loop.get('where')}" if loop else "the training loop"
    if loop.get("bound") == "count":
        return _invariant("optimizer_steps", KEPT, f"{shown} {unit}: {where} stops by its own count, so as many "
                                                   f"iterations as asked, each on a smaller batch", steps, steps)
    if loop.get("bound") == "data":
        return _invariant("optimizer_steps", CHANGED, (
            f"{shown} {unit} instead of about {steps // parts}: the batch was divided by {parts} without accumulation "
            f"and {where} runs over its data"), None, steps)
    return _invariant("optimizer_steps", UNKNOWN, f"{shown} {unit} on batches divided by {parts} without accumulation; "
                                                  f"what bounds {where} could not be read", None, steps)


def samples_per_step(asked: dict[str, Any], done: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    updates = done.get("updates") or []
    if not updates or not updates[0].get("samples"):
        return _invariant("samples_per_step", UNKNOWN, "no step's samples were seen")
    counts = updates[0]["samples"]
    mode = _mode(counts)
    measured = _asked_steps(asked)
    reference = next((s for s in measured if not s.get("pending")), None)
    source = "measured in attempt 1's first step"
    if reference is None and measured:
        reference, source = measured[-1], "attempt 1's unfinished first step"
        accumulation = (asked.get("settings") or {}).get("accumulation")
        if accumulation and reference.get("backwards", 0) < accumulation["value"]:
            reference = None  # only part of an accumulated step ran before the OOM
    settings = asked.get("settings") or {}
    batch, accumulation = settings.get("batch"), settings.get("accumulation")
    if (reference is None or not reference.get("samples")) and batch and accumulation:
        reference = {"samples": int(batch["value"]) * int(accumulation["value"])}
        source = (f"the script's settings ({batch['name']} {batch['value']} x {accumulation['name']} "
                  f"{accumulation['value']})")
    if reference is None or not reference.get("samples"):
        return _invariant("samples_per_step", UNKNOWN, f"{_histogram(counts)}; attempt 1 measured no whole step "
                                                       f"to compare with", None, mode)
    wanted = reference["samples"]
    tokens = _mode(updates[0].get("tokens") or {})
    per = f"{mode} samples" + (f" ({tokens} tokens)" if tokens and tokens != mode else "")
    asked_tokens = reference.get("tokens")
    if tokens and asked_tokens and tokens != asked_tokens:  # the leading dimension may be a sequence's (seq-first)
        return _invariant("samples_per_step", CHANGED, f"{tokens} tokens per step instead of {asked_tokens} "
                                                       f"({source})", asked_tokens, tokens)
    first = (updates[0].get("first") or [{}])[0]
    items, asked_items = first.get("items"), reference.get("items")
    if items and asked_items and items != asked_items and first.get("samples") == reference.get("samples"):
        # the same leading dimension, other sizes: a seq-first batch (an LSTM's time steps first) got narrower
        return _invariant("samples_per_step", CHANGED, (
            f"{items} input elements in step 1 instead of {asked_items} ({source}); its leading dimension "
            f"({mode}) is not the batch"), asked_items, items)
    if mode == wanted and all(int(k) <= wanted for k in counts):
        extra = "" if len(counts) == 1 else f" (smaller ones end a pass: {_histogram(counts)})"
        return _invariant("samples_per_step", KEPT, f"{per} per step{extra}, as {source} ({wanted})", wanted, mode)
    return _invariant("samples_per_step", CHANGED, f"{per} per step ({_histogram(counts)}) instead of {wanted} "
                                                   f"({source})", wanted, mode)


def _stream(steps: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """The batches of these steps in order, as (samples, fingerprint), as far as they were fingerprinted."""
    out: list[tuple[int, float]] = []
    for step in steps:
        parts = step.get("parts")
        if parts is None:
            if step.get("fingerprint") is None:
                break
            parts = [[step.get("samples", 0), step["fingerprint"]]]
        out.extend((int(n), float(f)) for n, f in parts)
    return out


def _cumulative(stream: list[tuple[int, float]]) -> dict[int, float]:
    totals: dict[int, float] = {}
    samples, prints = 0, 0.0
    for n, f in stream:
        samples, prints = samples + n, prints + f
        totals[samples] = prints
    return totals


def data_order(asked: dict[str, Any], done: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The data, sample for sample: wherever both attempts had taken the same number of samples since the start,
    the fingerprints (float64 sums) of what they had taken must be equal."""
    updates = done.get("updates") or []
    theirs = _cumulative(_stream(_asked_steps(asked)))
    ours = _cumulative(_stream((updates[0].get("first") or []) if updates else []))
    common = sorted(set(theirs) & set(ours))
    agreed = 0
    for samples in common:
        if _relative(theirs[samples], ours[samples]) > PRINT_TOLERANCE:
            same = f"the first {agreed} samples are attempt 1's, " if agreed else ""
            return _invariant("data_order", CHANGED, (
                f"{same}the first {samples} differ from attempt 1's (a fingerprint of the inputs: "
                f"{ours[samples]:.6g} vs {theirs[samples]:.6g}): the batches are drawn differently"))
        agreed = samples
    if not agreed:
        return _invariant("data_order", UNKNOWN, "attempt 1 took no batch this run can be compared with")
    how = ""
    if _splits_loop(plan) == "dataloader":
        how = "; the DataLoader's own sampler is split after it draws, so its shuffle and RNG use are untouched"
    return _invariant("data_order", KEPT, f"the first {agreed} samples equal attempt 1's, in order (as far as "
                                          f"attempt 1 got){how}")


def numerics(asked: dict[str, Any], done: dict[str, Any], plan: dict[str, Any],
             reference: str = "attempt 1's") -> dict[str, Any]:
    remedies = done.get("remedies") or {}
    autocast = remedies.get("autocast_forwards", 0)
    if autocast or plan.get("amp"):
        return _invariant("numerics", CHANGED, f"{autocast} training forwards ran under autocast "
                                               f"({plan.get('amp') or 'mixed precision'})")
    reductions = done.get("reductions") or {}
    split = _splits_loop(plan) is not None
    if split and reductions.get("unknown"):
        return _invariant("numerics", UNKNOWN, (
            f"the loss reduction of {reductions['unknown']} backward passes could not be read from the graph; each "
            f"micro-batch's loss was counted for its share of the samples, as for a mean"))
    updates = done.get("updates") or []
    done_steps = updates[0].get("first") or [] if updates else []
    for index, (a, d) in enumerate(zip(_asked_steps(asked), done_steps)):
        if a.get("loss") is None or d.get("loss") is None or a.get("samples") != d.get("samples"):
            break
        difference = _relative(a["loss"], d["loss"])
        if difference > LOSS_TOLERANCE:
            return _invariant("numerics", CHANGED, (
                f"step {index + 1}'s loss is {d['loss']:.6g}, {reference} was {a['loss']:.6g} (relative difference "
                f"{difference:.1e})"), a["loss"], d["loss"])
        rounding = ("; micro-batch gradients are summed in another order, so float rounding differs, and "
                    "such differences can grow over training" if split else "")
        return _invariant("numerics", KEPT, (
            f"step {index + 1}'s loss {d['loss']:.6g} equals {reference} (relative difference {difference:.1e})"
            f"{rounding}"), a["loss"], d["loss"])
    checked, differed = remedies.get("recomputed_checked", 0), remedies.get("recomputed_differed", 0)
    if differed:
        return _invariant("numerics", CHANGED, f"activation checkpointing: {differed} of {checked} recomputed "
                                               f"blocks did not reproduce their forward output bit for bit")
    if checked and plan.get("micro_batches", 1) <= 1:
        return _invariant("numerics", KEPT, (
            f"activation checkpointing recomputed {checked} blocks' outputs bit for bit as their forwards made "
            f"them (checked on the first calls); attempt 1 computed no loss to compare with"))
    if checked:
        return _invariant("numerics", UNKNOWN, (
            f"activation checkpointing recomputed {checked} blocks' outputs bit for bit, but micro-batches sum "
            f"their gradients in another order and attempt 1 computed no loss to compare the rounding with"))
    return _invariant("numerics", UNKNOWN, "attempt 1 computed no loss to compare with")


def batchnorm(asked: dict[str, Any], done: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any] | None:
    norm = done.get("batchnorm")
    if not norm or not norm.get("forwards"):
        return None
    updates, forwards = norm.get("updates"), norm.get("forwards")
    if updates is not None and updates != forwards:
        return _invariant("batchnorm", CHANGED, f"BatchNorm running statistics were updated {updates} times for "
                                                f"{forwards} training forwards of its layers", forwards, updates)
    before = asked.get("batchnorm") or {}
    wanted, got = before.get("largest_batch"), norm.get("largest_batch")
    if wanted is None:
        return _invariant("batchnorm", UNKNOWN, f"{norm['layers']} BatchNorm layers normalised over batches of up "
                                                f"to {got}; attempt 1 measured none to compare with", None, got)
    if got is not None and got < wanted:
        return _invariant("batchnorm", CHANGED, f"{norm['layers']} BatchNorm layers normalised over micro-batches "
                                                f"of up to {got} samples instead of batches of {wanted}", wanted, got)
    once = f"; running statistics updated once per training forward ({updates})" if updates is not None else ""
    return _invariant("batchnorm", KEPT, f"BatchNorm layers normalised over batches of {got} samples, as in "
                                         f"attempt 1{once}", wanted, got)


CHECKS = (optimizer_steps, samples_per_step, data_order, numerics, batchnorm)
LABELS = {"optimizer_steps": "optimizer steps", "samples_per_step": "samples per step", "data_order": "data order",
          "numerics": "numerics", "batchnorm": "BatchNorm statistics"}


def _resumed(done: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A resumed attempt's first steps are not attempt 1's first steps: its data and numerics stand on the resume's
    own check of its first step against the run it resumes."""
    resumed = done.get("resumed")
    if not resumed:
        return None
    step, checked = resumed.get("step"), resumed.get("checked")
    if checked and "losses" in checked:
        evidence = (f"the first step after resuming at step {step} had the first run's {checked} at that step: the "
                    f"same data on the same weights")
        found = [_invariant(key, KEPT, evidence) for key in ("samples_per_step", "data_order", "numerics")]
        if (done.get("batchnorm") or {}).get("forwards"):
            found.append(_invariant("batchnorm", KEPT, evidence))
        return found
    why = (f"resumed at step {step}; its first step was checked for {checked} only (another plan)" if checked
           else f"resumed at step {step}; the first run died before its next step was recorded")
    return [_invariant("data_order", UNKNOWN, why), _invariant("numerics", UNKNOWN, why)]


def _plan_words(plan: dict[str, Any]) -> str:
    """An attempt's plan in a few words, for naming the attempt a figure was compared with."""
    words = [f"micro-batches of {plan['micro_size']}" if plan.get("micro_size")
             else f"{plan['micro_batches']} micro-batches" if plan.get("micro_batches", 1) > 1 else ""]
    words += [name for key, name in (("checkpoint", "activation checkpointing"), ("offload", "offload"),
                                     ("foreach_off", "foreach off"), ("amp", "amp")) if plan.get(key)]
    return ", ".join(w for w in words if w) or "the batch as asked"


def training_invariants(attempts: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The invariants of a recovered run (None when the last attempt measured nothing)."""
    if not attempts:
        return None
    done = attempts[-1].get("training")
    if not done:
        return None
    if done.get("broken"):
        return [_invariant(key, UNKNOWN, f"the training figures could not be measured ({done['broken']})")
                for key in ("optimizer_steps", "samples_per_step", "data_order", "numerics")]
    asked = attempts[0].get("training") or {}
    plan = attempts[-1].get("plan") or {}
    resumed = _resumed(done)
    overridden = {i["key"] for i in resumed or []}
    checks = [c for c in CHECKS if c.__name__ not in overridden]
    found = [check(asked, done, plan) for check in checks] + (resumed or [])
    for number, attempt in enumerate(attempts[1:-1], start=2):  # attempt 1 died before a loss: a later one?
        index = next((i for i, item in enumerate(found) if item and item["key"] == "numerics"), None)
        if index is None:
            break
        current = found[index]
        assert current is not None  # the item ``index`` was found for
        if current["status"] != UNKNOWN or "computed no loss" not in current["evidence"]:
            break
        earlier = attempt.get("training") or {}
        if (attempt.get("plan") or {}).get("amp"):
            continue  # its losses were computed in lower precision: no reference for the numerics as asked
        recomputed = numerics(earlier, done, plan, reference=f"that of attempt {number} (attempt 1 computed no loss; "
                                                              f"attempt {number} ran "
                                                              f"{_plan_words(attempt.get('plan') or {})})")
        if recomputed["status"] != UNKNOWN:
            found[index] = recomputed
    order = [c.__name__ for c in CHECKS]
    return sorted((item for item in found if item is not None), key=lambda i: order.index(i["key"]))


def changes(invariants: list[dict[str, Any]] | None) -> list[str]:
    """What is not kept, in words a user cannot miss (empty when everything measured was kept)."""
    return [f"{LABELS.get(i['key'], i['key'])} {i['status']}: {i['evidence']}"
            for i in invariants or [] if i["status"] != KEPT]

"""Small text helpers shared by the terminal renderers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CATEGORY_LABELS = {
    "parameters": "parameters (+ buffers)",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "optimizer_temporaries": "optimizer step temporaries",
    "activations_saved": "activations saved for backward",
    "activations_other": "other activations / temporaries",
    "inputs_data": "inputs / data / other",
}
# the same, short, for one-line messages (the pytest plugin's failures)
CATEGORY_SHORT_LABELS = {"parameters": "parameters", "gradients": "gradients", "optimizer_state": "optimizer state",
                         "activations_saved": "saved for backward", "activations_other": "activations/other",
                         "optimizer_temporaries": "optimizer temporaries", "inputs_data": "inputs/data"}
BARS = "▁▂▃▄▅▆▇█"
NOT_MEASURED = "·"


def sparkline(values: Sequence[float | None], width: int = 60) -> str:
    """A one-line chart; ``None`` (not measured) shows as ``·``. Long series are bucketed by max."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        buckets = []
        for i in range(width):
            chunk = [v for v in values[int(i * size):int((i + 1) * size)] if v is not None]
            buckets.append(max(chunk) if chunk else None)
        values = buckets
    known = [v for v in values if v is not None]
    if not known:
        return NOT_MEASURED * len(values)
    low, high = min(known), max(known)
    span = high - low
    out = []
    for v in values:
        if v is None:
            out.append(NOT_MEASURED)
        elif span == 0:
            out.append(BARS[len(BARS) // 2])
        else:
            out.append(BARS[min(len(BARS) - 1, int((v - low) / span * (len(BARS) - 1) + 0.5))])
    return "".join(out)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def tensor_what(tensor: dict) -> str:
    """What a tensor listed at a peak is: its name (``fc1.weight.grad``), else the module that made it."""
    if tensor.get("name"):
        return tensor["name"]
    if tensor.get("module"):
        return f"made in {tensor['module']}"
    return "-"


def tensor_shape(tensor: dict) -> str:
    return "×".join(str(n) for n in tensor.get("shape") or []) or "scalar"


def peak_when(peak: dict) -> str:
    """When a report's peak happened, in words: ``step 65, evaluation``."""
    if peak.get("span") == "tail":
        where = "after the last step" if peak.get("step") else "before any optimizer step"
    elif peak.get("step") is not None:
        where = f"step {peak['step']}"
    else:
        where = "during the run"
    if peak.get("phase"):
        where += f", {peak['phase']}"
    return where


INVARIANT_LABELS = {"optimizer_steps": "optimizer steps", "samples_per_step": "samples per step",
                    "data_order": "data order", "numerics": "numerics", "batchnorm": "BatchNorm statistics"}


def recovery_facts(recovery: dict) -> list[str]:
    """What a recovered run kept and cost, in words (the terminal and HTML reports say the same). Only what the
    attempts measured is called kept; what was not kept is in ``training_changes``."""
    facts = [f"recovered with {', '.join(recovery.get('remedies') or [])}"]
    invariants = recovery.get("invariants")
    if invariants is None:
        facts.append("whether the training was kept was not measured")
    else:
        kept = [INVARIANT_LABELS.get(i["key"], i["key"]) for i in invariants if i["status"] == "kept"]
        if kept:
            facts.append("kept, measured: " + ", ".join(kept))
    facts.append(f"{'resumed' if recovery.get('restarted_from') != 'beginning' else 'restarted'} from the "
                 f"{recovery.get('restarted_from')}: {recovery.get('steps_redone')} "
                 f"step{'' if recovery.get('steps_redone') == 1 else 's'} redone, "
                 f"{recovery.get('seconds_lost') or 0:.1f} s lost")
    return facts


def training_changes(recovery: dict) -> list[str]:
    """Each invariant of the training that is not measured kept: ``optimizer steps changed: ...``."""
    return [f"{INVARIANT_LABELS.get(i['key'], i['key'])} {i['status']}: {i['evidence']}"
            for i in recovery.get("invariants") or [] if i["status"] != "kept"]


def training_changes_short(recovery: dict) -> str | None:
    """One short phrase for a summary line: ``training changed: optimizer steps 4 (asked 9), BatchNorm
    statistics``; None when every measured invariant was kept."""
    items = [i for i in recovery.get("invariants") or [] if i["status"] != "kept"]
    if not items:
        return None
    words = []
    for item in items:
        label = INVARIANT_LABELS.get(item["key"], item["key"])
        if item["status"] == "changed" and item.get("as_done") is not None and item.get("as_asked") is not None:
            label += f" {item['as_done']} (asked {item['as_asked']})"
        elif item["status"] == "unknown":
            label += " unknown"
        words.append(label)
    changed = any(i["status"] == "changed" for i in items)
    return ("training changed: " if changed else "training may have changed: ") + ", ".join(words)


def stall_and_stop(report: dict[str, Any]) -> list[str]:
    """What the report says of a stall and of how the run was stopped, one line each (none when neither)."""
    lines = []
    stall = report.get("stall") or {}
    if stall:
        stacks = " (every thread's Python stack is in report.json, stall.stacks)" if stall.get("stacks") else ""
        lines.append(f"stalled for {format_duration(stall.get('seconds') or 0)} at "
                     f"{stall.get('where') or 'an unknown place'}: no optimizer step, the main thread in one "
                     f"place{stacks}")
    stop = report.get("stop") or {}
    if stop:
        signals = ", then ".join(stop.get("signals") or []) or "no signal"
        lines.append(f"stopped ({stop.get('reason')}): {signals}, {stop.get('grace_s')} s apart")
    return lines

"""``torchdoctor estimate``'s answer as text: a row per batch size (peak, the phase holding it, what it holds),
the largest batch under a budget, and what the estimate does not see."""

from __future__ import annotations

from typing import Any

from torchdoctor.reporters.text import CATEGORY_SHORT_LABELS
from torchdoctor.sizes import format_bytes


def estimate_text(document: dict[str, Any]) -> str:
    lines = [f"torchdoctor estimate · {document['script']} · {document['device']} · tensor storages counted on fake "
             f"tensors (no memory allocated), peak of the first {document['estimates'][0]['steps_wanted']} "
             f"optimizer steps", ""]
    header = ["batch", "peak", "phase", "held at the peak"]
    rows = []
    for estimate in document["estimates"]:
        kinds = sorted(((v, k) for k, v in estimate["by_kind"].items() if v > 0), reverse=True)
        held = ", ".join(f"{CATEGORY_SHORT_LABELS.get(k, k)} {format_bytes(v)}" for v, k in kinds)
        rows.append([str(estimate["batch_size"] or "?"), format_bytes(estimate["peak_bytes"]),
                     estimate["peak_phase"], held])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    largest = document.get("largest_batch")
    if largest is not None:
        lines.append("")
        budget = format_bytes(largest["budget_bytes"])
        if largest.get("batch_size"):
            over = largest.get("first_over")
            tail = (f"; batch {over['batch_size']} needs {format_bytes(over['peak_bytes'])} (in {over['peak_phase']})"
                    if over else "")
            lines.append(f"largest batch under {budget}: {largest['batch_size']} (peak "
                         f"{format_bytes(largest['peak_bytes'])} in {largest['peak_phase']}){tail}; "
                         f"{largest['runs']} fake runs")
        else:
            lines.append(f"no batch fits under {budget}: batch 1 needs "
                         f"{format_bytes(largest['first_over']['peak_bytes'])}")
    if "layers" in document:
        lines += ["", f"per layer (batch {document.get('layers_batch_size') or '?'}, the first training forward):"]
        lines += layer_table(document["layers"])
        growth = document.get("forward_growth_bytes")
        if growth:
            saved = sum(row["saved_for_backward_bytes"] for row in document["layers"])
            lines.append(f"the forward left {format_bytes(growth)} alive: {format_bytes(saved)} saved for backward "
                         f"(above), {format_bytes(max(0, growth - saved))} its outputs and the rest")
    reads = max((e.get("stand_ins", 0) for e in document["estimates"]), default=0)
    if reads:
        lines.append(f"{reads} values read back to Python (loss.item() ...) got stand-ins")
    lines += ["", "Not counted:"] + [f"- {limit}" for limit in document.get("limits", [])]
    lines.append(f"({document['runs']} runs, {document['seconds']:.1f} s)")
    return "\n".join(lines)


def layer_table(layers: list[dict[str, Any]]) -> list[str]:
    header = ["module", "params", "output", "saved for backward"]
    rows = [[row["module"], format_bytes(row["params_bytes"]), format_bytes(row["output_bytes"]),
             format_bytes(row["saved_for_backward_bytes"])] for row in layers]
    total = ["total", format_bytes(sum(r["params_bytes"] for r in layers)), "",
             format_bytes(sum(r["saved_for_backward_bytes"] for r in layers))]
    table = [header, *rows, total]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in table]

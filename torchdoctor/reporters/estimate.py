"""``torchdoctor estimate``'s answer as text: a row per batch size (peak, the phase holding it, what it holds),
the largest batch under a budget, and what the estimate does not see."""

from __future__ import annotations

from typing import Any

from torchdoctor.reporters.text import CATEGORY_SHORT_LABELS
from torchdoctor.sizes import format_bytes

LABELS = {**CATEGORY_SHORT_LABELS, "cublas_workspace": "cuBLAS workspaces"}


def _held(by_kind: dict[str, int]) -> str:
    kinds = sorted(((v, k) for k, v in by_kind.items() if v > 0), reverse=True)
    return ", ".join(f"{LABELS.get(k, k)} {format_bytes(v)}" for v, k in kinds)


def _table(rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; the last column as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]


def estimate_text(document: dict[str, Any]) -> str:
    steps = document["estimates"][0]["steps_wanted"]
    gpu = document.get("gpu")
    fallback = document.get("fallback")
    if fallback is not None:
        lines = [f"torchdoctor estimate · {document['script']} · {document['device']} · MEASURED ON REAL TENSORS, not "
                 f"estimated: {fallback['why']}", f"(the CPU allocator's peak of the first {steps} optimizer steps at "
                 f"each batch size; {fallback['largest_batch']})", ""]
        rows = [["batch", "peak", "phase", "held at the peak"]]
        rows += [[str(e["batch_size"] or "the script's"), format_bytes(e["peak_bytes"]), e["peak_phase"],
                  _held(e["by_kind"])] for e in document["estimates"]]
        lines += _table(rows)
    elif gpu is None:
        lines = [f"torchdoctor estimate · {document['script']} · {document['device']} · tensor storages counted on "
                 f"fake tensors (no memory allocated), peak of the first {steps} optimizer steps", ""]
        rows = [["batch", "peak", "phase", "held at the peak"]]
        rows += [[str(e["batch_size"] or "?"), format_bytes(e["peak_bytes"]), e["peak_phase"], _held(e["by_kind"])]
                 for e in document["estimates"]]
        lines += _table(rows)
    else:
        lines = [f"torchdoctor estimate · {document['script']} · modelled for {gpu['name']} "
                 f"({format_bytes(gpu['memory_bytes'])} nominal, sm{gpu['capability']}): fake tensors (no memory "
                 f"allocated, no GPU), torch's caching allocator replayed, peak of the first {steps} optimizer "
                 f"steps", ""]
        rows = [["batch", "allocated", "reserved", "+ context", "phase", "held at the allocated peak"]]
        for e in document["estimates"]:
            g = e.get("gpu") or {}
            rows.append([str(e["batch_size"] or "?"), format_bytes(g.get("allocated_peak_bytes", 0)),
                         format_bytes(g.get("reserved_peak_bytes", 0)), format_bytes(g.get("total_bytes", 0)),
                         g.get("peak_phase", "?"), _held(g.get("by_kind", {}))])
        lines += _table(rows)
        host = max(e["peak_bytes"] for e in document["estimates"])
        lines.append(f"allocated/reserved: what torch.cuda.max_memory_allocated()/max_memory_reserved() would read; "
                     f"+ context: reserved and {format_bytes(gpu['context_bytes'])} for the CUDA context (assumed); "
                     f"host and GPU tensors together peak at {format_bytes(host)}")
    largest = document.get("largest_batch")
    if document.get("largest_batch_skipped"):
        lines += ["", document["largest_batch_skipped"]]
    if largest is not None:
        lines.append("")
        budget = format_bytes(largest["budget_bytes"])
        if largest.get("limited_by") == "search":
            lines.append(f"largest batch: at least {largest['batch_size']} (the most the search tries) fits under "
                         f"{budget}: peak {format_bytes(largest['peak_bytes'])}; {largest['runs']} fake runs")
        elif largest.get("limited_by") == "data":
            over = largest["first_over"]
            lines.append(f"largest batch: {largest['batch_size']}, bounded by the script's data, not memory: asked "
                         f"for batch {over['batch_size']}, its first training batch held {over['batch_seen']} "
                         f"(peak at {largest['batch_size']}: {format_bytes(largest['peak_bytes'])}, under {budget}); "
                         f"{largest['runs']} fake runs")
        elif largest.get("batch_size"):
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
    lines += ["", "Limits:"] + [f"- {limit}" for limit in document.get("limits", [])]
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

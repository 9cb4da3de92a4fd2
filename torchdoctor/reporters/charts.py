"""The HTML report's charts, drawn by matplotlib as inline SVG (no JavaScript, no network: the page works offline).

Only this module imports matplotlib, and only when a chart is drawn; ``available()`` says whether it can be.
Figures are made with ``matplotlib.figure.Figure`` directly (no pyplot: no global state, no GUI backend).
"""

from __future__ import annotations

import importlib
import io
import math
from typing import Any

from torchdoctor.events import PHASES
from torchdoctor.reporters.text import CATEGORY_LABELS

PHASE_ORDER = PHASES
# Colours fixed per series so the page, its legend and a screenshot test agree (matplotlib's tab10).
TENSOR_PEAK_COLOUR = "#1f77b4"
PHASE_COLOURS = {"forward": "#2ca02c", "backward": "#d62728", "optimizer": "#9467bd", "evaluation": "#ff7f0e",
                 "other": "#7f7f7f"}
CUDA_COLOURS = {"cuda_allocated_peak": "#17becf", "cuda_reserved_peak": "#8c564b"}
CATEGORY_COLOURS = {"parameters": "#1f77b4", "gradients": "#d62728", "optimizer_state": "#9467bd",
                    "activations_other": "#ff7f0e", "activations_saved": "#bcbd22",
                    "optimizer_temporaries": "#e377c2", "inputs_data": "#8c564b"}
OOM_COLOUR = "#e41a1c"
UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("bytes", 1))


def available() -> bool:
    """Whether matplotlib can be imported (the html extra); a broken install counts as missing."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def unit_for(largest: float) -> tuple[str, int]:
    """The unit that shows ``largest`` as a number of at least 1."""
    for name, size in UNITS:
        if largest >= size:
            return name, size
    return "bytes", 1


def _svg(figure: Any) -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "torchdoctor"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=96)
    axes = figure.subplots()
    axes.grid(True, color="#dddddd", linewidth=0.6)
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def memory_over_steps(samples: list[dict[str, Any]], oom_steps: list[int]) -> str | None:
    """Per device: the tensor peak of each measured step, the peak of each phase in it, and the CUDA allocator's
    allocated/reserved peaks; OOMs as vertical lines. None when no step measured anything."""
    steps = [s for s in samples if s.get("span") == "step"]
    series: list[tuple[str, str, str, list[float]]] = []  # (label, colour, style, values)
    devices = sorted({d for s in steps for d in s.get("devices", {})})
    for device in devices:
        figures = [s.get("devices", {}).get(device, {}) for s in steps]
        series.append((f"tensor peak ({device})", TENSOR_PEAK_COLOUR, "-",
                       [_value(f.get("tensor_peak")) for f in figures]))
        for phase in PHASE_ORDER:
            values = [_value((f.get("phase_peaks") or {}).get(phase)) for f in figures]
            if any(not math.isnan(v) for v in values):
                series.append((f"{phase} peak ({device})", PHASE_COLOURS[phase], "--", values))
        for key, colour in CUDA_COLOURS.items():
            values = [_value(f.get(key)) for f in figures]
            if any(not math.isnan(v) for v in values):
                label = key.removesuffix("_peak").replace("cuda_", "CUDA ")
                series.append((f"{label} peak ({device})", colour, "-", values))
    known = [v for _, _, _, values in series for v in values if not math.isnan(v)]
    if not known:
        return None
    unit, size = unit_for(max(known))
    x = [s["step"] for s in steps]
    figure, axes = _figure(9.0, 3.8)
    for label, colour, style, values in series:
        scaled = [v / size for v in values]
        measured = sum(not math.isnan(v) for v in values)
        marker = "o" if len(x) <= 60 or measured <= 60 else None  # sparse series would not show as lines
        axes.plot(x, scaled, style, color=colour, label=label, marker=marker, markersize=3,
                  linewidth=2.0 if style == "-" else 1.1)
    for i, step in enumerate(sorted(set(oom_steps))):
        axes.axvline(step, color=OOM_COLOUR, linewidth=1.5, linestyle=":", label="out of memory" if i == 0 else None)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(unit)
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _svg(figure)


def host_memory_over_steps(samples: list[dict[str, Any]]) -> str | None:
    """The process's resident memory at the end of each step (host RAM, not tensors alone)."""
    steps = [s for s in samples if s.get("span") == "step" and s.get("rss_bytes")]
    if len(steps) < 2:
        return None
    unit, size = unit_for(max(s["rss_bytes"] for s in steps))
    figure, axes = _figure(9.0, 2.2)
    axes.plot([s["step"] for s in steps], [s["rss_bytes"] / size for s in steps], color="#555555", linewidth=1.5,
              label="process RSS")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(unit)
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _svg(figure)


def breakdown_bar(breakdown: dict[str, int]) -> str | None:
    """One horizontal bar: what the device held at the peak, by category."""
    total = sum(v for v in breakdown.values() if isinstance(v, int))
    if total <= 0:
        return None
    unit, size = unit_for(total)
    figure, axes = _figure(9.0, 1.3)
    left = 0.0
    for key, label in CATEGORY_LABELS.items():
        value = breakdown.get(key) or 0
        if value <= 0:
            continue
        axes.barh([0], [value / size], left=left, color=CATEGORY_COLOURS[key], label=label, height=0.6)
        left += value / size
    axes.set_yticks([])
    axes.set_xlabel(unit)
    axes.grid(False)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=4, fontsize=8, frameon=False)
    return _svg(figure)


def _value(figure: Any) -> float:
    return float(figure) if isinstance(figure, (int, float)) else math.nan

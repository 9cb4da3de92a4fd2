"""report.html: one self-contained page from a report dict (inline CSS and SVG; no script, no CDN, works offline).

Sections: the outcome and the peak figures; memory over steps (charts, with the html extra); the breakdown at the
tensor peak and the largest tensors alive at it; out-of-memory events and what recovery did; findings; the
environment. Without matplotlib the page has the same tables and says how to get the charts.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from torchdoctor.reporters import charts
from torchdoctor.reporters.text import (
    CATEGORY_LABELS,
    INVARIANT_LABELS,
    format_duration,
    peak_when,
    recovery_facts,
    tensor_shape,
    tensor_what,
    training_changes,
)
from torchdoctor.sizes import format_bytes

INSTALL_HINT = 'pip install "torchdoctor[html]"'

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 1.2em 1.6em 3em; }
h1 { font-size: 1.5em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin: 1.6em 0 0.5em; }
section { background: #fff; border: 1px solid #e1e4e8; border-radius: 6px; padding: 0.4em 1.2em 1em; margin: 1em 0; }
table { border-collapse: collapse; margin: 0.4em 0; } th, td { padding: 0.25em 0.8em; text-align: left; }
th { border-bottom: 2px solid #d0d7de; } td { border-bottom: 1px solid #eaecef; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.outcome { font-weight: 600; } .success { color: #1a7f37; } .failed, .killed { color: #cf222e; }
.interrupted { color: #9a6700; }
.peak-figure { font-size: 1.25em; margin: 0.5em 0; } .peak-figure strong { font-size: 1.3em; }
.hint { background: #fff8c5; border: 1px solid #d4a72c; padding: 0.5em 0.8em; border-radius: 4px; }
.error { color: #cf222e; } .warning { color: #9a6700; } .info { color: #0969da; }
.muted { color: #656d76; } code { font-size: 0.95em; } figure.chart { margin: 0.5em 0; overflow-x: auto; }
figure.chart svg { max-width: 100%; height: auto; }
"""


def render_html(report: dict[str, Any], *, with_charts: bool | None = None) -> str:
    """The page for ``report``; charts when matplotlib is installed (``with_charts`` forces either way)."""
    draw = charts.available() if with_charts is None else with_charts
    run = report.get("run") or {}
    title = f"torchdoctor · {run.get('target') or '?'}"
    body = [
        _header(report),
        _peaks(report),
        _memory(report, draw),
        _at_the_peak(report, draw),
        _recovery(report),
        _findings(report),
        _environment(report),
        f'<p class="muted">torchdoctor {escape(str(report.get("torchdoctor_version", "")))} · report created '
        f'{escape(str(report.get("created_at", "")))}'
        + (f' · run directory <code>{escape(str(run["run_dir"]))}</code>' if run.get("run_dir") else "") + "</p>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(part for part in body if part) + "\n</main>\n</body>\n</html>\n")


# -- sections ------------------------------------------------------------------------------------------------
def _header(report: dict[str, Any]) -> str:
    run = report.get("run") or {}
    outcome = str(report.get("outcome", "unknown"))
    steps = report.get("steps") or 0
    facts = [f'<span class="outcome {escape(outcome)}">{escape(outcome)}</span> (exit {report.get("exit_code")})',
             f"{steps} optimizer step{'s' if steps != 1 else ''} in {format_duration(run.get('duration_s'))}"]
    if report.get("mean_step_time_s"):
        facts.append(f"{1 / report['mean_step_time_s']:.1f} steps/s")
    argv = " ".join(run.get("argv") or [])
    exception = report.get("exception")
    lines = [f"<header><h1>torchdoctor report: <code>{escape(str(run.get('target') or '?'))}</code></h1>",
             f"<p>{' · '.join(facts)}</p>"]
    if argv:
        lines.append(f'<p class="muted">command line: <code>{escape(argv)}</code></p>')
    if exception:
        lines.append(f'<p class="error">{escape(exception.get("type", ""))}: {escape(exception.get("message") or "")}'
                     "</p>")
    tensor = _tensor_peaks(report)
    if tensor:
        peak = max(tensor, key=lambda p: p["bytes"])
        lines.append(f'<p class="peak-figure" id="peak-figure">Peak tensor memory: '
                     f'<strong>{format_bytes(peak["bytes"])}</strong> on {escape(peak["device"])} ({_when(peak)})</p>')
    else:
        lines.append('<p class="peak-figure" id="peak-figure">Peak tensor memory: not measured '
                     '(tensor accounting was off or no step was measured)</p>')
    return "\n".join(lines) + "</header>"


def _peaks(report: dict[str, Any]) -> str:
    rows = [(p["device"], p.get("label", p["kind"]), format_bytes(p["bytes"]), peak_when(p))
            for p in report.get("peaks") or []]
    if not rows:
        return '<section id="peaks"><h2>Peak memory</h2><p>Nothing was measured.</p></section>'
    table = _table(("device", "what is measured", "peak", "when"), rows, numeric={2})
    budget = report.get("memory_budget_bytes")
    note = f"<p>Memory budget (--memory-budget): {format_bytes(budget)}</p>" if budget else ""
    accounting = report.get("accounting") or {}
    note += (f'<p class="muted">Tensor accounting: {escape(str(accounting.get("mode")))}, '
             f'{accounting.get("measured_steps", 0)} of {report.get("steps") or 0} steps counted exactly.</p>')
    note += "".join(f'<p class="muted">Not measured in detail: {escape(str(text))}.</p>'
                    for text in accounting.get("unmeasured") or [])
    return f'<section id="peaks"><h2>Peak memory</h2>{table}{note}</section>'


def _memory(report: dict[str, Any], draw: bool) -> str:
    samples = report.get("samples") or []
    parts = ['<section id="memory"><h2>Memory over steps</h2>']
    if not draw:
        parts.append(f'<p class="hint">Charts need matplotlib: <code>{escape(INSTALL_HINT)}</code>, then '
                     "<code>torchdoctor report RUN --html FILE</code> again.</p>")
    else:
        ooms = [a.get("oom") or {} for a in report.get("attempts") or []] + list(report.get("ooms") or [])
        oom_steps = [o["step"] for o in ooms if isinstance(o.get("step"), int)]
        svg = charts.memory_over_steps(samples, oom_steps)
        if svg:
            parts.append(f'<figure class="chart" id="chart-memory">{svg}<figcaption class="muted">Tensor bytes per '
                         "step: the peak of each measured step (solid) and of each phase in it (dashed); CUDA "
                         "allocator peaks where a GPU was used; dotted red lines: the steps where an attempt ran "
                         "out of memory.</figcaption></figure>")
        else:
            parts.append("<p>No step was measured (tensor accounting off, or the script took no optimizer "
                         "step).</p>")
        host = charts.host_memory_over_steps(samples)
        if host:
            parts.append(f'<figure class="chart" id="chart-host">{host}<figcaption class="muted">The process\'s '
                         "resident memory (host RAM: tensors, the Python heap, libraries).</figcaption></figure>")
    parts.append(_step_table(samples))
    return "\n".join(parts) + "</section>"


def _step_table(samples: list[dict[str, Any]], limit: int = 12) -> str:
    """The measured steps with the highest tensor peaks, as a table (readable without the charts)."""
    rows = []
    for sample in samples:
        for device, figures in (sample.get("devices") or {}).items():
            if isinstance(figures.get("tensor_peak"), int):
                rows.append((sample, device, figures))
    if not rows:
        return ""
    rows.sort(key=lambda r: -r[2]["tensor_peak"])
    cells = []
    for sample, device, figures in rows[:limit]:
        phases = figures.get("phase_peaks") or {}
        cells.append((f"{sample['step']}" + (" (after the last step)" if sample.get("span") == "tail" else ""),
                      device, format_bytes(figures["tensor_peak"]), figures.get("peak_phase") or "",
                      " · ".join(f"{p} {format_bytes(phases[p])}" for p in charts.PHASE_ORDER if p in phases)))
    title = f"<p>The {min(limit, len(rows))} measured steps with the highest tensor peak:</p>"
    return title + _table(("step", "device", "tensor peak", "phase at the peak", "peak by phase"), cells,
                          numeric={2})


def _at_the_peak(report: dict[str, Any], draw: bool) -> str:
    parts = []
    for peak in _tensor_peaks(report):
        parts.append(f'<h2>At the {escape(peak["device"])} tensor peak ({_when(peak)}): '
                     f'{format_bytes(peak["bytes"])}</h2>')
        breakdown = peak.get("breakdown") or {}
        if breakdown:
            svg = charts.breakdown_bar(breakdown) if draw else None
            if svg:
                parts.append(f'<figure class="chart" id="chart-breakdown-{escape(peak["device"])}">{svg}</figure>')
            total = peak["bytes"] or 1
            parts.append(_table(("held by", "bytes", "share"),
                                [(label, format_bytes(breakdown.get(key, 0)), f"{breakdown.get(key, 0) / total:.1%}")
                                 for key, label in CATEGORY_LABELS.items()], numeric={1, 2}))
        tensors = peak.get("top_tensors") or []
        if tensors:
            parts.append("<p>The largest tensors alive at the peak (each storage once, with the shape and dtype of "
                         "the tensor that made it, and the phase and module it was made in):</p>")
            parts.append(_table(("size", "shape", "dtype", "kind", "phase", "what"),
                                [(format_bytes(t["bytes"]), tensor_shape(t), t.get("dtype", ""),
                                  CATEGORY_LABELS.get(t.get("category", ""), t.get("category", "")),
                                  t.get("phase") or "", tensor_what(t)) for t in tensors], numeric={0},
                                table_id=f"top-tensors-{peak['device']}"))
    if not parts:
        return ""
    return '<section id="at-the-peak">' + "\n".join(parts) + "</section>"


def _recovery(report: dict[str, Any]) -> str:
    attempts = report.get("attempts") or []
    ooms = [a.get("oom") for a in attempts if a.get("oom")] or report.get("ooms") or []
    if not ooms and not report.get("recovery"):
        return '<section id="ooms"><h2>Out of memory</h2><p>No out-of-memory error.</p></section>'
    parts = ['<section id="ooms"><h2>Out of memory and recovery</h2>']
    if attempts:
        parts.append(_table(("attempt", "what happened", "steps", "seconds", "then"),
                            [(str(a.get("attempt")), a.get("summary") or a.get("outcome") or "",
                              str(a.get("steps", "")), f"{a.get('seconds', 0):.1f}", a.get("decision") or "")
                             for a in attempts],
                            numeric={2, 3}))
    rows = []
    for oom in ooms:
        rows.append((str(oom.get("step", "")), oom.get("phase") or "", oom.get("device") or "",
                     format_bytes(oom.get("requested_bytes")), format_bytes(oom.get("in_use_bytes")),
                     format_bytes(oom.get("capacity_bytes")), oom.get("backend") or ""))
    if rows:
        parts.append(_table(("step", "phase", "device", "tried to allocate", "in use", "capacity", "source"), rows,
                            numeric={3, 4, 5}))
    recovery = report.get("recovery") or {}
    if recovery.get("recovered"):
        facts = recovery_facts(recovery)
        parts.append(f'<p class="success">{escape(" · ".join(facts))}</p>')
        invariants = recovery.get("invariants") or []
        if invariants:
            parts.append(_table(("training as asked", "", "measured"),
                                [(INVARIANT_LABELS.get(i["key"], i["key"]), i["status"], i["evidence"])
                                 for i in invariants]))
        for change in training_changes(recovery):
            parts.append(f'<p class="error">training {escape(change)}</p>')
    elif recovery.get("gave_up"):
        parts.append(f'<p class="error">gave up: {escape(recovery["gave_up"])}</p>')
        for idea in recovery.get("suggestions") or []:
            parts.append(f"<p>• {escape(idea)}</p>")
    return "\n".join(parts) + "</section>"


def _findings(report: dict[str, Any]) -> str:
    findings = report.get("findings") or []
    if not findings:
        return '<section id="findings"><h2>Findings</h2><p>None: no training-loop problem was seen.</p></section>'
    items = []
    for f in findings:
        severity = escape(str(f.get("severity", "")))
        items.append(f'<li><p><span class="{severity}"><strong>{escape(f["id"])}</strong> {severity}</span>: '
                     f'{escape(f.get("title", ""))} <code>{escape(f.get("location") or "?")}</code></p>'
                     f'<p>evidence: {escape(f.get("evidence", ""))}</p><p>fix: {escape(f.get("fix", ""))}</p></li>')
    return (f'<section id="findings"><h2>Findings ({len(findings)})</h2><ul>{"".join(items)}</ul>'
            f'<p class="muted">More on each: <code>torchdoctor explain ID</code>.</p></section>')


def _environment(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    host, torch_info, gpus = env.get("host") or {}, env.get("torch") or {}, env.get("gpus") or {}
    rows = [("torch", f"{torch_info.get('version') or 'n/a'} (CUDA {torch_info.get('cuda_version') or 'n/a'})"),
            ("Python", str(host.get("python", "n/a"))),
            ("host", f"{host.get('platform', 'n/a')} · {host.get('cpu_count', 'n/a')} CPUs · "
                     f"{format_bytes(host.get('memory_total_bytes'))} RAM")]
    for gpu in gpus.get("gpus") or []:
        rows.append((f"gpu{gpu.get('index')}", f"{gpu.get('name')} · {format_bytes(gpu.get('total_bytes'))}"))
    if not gpus.get("gpus"):
        rows.append(("GPUs", f"none: {gpus.get('explanation', 'not probed')}"))
    return f'<section id="environment"><h2>Environment</h2>{_table(("", ""), rows, header=False)}</section>'


# -- helpers -------------------------------------------------------------------------------------------------
def _tensor_peaks(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in report.get("peaks") or [] if p.get("kind") == "tensor_bytes"]


def _when(peak: dict[str, Any]) -> str:
    return escape(peak_when(peak))


def _table(headers: tuple[str, ...], rows: Sequence[tuple[object, ...]],
           numeric: frozenset[int] | set[int] = frozenset(), header: bool = True, table_id: str | None = None) -> str:
    def cell(tag: str, i: int, value: object) -> str:
        return f'<{tag}{" class=num" if i in numeric else ""}>{escape(str(value))}</{tag}>'

    head = "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers)) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return f"<table{ident}>{head}{body}</table>"

"""The end-of-run terminal report, rendered from a report dict (so ``torchdoctor report`` shows the same)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from torchdoctor.events import PHASES
from torchdoctor.reporters.text import (
    CATEGORY_LABELS,
    INVARIANT_LABELS,
    format_duration,
    peak_when,
    recovery_facts,
    sparkline,
    stall_and_stop,
    tensor_shape,
    tensor_what,
)
from torchdoctor.sizes import format_bytes

OUTCOME_STYLE = {"success": "green", "failed": "red", "killed": "red", "interrupted": "yellow"}


def _headline(report: dict[str, Any]) -> Text:
    outcome = report.get("outcome", "unknown")
    text = Text()
    text.append(f"{outcome}", style=f"bold {OUTCOME_STYLE.get(outcome, '')}")
    text.append(f" (exit {report.get('exit_code')})")
    if report.get("signal"):
        text.append(f" by {report['signal']}")
    steps = report.get("steps") or 0
    text.append(f"  ·  {steps} optimizer step{'s' if steps != 1 else ''}")
    run = report.get("run") or {}
    text.append(f" in {format_duration(run.get('duration_s'))}")
    mean = report.get("mean_step_time_s")
    if mean:
        text.append(f"  ·  {1 / mean:.1f} steps/s")
    exception = report.get("exception")
    if exception:
        message = exception.get("message")
        rank = f"rank {exception['rank']}: " if exception.get("rank") is not None else ""
        text.append(f"\n{rank}{exception['type']}" + (f": {message}" if message else ""), style="red")
    cause = (report.get("distributed") or {}).get("root_cause")
    if cause and cause.get("signal") and not exception:
        text.append(f"\nrank {cause['rank']} was killed by {cause['signal']}", style="red")
    return text


def _peaks_table(report: dict[str, Any]) -> Table:
    first = next((r for r in (report.get("distributed") or {}).get("ranks") or [] if r.get("events") == "events.jsonl"),
                 None)
    title = "Peak memory" + (f" (rank {first['rank']}; every rank's: Ranks, below)" if first else "")
    table = Table(title=title, title_justify="left", expand=False, show_edge=False)
    table.add_column("device")
    table.add_column("what is measured")
    table.add_column("peak", justify="right")
    table.add_column("when")
    for peak in report.get("peaks", []):
        table.add_row(peak["device"], peak.get("label", peak["kind"]), format_bytes(peak["bytes"]), peak_when(peak))
    if not report.get("peaks"):
        table.add_row("-", "nothing was measured", "n/a", "")
    return table


def _breakdown(peak: dict[str, Any]) -> Table:
    total = peak["bytes"] or 1
    table = Table(title=f"At the {peak['device']} tensor peak ({peak_when(peak)})", title_justify="left",
                  show_edge=False, show_header=False)
    table.add_column("category")
    table.add_column("bytes", justify="right")
    table.add_column("share", justify="right")
    table.add_column("bar")
    for key, label in CATEGORY_LABELS.items():
        value = (peak.get("breakdown") or {}).get(key, 0)
        share = value / total
        table.add_row(label, format_bytes(value), f"{share:5.1%}", "█" * round(share * 30))
    return table


def _top_tensors(peak: dict[str, Any], count: int = 5) -> Table | None:
    tensors = (peak.get("top_tensors") or [])[:count]
    if not tensors:
        return None
    table = Table(title="Largest tensors alive at that peak", title_justify="left", show_edge=False)
    table.add_column("size", justify="right")
    table.add_column("shape")
    table.add_column("dtype")
    table.add_column("kind")
    table.add_column("phase")
    table.add_column("what")
    for tensor in tensors:
        table.add_row(format_bytes(tensor["bytes"]), tensor_shape(tensor), tensor.get("dtype", ""),
                      CATEGORY_LABELS.get(tensor.get("category", ""), tensor.get("category", "")),
                      tensor.get("phase") or "", tensor_what(tensor))
    return table


def _phase_line(peak: dict[str, Any]) -> Text | None:
    phases = peak.get("phase_peaks") or {}
    if not phases:
        return None
    order = list(PHASES)
    parts = [f"{p} {format_bytes(phases[p])}" for p in order if p in phases]
    return Text(f"Peak by phase in that span: {' · '.join(parts)}")


def _timeline(report: dict[str, Any], width: int) -> Table | None:
    samples = [s for s in report.get("samples", []) if s.get("span") == "step"]
    if not samples:
        return None
    table = Table(title="Per-step timeline", title_justify="left", show_edge=False, show_header=False)
    table.add_column("series", no_wrap=True)
    table.add_column("chart", no_wrap=True)
    table.add_column("range")
    devices = sorted({d for s in samples for d in s.get("devices", {})})
    for device in devices:
        for key, name in (("tensor_peak", "tensor peak"), ("cuda_allocated_peak", "CUDA allocated peak")):
            values = [s.get("devices", {}).get(device, {}).get(key) for s in samples]
            known = [v for v in values if v is not None]
            if known:
                note = f"{format_bytes(min(known))} – {format_bytes(max(known))}"
                if len(known) < len(values):
                    note += f" ({len(known)} of {len(values)} steps measured)"
                table.add_row(f"{device} {name}", sparkline(values, width), note)
    rss = [s.get("rss_bytes") for s in samples]
    known = [v for v in rss if v is not None]
    if known:
        spread = f"{format_bytes(min(known))} – {format_bytes(max(known))}"
        table.add_row("process RSS", sparkline(rss, width), spread)
    table.add_row("", f"steps 1 … {samples[-1]['step']}", "")
    return table


def _environment(report: dict[str, Any]) -> Text:
    env = report.get("environment") or {}
    host = env.get("host") or {}
    torch_info = env.get("torch") or {}
    gpus = env.get("gpus") or {}
    lines = [
        "Environment",
        f"  torch {torch_info.get('version') or 'n/a'} · CUDA {torch_info.get('cuda_version') or 'n/a (CPU build)'}"
        f" · Python {host.get('python', 'n/a')}",
        f"  host: {host.get('platform', 'n/a')} · {host.get('cpu_count', 'n/a')} CPUs · "
        f"{format_bytes(host.get('memory_total_bytes'))} RAM",
    ]
    listed = gpus.get("gpus") or []
    if listed:
        for g in listed:
            lines.append(f"  gpu{g['index']}: {g['name']} · {format_bytes(g.get('total_bytes'))} · "
                         f"driver {g.get('driver') or 'n/a'}")
    else:
        lines.append(f"  GPUs: none — {gpus.get('explanation', 'not probed')}")
    return Text("\n".join(lines))


def _findings(report: dict[str, Any]) -> Group:
    findings = report.get("findings") or []
    if not findings:
        return Group(Text("Findings: none."))
    rows = [Text(f"Findings ({len(findings)}):", style="bold")]
    for f in findings:
        style = {"error": "red", "warning": "yellow"}.get(f["severity"], "")
        ranks = f.get("ranks")
        only = f" (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} only)" if ranks else ""
        rows.append(Text(f"  {f['id']} {f['severity']}: {f['title']} [{f.get('location') or '?'}]{only}",
                         style=style))
        rows.append(Text(f"      evidence: {f['evidence']}"))
        rows.append(Text(f"      fix: {f['fix']}"))
    rows.append(Text(f"  more: torchdoctor explain {findings[0]['id']}", style="dim"))
    return Group(*rows)


STATUS_STYLE = {"kept": ("✓", "green"), "changed": ("✗", "bold red"), "unknown": ("?", "bold yellow")}


def _invariants(recovery: dict[str, Any]) -> list[Text]:
    """The training as asked against as done, one line per invariant, what was not kept loud."""
    invariants = recovery.get("invariants")
    if not invariants:
        return []
    rows = []
    if any(i["status"] == "changed" for i in invariants):
        rows.append(Text("  TRAINING CHANGED: the recovered run did not train as the script asked", style="bold red"))
    elif any(i["status"] == "unknown" for i in invariants):
        rows.append(Text("  training may have changed: not everything could be measured", style="bold yellow"))
    for item in invariants:
        mark, style = STATUS_STYLE.get(item["status"], ("?", ""))
        label = INVARIANT_LABELS.get(item["key"], item["key"])
        rows.append(Text(f"    {mark} {label} {item['status']}: {item['evidence']}",
                         style=style if item["status"] != "kept" else ""))
    return rows


def _recovery(report: dict[str, Any]) -> Group | None:
    attempts = report.get("attempts") or []
    recovery = report.get("recovery")
    if not recovery:
        return None
    rows = [Text("Out of memory and recovery", style="bold")]
    for attempt in attempts:
        rows.append(Text(f"  attempt {attempt['attempt']}: {attempt.get('summary', attempt.get('outcome'))}"))
        if attempt.get("next_remedy"):
            rows.append(Text(f"    → {attempt['decision']}", style="cyan"))
            passed = [p for p in attempt.get("passed_over") or [] if "not in evaluation" not in p
                      and "not in optimizer.step" not in p]
            if passed:
                rows.append(Text("      not used: " + "; ".join(p if len(p) <= 90 else p[:89] + "…" for p in passed),
                                 style="dim"))
    if recovery.get("recovered"):
        rows.append(Text("  " + " · ".join(recovery_facts(recovery)), style="green"))
        rows += _invariants(recovery)
    elif recovery.get("gave_up"):
        rows.append(Text(f"  gave up: {recovery['gave_up']}", style="red"))
        oom = (attempts[-1].get("oom") or {}) if attempts else {}
        breakdown = oom.get("breakdown") or {}
        if breakdown:
            held = " · ".join(f"{CATEGORY_LABELS[k]} {format_bytes(v)}" for k, v in breakdown.items()
                              if k in CATEGORY_LABELS)
            rows.append(Text(f"  at the OOM the device held: {held}"))
        alive = recovery.get("held_at_oom") or []
        if alive:
            rows.append(Text("  largest tensors alive at the OOM: " + "; ".join(
                f"{format_bytes(t['bytes'])} {tensor_shape(t)} {t.get('dtype', '')} ({tensor_what(t)})"
                for t in alive[:4])))
        for idea in recovery.get("suggestions") or []:
            rows.append(Text(f"  • {idea}"))
    return Group(*rows)


def _ranks(report: dict[str, Any]) -> Group | None:
    """A run under torch's launcher: each rank's steps, peak and end; where the failure began; memory imbalance."""
    distributed = report.get("distributed")
    if not distributed:
        return None
    table = Table(title=f"Ranks ({distributed.get('world_size') or '?'} in the run; this machine's)",
                  title_justify="left", expand=False, show_edge=False)
    for column in ("rank", "steps", "peak", "ended"):
        table.add_column(column, justify="right" if column in ("steps", "peak") else "left")
    for rank in distributed.get("ranks") or []:
        peak = rank.get("peak")
        figure = f"{format_bytes(peak['bytes'])} {peak['device']} {peak['kind'].replace('_', ' ')}" if peak else "n/a"
        table.add_row(str(rank.get("rank")), str(rank.get("steps", 0)), figure, rank.get("ended", ""))
    parts: list[Any] = [table]
    cause = distributed.get("root_cause")
    if cause:
        parts.append(Text(f"Root cause: {cause['why']}", style="red"))
    imbalance = (distributed.get("imbalance") or {}).get("message")
    if imbalance:
        parts.append(Text(imbalance[:1].upper() + imbalance[1:], style="yellow"))
    return Group(*parts)


def _accounting_note(report: dict[str, Any]) -> Text:
    acc = report.get("accounting") or {}
    mode = acc.get("mode")
    measured = acc.get("measured_steps", 0)
    steps = report.get("steps", 0)
    if mode == "off":
        return Text("Tensor accounting was off (--accounting off): tensor figures are not measured.")
    text = f"Tensor accounting: {mode}, {measured} of {steps} steps counted exactly"
    if mode == "sampled":
        text += " (first steps, then spaced out; --accounting exact counts every step)"
    lines = [text + "."] + [f"  Not measured in detail: {note}." for note in acc.get("unmeasured") or []]
    return Text("\n".join(lines))


def render_report(report: dict[str, Any], console: Console) -> None:
    """Print the end-of-run report."""
    run = report.get("run") or {}
    parts: list[Any] = [_headline(report), Text(""), _peaks_table(report)]
    tensor_peaks = [p for p in report.get("peaks", []) if p["kind"] == "tensor_bytes" and p.get("breakdown")]
    for peak in tensor_peaks:
        parts += [Text(""), _breakdown(peak)]
        phase_line = _phase_line(peak)
        if phase_line is not None:
            parts.append(phase_line)
        top = _top_tensors(peak)
        if top is not None:
            parts += [Text(""), top]
    ranks = _ranks(report)
    if ranks is not None:
        parts += [Text(""), ranks]
    recovery = _recovery(report)
    if recovery is not None:
        parts += [Text(""), recovery]
    timeline = _timeline(report, max(20, min(60, console.width - 70)))
    if timeline is not None:
        parts += [Text(""), timeline]
    parts += [Text(""), _accounting_note(report), _environment(report), _findings(report)]
    parts += [Text(line[:1].upper() + line[1:] + ".", style="yellow") for line in stall_and_stop(report)]
    dropped = report.get("dropped_events")
    if dropped:
        parts.append(Text(f"{dropped} events were dropped (the event queue was full).", style="yellow"))
    if run.get("run_dir"):
        parts.append(Text(f"Run directory: {run['run_dir']}"))
    title = f"torchdoctor · {run.get('target') or '?'}"
    console.print(Panel(Group(*parts), title=title, title_align="left", expand=False))

"""The memory gate of ``torchdoctor ci``: the figures of a run's report against a budget and a baseline.

Pure functions on report.json data (no torch): what is measured (peak tensor bytes per device, exact and the same
from run to run, with the peak of each phase; on a GPU also the CUDA allocator's allocated and reserved peaks),
the baseline file, the verdict, and its Markdown and JUnit renderings.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from torchdoctor.checks import at_or_above
from torchdoctor.errors import UsageError
from torchdoctor.events import PHASES
from torchdoctor.files import write_text_atomic
from torchdoctor.sizes import format_bytes

BASELINE_SCHEMA = "torchdoctor.baseline"
BASELINE_VERSION = 1


@dataclass(frozen=True)
class Row:
    key: str  # "tensor_bytes:cpu", "tensor_bytes:cpu:backward", "cuda_reserved:cuda:0"
    label: str
    current: int
    baseline: int | None
    budget: int | None
    gated: bool  # a peak the verdict looks at (phase rows are shown, not gated)
    problem: str | None  # why it fails, or None

    @property
    def change(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return (self.current - self.baseline) / self.baseline


def measured_figures(report: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """key -> (label, bytes) from a report's peaks: tensor bytes per device and phase; CUDA allocator peaks."""
    figures: dict[str, tuple[str, int]] = {}
    for peak in report.get("peaks") or []:
        kind, device, value = peak.get("kind"), peak.get("device"), peak.get("bytes")
        if not isinstance(value, int) or not kind or not device:
            continue
        if kind == "tensor_bytes":
            figures[f"tensor_bytes:{device}"] = (f"peak tensor bytes ({device})", value)
            run_phases = peak.get("run_phase_peaks") or {}  # over all measured steps (older reports: the peak's)
            for phase in PHASES:
                if phase in run_phases:
                    where = run_phases[phase]
                    at = f"step {where['step']}" if where.get("span") == "step" else "after the last step"
                    figures[f"tensor_bytes:{device}:{phase}"] = (f"  in {phase} ({at})", where["bytes"])
                    continue
                phase_value = (peak.get("phase_peaks") or {}).get(phase)
                if isinstance(phase_value, int):
                    figures[f"tensor_bytes:{device}:{phase}"] = (f"  in {phase}", phase_value)
        elif kind.startswith("cuda_"):
            figures[f"{kind}:{device}"] = (f"peak CUDA {kind.removeprefix('cuda_')} ({device})", value)
    return figures


def evaluate(report: dict[str, Any], budget: int | None, baseline: dict[str, int] | None,
             max_increase: float) -> tuple[list[Row], list[str]]:
    """The table rows and the reasons the gate fails (empty: it passes)."""
    problems: list[str] = []
    if report.get("outcome") != "success":
        problems.append(f"the script did not finish its steps: {report.get('outcome')} "
                        f"(exit {report.get('exit_code')})")
    figures = measured_figures(report)
    if not report.get("steps") or not any(key.startswith("tensor_bytes:") for key in figures):
        problems.append("nothing was measured (no optimizer step with tensor accounting): a gate on nothing fails")
    rows = []
    for key, (label, value) in figures.items():
        gated = key.count(":") == 1 or key.startswith("cuda_")
        before = baseline.get(key) if baseline else None
        limit = budget if key.startswith("tensor_bytes:") and gated else None
        problem = None
        if limit is not None and value > limit:
            problem = f"{label} {format_bytes(value)} is over the budget of {format_bytes(limit)}"
        elif gated and before is not None and value > before * (1 + max_increase):
            problem = (f"{label} {format_bytes(value)} grew {(value - before) / max(before, 1):+.1%} over the "
                       f"baseline {format_bytes(before)} (allowed {max_increase:+.1%})")
        if problem:
            problems.append(problem)
        rows.append(Row(key, label, value, before, limit, gated, problem))
    return rows, problems


def finding_problems(findings: list[dict[str, Any]], fail_on: str | None) -> list[str]:
    """The doctor's findings that fail the gate under ``--fail-on`` (none without it)."""
    if fail_on is None:
        return []
    return [f"{f['id']} {f['severity']}: {f['title']} at {f.get('location') or '?'} ({f.get('evidence', '')})"
            for f in findings if at_or_above(f.get("severity", "info"), fail_on)]


# -- the baseline file ------------------------------------------------------------------------------------------
def read_baseline(path: str) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"no baseline at {path}; record one with --update-baseline") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"baseline {path} cannot be read ({exc}); record it again with --update-baseline") from None
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise UsageError(f"{path} is not a torchdoctor baseline; record one with --update-baseline")
    if data.get("schema_version") != BASELINE_VERSION:
        raise UsageError(f"baseline {path} has schema version {data.get('schema_version')!r}, this torchdoctor "
                         f"reads {BASELINE_VERSION}; record it again with --update-baseline")
    figures = data.get("figures")
    if not isinstance(figures, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                for v in figures.values()):
        raise UsageError(f"baseline {path} has no valid figures; record it again with --update-baseline")
    return figures


def write_baseline(path: str, report: dict[str, Any], steps: int) -> dict[str, int]:
    """Write the report's figures as the new baseline, atomically (a crash leaves the old one)."""
    figures = {key: value for key, (_, value) in measured_figures(report).items()}
    data = {"schema": BASELINE_SCHEMA, "schema_version": BASELINE_VERSION, "created_at": time.time(),
            "script": (report.get("run") or {}).get("argv"), "steps": steps, "figures": figures}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))
    return figures


# -- renderings --------------------------------------------------------------------------------------------------
def _cells(row: Row) -> list[str]:
    change = row.change
    delta = "" if row.baseline is None else f"{format_bytes(row.current - row.baseline)}"
    if change is not None:
        delta += f" ({change:+.1%})"
    status = "" if not row.gated else ("FAIL" if row.problem else "ok")
    return [row.label, format_bytes(row.current), "—" if row.baseline is None else format_bytes(row.baseline),
            "—" if row.budget is None else format_bytes(row.budget), delta or "—", status]


HEADER = ["figure", "current", "baseline", "budget", "change", "status"]


def text_table(rows: list[Row]) -> str:
    table = [HEADER] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def markdown(rows: list[Row], problems: list[str], script: str, steps: int, findings: list[dict[str, Any]]) -> str:
    verdict = "❌ fails" if problems else "✅ passes"
    lines = [f"### torchdoctor ci: {script} {verdict}", "",
             f"{steps} optimizer steps, exact tensor accounting.", "",
             "| " + " | ".join(HEADER) + " |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        cells = [c.replace("|", "\\|").strip() or " " for c in _cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    if problems:
        lines += [""] + [f"- {p}" for p in problems]
    if findings:
        lines += ["", "Training-loop findings:", ""]
        lines += [f"- **{f['id']}** ({f['severity']}) {f['title']} at `{f.get('location') or '?'}`: {f['evidence']}"
                  for f in findings]
    return "\n".join(lines) + "\n"


def junit(rows: list[Row], problems: list[str], script: str, seconds: float,
          findings: list[dict[str, Any]] | None = None, failing_findings: list[str] | None = None) -> str:
    """One test suite: a test case for the run itself, one per gated figure, and one for the training-loop checks
    (failing on the findings ``--fail-on`` selects; every finding is listed in its output)."""
    cases: list[tuple[str, list[str], str]] = []
    run_problems = [p for p in problems if not any(p == row.problem for row in rows) and p not in
                    (failing_findings or [])]
    cases.append(("run", run_problems, ""))
    for row in rows:
        if row.gated:
            cases.append((row.label, [row.problem] if row.problem else [], ""))
    listed = "\n".join(f"{f['id']} {f['severity']}: {f['title']} at {f.get('location') or '?'}: {f['evidence']}"
                        for f in findings or [])
    cases.append(("training-loop checks", list(failing_findings or []), listed))
    failures = sum(1 for _, found, _ in cases if found)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuites name="torchdoctor ci" tests="{len(cases)}" failures="{failures}" errors="0" '
           f'time="{seconds:.3f}">',
           f'  <testsuite name={quoteattr("torchdoctor ci " + script)} tests="{len(cases)}" failures="{failures}" '
           f'errors="0" skipped="0" time="{seconds:.3f}">']
    for name, found, output in cases:
        out.append(f'    <testcase classname="torchdoctor.ci" name={quoteattr(name.strip())} time="0">')
        for problem in found:
            out.append(f'      <failure message={quoteattr(problem)} type="MemoryGate">{escape(problem)}</failure>')
        if output:
            out.append(f"      <system-out>{escape(output)}</system-out>")
        out.append("    </testcase>")
    out += ["  </testsuite>", "</testsuites>"]
    return "\n".join(out) + "\n"

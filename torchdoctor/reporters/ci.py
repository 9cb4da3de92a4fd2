"""``torchdoctor ci``'s verdict rendered: a text table for the terminal, Markdown for a pull request or GitHub's job
summary, JUnit XML for CI test views."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from torchdoctor.sizes import format_bytes
from torchdoctor.supervisor.gate import Row


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

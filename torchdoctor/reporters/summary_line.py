"""One line that says how a run ended and its main figure (for --quiet and logs)."""

from __future__ import annotations

import os
from typing import Any

from torchdoctor.reporters.text import stall_and_stop, training_changes_short
from torchdoctor.sizes import format_bytes


def summary_line(report: dict[str, Any]) -> str:
    parts = [f"[torchdoctor] {report.get('outcome')} (exit {report.get('exit_code')})",
             f"{report.get('steps', 0)} steps"]
    for peak in report.get("peaks", []):
        if peak["kind"] in ("tensor_bytes", "cuda_allocated"):
            if peak.get("span") == "tail":
                when = " after the last step" if peak.get("step") else ""
            else:
                when = f" at step {peak['step']}" if peak.get("step") is not None else ""
            phase = f" ({peak['phase']})" if peak.get("phase") else ""
            parts.append(f"peak {peak['device']} {peak['kind'].replace('_', ' ')} {format_bytes(peak['bytes'])}"
                         f"{when}{phase}")
    distributed = report.get("distributed") or {}
    if distributed:
        parts.append(f"{len(distributed.get('ranks') or [])} ranks")
        if distributed.get("root_cause"):
            parts.append(f"root cause: {distributed['root_cause']['why'].split(';')[0]}")
        imbalance = distributed.get("imbalance")
        if imbalance:
            parts.append(f"memory imbalance: rank {imbalance['rank']} peak {format_bytes(imbalance['bytes'])}, the "
                         f"others {format_bytes(imbalance['others_bytes'])}")
    recovery = report.get("recovery") or {}
    if recovery.get("recovered"):
        changed = training_changes_short(recovery)
        if changed:
            parts.append(changed.replace("training changed:", "TRAINING CHANGED:", 1))
        elif recovery.get("invariants"):
            parts.append(f"recovered ({', '.join(recovery.get('remedies') or [])}); training kept, as measured")
    parts += stall_and_stop(report)
    findings = report.get("findings") or []
    if findings:
        ids = ", ".join(sorted({f["id"] for f in findings}))
        parts.append(f"{len(findings)} finding{'s' if len(findings) > 1 else ''} ({ids}: torchdoctor explain ID)")
    run_dir = (report.get("run") or {}).get("run_dir")
    if run_dir:
        parts.append(f"report: {os.path.join(run_dir, 'report.json')}")
    return " · ".join(parts)

"""The doctor's findings of a run under torch's launcher: every rank's doctor writes its findings to its own event
stream (``events.jsonl``, ``events-rank{R}.jsonl``); the report lists each finding once.

A finding is one problem at one place: its ``id`` and ``location``. When every rank that ran reported it, it is
listed once, as the lowest rank worded it; otherwise it carries ``ranks``, the ranks that had it (a loop that
differs by rank, such as evaluation or a save on rank 0 only). Pure: no torch, no I/O.
"""

from __future__ import annotations

from typing import Any

from torchdoctor.supervisor.state import RunState


def _entry(finding: Any) -> dict[str, Any]:
    return {k: v for k, v in finding.to_dict().items() if k not in ("v", "kind")}


def merged_findings(main: RunState, others: dict[str, RunState]) -> list[dict[str, Any]]:
    """The report's findings: the first rank's alone in one process; every rank's, merged, under torch's
    launcher (``others``: the other ranks' states)."""
    if not others:
        return [_entry(f) for f in main.findings]
    ranked = []
    for position, state in enumerate([main, *others.values()]):
        started = state.started
        rank = started.rank if started is not None and started.rank is not None else (0 if position == 0 else None)
        if rank is not None and started is not None:
            ranked.append((rank, state))
    ranked.sort(key=lambda pair: pair[0])
    listed: dict[tuple[str, str | None], dict[str, Any]] = {}
    had: dict[tuple[str, str | None], set[int]] = {}
    for rank, state in ranked:
        for finding in state.findings:
            key = (finding.id, finding.location)
            listed.setdefault(key, _entry(finding))
            had.setdefault(key, set()).add(rank)
    every = {rank for rank, _ in ranked}
    for key, entry in listed.items():
        if had[key] != every:
            entry["ranks"] = sorted(had[key])
    return list(listed.values())

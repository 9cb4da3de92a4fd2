"""The report: one JSON-able dict built from a RunState. ``report.json`` is this dict; every renderer
(terminal, and later Markdown/HTML) reads it, so a recorded run re-renders exactly.

The schema is documented in ``docs/report-schema.md``; bump ``REPORT_SCHEMA_VERSION`` on any change that
removes or renames a key.
"""

from __future__ import annotations

import time
from typing import Any

from torchdoctor import __version__
from torchdoctor.errors import UsageError
from torchdoctor.events import MemorySample
from torchdoctor.files import read_versioned_json
from torchdoctor.supervisor.coverage import unmeasured_peaks
from torchdoctor.supervisor.failures import suggestions
from torchdoctor.supervisor.invariants import changes, training_invariants
from torchdoctor.supervisor.rank_findings import merged_findings
from torchdoctor.supervisor.ranks import RankStreams, distributed_summary
from torchdoctor.supervisor.state import RunState

REPORT_SCHEMA = "torchdoctor.report"
REPORT_SCHEMA_VERSION = 1

KIND_LABELS = {
    "tensor_bytes": "tensor bytes (exact, counted per storage)",
    "cuda_allocated": "CUDA allocated (caching allocator)",
    "cuda_reserved": "CUDA reserved (caching allocator)",
    "device_used": "device used (NVML, whole GPU)",
    "process_rss": "process RSS (host memory)",
    "workers_rss": "child processes' RSS (DataLoader workers)",
    "cgroup_peak": "cgroup memory peak (the kernel's, every process in the group)",
}


def _sample_dict(sample: MemorySample) -> dict[str, Any]:
    data = sample.to_dict()
    data.pop("v")
    data.pop("kind")
    return data


def _status(invariants: list[dict[str, Any]] | None, key: str) -> bool | None:
    """True when the invariant was measured kept, False when changed, None when unknown or not measured."""
    for item in invariants or []:
        if item["key"] == key:
            return {"kept": True, "changed": False}.get(item["status"])
    return None


def recovery_summary(attempts: list[dict[str, Any]], outcome: str) -> dict[str, Any] | None:
    """What recovering cost: None when the first attempt was the last and did not run out of memory."""
    if not attempts or (len(attempts) == 1 and not attempts[0].get("oom")):
        return None
    earlier = attempts[:-1]
    last_plan = attempts[-1].get("plan") or {}
    redone = 0
    lost = 0.0
    for attempt, following in zip(earlier, attempts[1:]):
        resume = following.get("resume") or {}
        kept = (resume.get("step") or 0) if resume.get("status") == "resumed" else 0
        steps = attempt.get("steps", 0)
        redone += max(0, steps - kept)
        # the share of the attempt's time spent on steps that were trained again (all of it without a resume)
        lost += attempt.get("seconds", 0.0) * ((steps - kept) / steps if steps and kept else 1.0)
    last_resume = attempts[-1].get("resume") or {}
    invariants = training_invariants(attempts) if outcome == "success" else None
    restarted_from = None
    if earlier:
        restarted_from = (f"checkpoint of step {last_resume.get('step')}" if last_resume.get("status") == "resumed"
                          else "beginning")
    return {
        "recovered": len(attempts) > 1 and outcome == "success",
        "attempts": len(attempts),
        "remedies": list(last_plan.get("applied", [])),
        "restarted_from": restarted_from,
        "steps_redone": redone,
        "seconds_lost": round(lost, 3),
        "effective_batch_kept": _status(invariants, "samples_per_step"),
        "numerics_changed": None if _status(invariants, "numerics") is None
        else not _status(invariants, "numerics"),
        "invariants": invariants,
        "training_changed": changes(invariants),
        "gave_up": attempts[-1].get("decision") if outcome != "success" else None,
        "suggestions": (suggestions((attempts[-1].get("oom") or {}).get("breakdown"),
                                    (attempts[-1].get("oom") or {}).get("top_tensors"))
                        if outcome != "success" and attempts[-1].get("oom") else []),
        "held_at_oom": ((attempts[-1].get("oom") or {}).get("top_tensors") or []) if outcome != "success" else [],
    }


def build_report(state: RunState, *, run_dir: str | None, environment: dict[str, Any],
                 attempts: list[dict[str, Any]] | None = None, memory_budget: int | None = None,
                 distributed: dict[str, Any] | None = None,
                 ranks: dict[str, RunState] | None = None) -> dict[str, Any]:
    """``ranks``: under torch's launcher, the other ranks' states (their findings are merged with the first's)."""
    started = state.started
    exited = state.exited
    finished = state.finished
    duration = (state.last_t - state.first_t) if state.first_t and state.last_t else None
    outcome: str  # an Outcome, or "unknown" when the process's end was not recorded
    if exited is not None:
        outcome, exit_code = exited.outcome, exited.exit_code
    elif finished is not None:
        outcome, exit_code = ("success" if finished.exit_code == 0 else "failed"), finished.exit_code
    else:
        outcome, exit_code = "unknown", None
    peaks = sorted(state.peaks.values(), key=lambda p: (p.device != "cpu", p.device, p.kind))
    for peak in peaks:
        if peak.kind == "tensor_bytes" and state.phase_peaks.get(peak.device):
            peak.run_phase_peaks = state.phase_peaks[peak.device]
    exception = ({"type": finished.exception, "message": finished.message}
                 if finished and finished.exception else None)
    cause = (distributed or {}).get("root_cause")
    if cause is not None:  # several ranks: the rank where the failure began, not the first rank's network error
        exception = {**cause["exception"], "rank": cause["rank"]} if cause["exception"] else None
    step_samples = [s for s in state.samples if s.span == "step"]
    step_times = [s.step_time_s for s in step_samples[1:] if s.step_time_s]
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "torchdoctor_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": {
            "target": started.target if started else None,
            "is_module": started.is_module if started else None,
            "argv": started.argv if started else None,
            "run_dir": run_dir,
            "started_at": state.first_t,
            "duration_s": duration,
            "attempts": len(attempts) if attempts else 1,
        },
        "outcome": outcome,
        "exit_code": exit_code,
        "signal": exited.signal if exited else None,
        "exception": exception,
        "environment": environment,
        "accounting": {
            "mode": started.accounting if started else None,
            "sample_every": started.sample_every if started else None,
            "measured_steps": state.measured_steps,
            "cpu_figures": started.cpu_figures if started else None,
            "unmeasured": unmeasured_peaks(state, started.cpu_figures if started else None),
        },
        "steps": state.steps,
        "mean_step_time_s": sum(step_times) / len(step_times) if step_times else None,
        "peaks": [{**p.to_dict(), "label": KIND_LABELS.get(p.kind, p.kind)} for p in peaks],
        "samples": [_sample_dict(s) for s in state.samples],
        "events": [e.to_dict() for e in [*state.notes] + ([finished] if finished else [])
                   + ([exited] if exited else [])],
        "findings": merged_findings(state, ranks or {}),
        "dropped_events": finished.dropped_events if finished else None,
        "memory_budget_bytes": memory_budget,
        "ooms": [{k: v for k, v in o.to_dict().items() if k not in ("v", "kind")} for o in state.ooms],
        "attempts": attempts or [],
        "recovery": recovery_summary(attempts or [], outcome),
        "stall": ({k: v for k, v in state.stall.to_dict().items() if k not in ("v", "kind", "t")}
                  if state.stall else None),
        "stop": exited.stop if exited else None,
        "distributed": distributed,  # a run under torch's launcher: each rank's figures and end (supervisor/ranks.py)
    }


def load_report(path: str) -> dict[str, Any]:
    """Read a report.json (or a run directory holding one); one-line UsageError on anything wrong."""
    import os

    if os.path.isdir(path):
        events = os.path.join(path, "events.jsonl")
        path = os.path.join(path, "report.json")
        if not os.path.exists(path) and os.path.exists(events):
            return rebuild_report(os.path.dirname(path), events)
    data = read_versioned_json(path, REPORT_SCHEMA, REPORT_SCHEMA_VERSION, {
        "missing": f"no report at {path} (give a run directory or its report.json)",
        "unreadable": f"cannot read report {path}: {{detail}}",
        "foreign": f"{path} is not a torchdoctor report",
        "version": f"{path} has report schema version {{detail}}, this torchdoctor reads {REPORT_SCHEMA_VERSION}"})
    _check_shape(data, path)
    return data


def rebuild_report(run_dir: str, events_path: str) -> dict[str, Any]:
    """The report of a run whose supervisor ended before writing report.json (killed, out of disk), from the
    agent's event stream; a line the agent did not finish writing is left out. Says that it was rebuilt."""
    from torchdoctor.events import EventError, Note, event_from_json
    from torchdoctor.supervisor.state import fold

    events = []
    try:
        with open(events_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    events.append(event_from_json(line))
                except (EventError, ValueError, TypeError, KeyError, RecursionError):
                    continue
    except OSError as exc:
        raise UsageError(f"cannot read {events_path}: {exc.strerror or exc}") from None
    if not events:
        raise UsageError(f"no report in {run_dir}: report.json is missing and events.jsonl holds no event")
    state = fold(events)
    ranks = RankStreams(run_dir)
    ranks.read()
    state.notes.append(Note(level="warning", step=None, message=(
        "rebuilt from events.jsonl: the supervisor ended before it wrote report.json (the process's exit and the "
        "supervisor's own figures are missing)")))
    return build_report(state, run_dir=run_dir, environment={},
                        distributed=distributed_summary(state, ranks.states, stopped=False), ranks=ranks.states)


# The fields the renderers read, and what each must be (docs/report-schema.md has them all).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "run": dict, "accounting": dict, "steps": int, "peaks": list, "samples": list, "events": list,
    "findings": list, "recovery": dict, "attempts": list, "exit_code": int, "outcome": str,
}
_ITEM_FIELDS = {"peaks": {"device": str, "kind": str, "bytes": int}, "samples": {"step": int, "devices": dict},
                "events": {}, "findings": {}, "attempts": {}}


def _check_shape(data: dict[str, Any], path: str) -> None:
    """A report with a valid header but fields of the wrong type: one line naming the first such field."""
    def wrong(where: str, value: Any, expected: type | tuple[type, ...]) -> UsageError:
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        return UsageError(f"{path} is not a report torchdoctor can read: {where} is {type(value).__name__} where "
                          f"it must be {names}")

    for key, expected in _FIELD_TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise wrong(repr(key), value, expected)
    for key, fields in _ITEM_FIELDS.items():
        for index, item in enumerate(data.get(key) or []):
            if not isinstance(item, dict):
                raise wrong(f"{key}[{index}]", item, dict)
            for name, expected in fields.items():
                value = item.get(name)
                if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
                    raise wrong(f"{key}[{index}].{name}", value, expected)

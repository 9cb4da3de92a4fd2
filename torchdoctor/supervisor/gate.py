"""The memory gate of ``torchdoctor ci``: the figures of a run's report against a budget and a baseline.

What is measured (peak tensor bytes per device, exact and the same from run to run, with the peak of each phase; on
a GPU also the CUDA allocator's allocated and reserved peaks), the baseline file, the verdict (pure functions on
report.json data), and :func:`run_gate`, which runs the script's first steps under the supervisor and judges them.
The table, Markdown and JUnit renderings are ``reporters/ci.py``'s; the CLI prints.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.checks import at_or_above
from torchdoctor.errors import UsageError
from torchdoctor.events import PHASES
from torchdoctor.files import read_versioned_json, write_text_atomic
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
    if baseline is not None and figures and not any(r.gated and r.baseline is not None for r in rows):
        held = ", ".join(sorted(baseline)) or "no figures"
        problems.append(f"the baseline holds none of the figures this run measured (it holds {held}): nothing was "
                        f"compared with it; record it again with --update-baseline")
    return rows, problems


def finding_problems(findings: list[dict[str, Any]], fail_on: str | None) -> list[str]:
    """The doctor's findings that fail the gate under ``--fail-on`` (none without it)."""
    if fail_on is None:
        return []
    return [f"{f['id']} {f['severity']}: {f['title']} at {f.get('location') or '?'} ({f.get('evidence', '')})"
            for f in findings if at_or_above(f.get("severity", "info"), fail_on)]


# -- the baseline file ------------------------------------------------------------------------------------------
def read_baseline(path: str) -> dict[str, int]:
    data = read_versioned_json(path, BASELINE_SCHEMA, BASELINE_VERSION, {
        "missing": f"no baseline at {path}; record one with --update-baseline",
        "unreadable": f"baseline {path} cannot be read ({{detail}}); record it again with --update-baseline",
        "foreign": f"{path} is not a torchdoctor baseline; record one with --update-baseline",
        "version": f"baseline {path} has schema version {{detail}}, this torchdoctor reads {BASELINE_VERSION}; "
                   f"record it again with --update-baseline"})
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


# -- one gated run ---------------------------------------------------------------------------------------------
DEFAULT_BASELINE = os.path.join(".torchdoctor", "baseline.json")


@dataclass(frozen=True)
class GateRequest:
    script: str
    is_module: bool = False
    script_args: tuple[str, ...] = ()
    steps: int = 5
    budget: int | None = None
    baseline_path: str | None = None  # None: DEFAULT_BASELINE when it exists
    max_increase: float = 0.05
    update_baseline: bool = False
    fail_on: str | None = None
    run_dir: str | None = None
    tensorboard_dir: str | None = None
    wandb: bool = False

    @property
    def baseline_file(self) -> str:
        return self.baseline_path or DEFAULT_BASELINE

    def read_baseline(self) -> dict[str, int] | None:
        """The baseline to compare with (None: none asked for and none recorded, or it is being re-recorded);
        a bad one raises before anything runs."""
        if self.update_baseline or (self.baseline_path is None and not os.path.exists(DEFAULT_BASELINE)):
            return None
        return read_baseline(self.baseline_file)


@dataclass
class GateOutcome:
    report: dict[str, Any]
    run_dir: str
    rows: list[Row]
    problems: list[str]  # the figures' and the run's
    failing_findings: list[str]  # the doctor's, under --fail-on
    seconds: float
    baseline: dict[str, int] | None
    messages: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.problems or self.failing_findings)

    @property
    def steps(self) -> int:
        return self.report.get("steps") or 0

    @property
    def findings(self) -> list[dict[str, Any]]:
        return self.report.get("findings") or []


def run_gate(request: GateRequest, baseline: dict[str, int] | None) -> GateOutcome:
    """Run the script's first ``request.steps`` optimizer steps under the supervisor (exact accounting, no
    recovery) and judge its figures against the budget and ``baseline``."""
    from torchdoctor.supervisor.attempt_loop import Supervisor
    from torchdoctor.supervisor.recovery_planner import RecoveryOptions
    from torchdoctor.supervisor.report import load_report
    from torchdoctor.supervisor.run_config import RunConfig

    began = time.monotonic()
    config = RunConfig(target=request.script, is_module=request.is_module, script_args=request.script_args,
                       run_dir=request.run_dir, quiet=True, live=False, accounting="exact", max_steps=request.steps,
                       recovery=RecoveryOptions(max_retries=0), tensorboard_dir=request.tensorboard_dir,
                       wandb=request.wandb)
    supervisor = Supervisor(config)
    supervisor.run()
    report = load_report(supervisor.run_dir)
    rows, problems = evaluate(report, request.budget, baseline, request.max_increase)
    failing = finding_problems(report.get("findings") or [], request.fail_on)
    return GateOutcome(report, supervisor.run_dir, rows, problems, failing, time.monotonic() - began, baseline)


def record_baseline(request: GateRequest, outcome: GateOutcome) -> tuple[bool, str]:
    """``--update-baseline``: the run's figures become the baseline, unless the run itself failed (the old
    baseline is then kept). (written, what to tell the user)."""
    path = request.baseline_file
    if outcome.problems and not any(r.problem for r in outcome.rows):
        return False, f"baseline not updated (the run failed); {path} is unchanged"
    write_baseline(path, outcome.report, outcome.steps)
    return True, f"baseline written to {path}"

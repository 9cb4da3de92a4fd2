"""The report dict built from events, and the terminal report rendered from it (into a StringIO)."""

import io
import json

from rich.console import Console

from torchdoctor.events import MemorySample, Note, ProcessExited, RunFinished, RunStarted
from torchdoctor.reporters.console import render_report
from torchdoctor.reporters.summary_line import summary_line
from torchdoctor.supervisor.report import REPORT_SCHEMA_VERSION, build_report, load_report, recovery_summary
from torchdoctor.supervisor.state import fold

MiB = 1024 * 1024


def events():
    started = RunStarted(pid=1, target="train.py", is_module=False, argv=["train.py"], python="3.11", t=100.0,
                         torch_version="2.13.0+cpu", cuda_version=None, cuda_devices=0, accounting="sampled",
                         sample_every=50)
    samples = []
    for step, peak in [(1, 30 * MiB), (2, 40 * MiB), (3, 35 * MiB)]:
        samples.append(MemorySample(
            step=step, span="step", step_time_s=0.5, measured=True, rss_bytes=300 * MiB + step, t=100.0 + step,
            devices={"cpu": {"tensor_bytes": 20 * MiB, "tensor_peak": peak, "peak_phase": "backward",
                             "phase_peaks": {"forward": peak - MiB, "backward": peak},
                             "breakdown": {"parameters": 10 * MiB, "gradients": 10 * MiB,
                                           "optimizer_state": 15 * MiB, "activations_other": peak - 35 * MiB}}}))
    samples.append(MemorySample(step=4, span="step", step_time_s=0.5, measured=False, rss_bytes=310 * MiB,
                                devices={}, t=104.0))
    return [started, Note(level="info", message="optimizer AdamW steps 10 parameters", t=100.5), *samples,
            RunFinished(exit_code=0, exception=None, message=None, steps=4, dropped_events=0, t=105.0),
            ProcessExited(returncode=0, exit_code=0, outcome="success", t=105.1)]


def report():
    env = {"host": {"python": "3.11.7", "platform": "Linux", "cpu_count": 2, "memory_total_bytes": 24 * 1024 * MiB},
           "torch": {"version": "2.13.0+cpu", "cuda_version": None},
           "gpus": {"gpus": [], "explanation": "no NVIDIA driver (NVML library not found)"}}
    return build_report(fold(events()), run_dir="runs/x", environment=env)


def test_report_holds_versioned_schema_outcome_and_labelled_peaks():
    data = report()
    assert data["schema"] == "torchdoctor.report" and data["schema_version"] == REPORT_SCHEMA_VERSION
    assert (data["outcome"], data["exit_code"], data["steps"]) == ("success", 0, 4)
    cpu = next(p for p in data["peaks"] if p["kind"] == "tensor_bytes")
    assert (cpu["device"], cpu["bytes"], cpu["step"], cpu["phase"]) == ("cpu", 40 * MiB, 2, "backward")
    assert sum(cpu["breakdown"].values()) == cpu["bytes"]
    assert cpu["label"].startswith("tensor bytes")
    assert data["accounting"]["measured_steps"] == 3
    assert data["findings"] == []
    assert len(data["samples"]) == 4
    assert [e["kind"] for e in data["events"]] == ["note", "run_finished", "process_exited"]
    json.dumps(data, allow_nan=False)  # the report is plain JSON


def test_terminal_report_names_the_peak_breakdown_timeline_environment_and_findings():
    out = io.StringIO()
    render_report(report(), Console(file=out, width=120, color_system=None))
    text = out.getvalue()
    assert "success (exit 0)" in text and "4 optimizer steps" in text
    assert "40.0 MiB" in text and "step 2, backward" in text
    for label in ("parameters (+ buffers)", "gradients", "optimizer state", "activations / temporaries"):
        assert label in text
    assert "Per-step timeline" in text and "3 of 4 steps measured" in text
    assert "torch 2.13.0+cpu" in text and "GPUs: none — no NVIDIA driver" in text
    assert "Findings: none." in text
    assert "Run directory: runs/x" in text


def test_summary_line_has_outcome_peak_and_report_path():
    line = summary_line(report())
    assert line.startswith("[torchdoctor] success (exit 0)")
    assert "peak cpu tensor bytes 40.0 MiB at step 2 (backward)" in line
    assert "runs/x/report.json" in line


def test_a_written_report_loads_back_identically(tmp_path):
    data = report()
    (tmp_path / "report.json").write_text(json.dumps(data))
    assert load_report(str(tmp_path)) == data


def test_report_validates_against_the_published_json_schema():
    jsonschema = __import__("pytest").importorskip("jsonschema")
    from pathlib import Path

    import torchdoctor

    schema_path = Path(torchdoctor.__file__).parent / "schemas" / "report-v1.schema.json"
    jsonschema.validate(report(), json.loads(schema_path.read_text()))
    broken = report()
    broken["peaks"][0]["kind"] = "made_up"
    try:
        jsonschema.validate(broken, json.loads(schema_path.read_text()))
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a report with an unknown peak kind must not validate")


def test_a_resumed_attempt_counts_only_the_steps_after_its_checkpoint_as_redone():
    attempts = [
        {"attempt": 1, "steps": 18, "seconds": 9.0, "plan": {"applied": []}, "oom": None},
        {"attempt": 2, "steps": 36, "seconds": 10.0, "plan": {"applied": ["relaunch"]},
         "resume": {"status": "resumed", "step": 15}},
    ]
    summary = recovery_summary(attempts, "success")
    assert summary["restarted_from"] == "checkpoint of step 15"
    assert summary["steps_redone"] == 3 and summary["seconds_lost"] == 1.5
    attempts[1]["resume"] = {"status": "abandoned", "step": 15}
    summary = recovery_summary(attempts, "success")
    assert summary["restarted_from"] == "beginning" and summary["steps_redone"] == 18

"""`python -m torchdoctor run` on small real scripts, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import HAS_CXX, REPO, SCRIPTS, read_report, run_python, run_torchdoctor

pytestmark = pytest.mark.e2e


def first_json_line(text: str) -> dict:
    return json.loads(next(line for line in text.splitlines() if line.startswith("{")))


def test_script_sees_the_same_main_argv_and_path_as_under_python(scripts, tmp_path):
    # GIVEN a script that prints what it sees of its launch
    script = scripts / "semantics.py"
    # WHEN it runs under python and under torchdoctor, with the same arguments
    bare = run_python([str(script), "--lr", "3e-4", "-x"], cwd=tmp_path)
    doctored = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "run"), str(script), "--lr", "3e-4", "-x"],
                               cwd=tmp_path)
    # THEN __name__, argv, sys.path[0] and __file__ are identical, and so are its output streams
    assert doctored.returncode == bare.returncode == 0
    assert first_json_line(doctored.stdout) == first_json_line(bare.stdout)
    assert doctored.stdout == bare.stdout
    assert doctored.stderr.startswith("to stderr\n")


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_code_of_the_script_is_returned_unchanged(scripts, tmp_path, code):
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), str(scripts / "semantics.py"),
                              "--exit", str(code)], cwd=tmp_path)
    assert result.returncode == code
    report = read_report(tmp_path / "r")
    assert report["exit_code"] == code
    assert report["outcome"] == ("success" if code == 0 else "failed")


def test_a_failing_script_shows_its_own_traceback_like_python(scripts, tmp_path):
    script = scripts / "semantics.py"
    bare = run_python([str(script), "--raise"], cwd=tmp_path)
    doctored = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), str(script), "--raise"], cwd=tmp_path)
    assert doctored.returncode == bare.returncode == 1
    traceback = doctored.stderr.split("[torchdoctor]")[0]
    assert traceback == bare.stderr  # no torchdoctor or runpy frames
    report = read_report(tmp_path / "r")
    assert report["exception"] == {"type": "RuntimeError", "message": "the script failed on purpose"}


def test_module_mode_runs_like_python_dash_m(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text("import sys, json\nprint(json.dumps([__name__, sys.argv[1:], sys.path[0]]))\n")
    bare = run_python(["-m", "pkg.train", "--epochs", "2"], cwd=tmp_path)
    doctored = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "-m", "pkg.train", "--epochs", "2"],
                               cwd=tmp_path)
    assert doctored.returncode == 0
    assert doctored.stdout == bare.stdout
    assert json.loads(doctored.stdout)[1] == ["--epochs", "2"]


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_dataloader_workers_with_a_dataset_class_defined_in_the_script(scripts, tmp_path, context):
    script = scripts / "spawn_loader.py"
    bare = run_python([str(script), context], cwd=tmp_path)
    doctored = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), str(script), context], cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    assert doctored.returncode == 0, doctored.stderr
    assert doctored.stdout == bare.stdout
    assert f"context={context} samples=128" in doctored.stdout
    assert read_report(tmp_path / "r")["steps"] == 8


def test_run_directory_holds_the_event_stream_and_a_versioned_report(scripts, tmp_path):
    run_dir = tmp_path / "run"
    result = run_torchdoctor(["run", "--accounting", "exact", "--run-dir", str(run_dir),
                              str(scripts / "tiny_train.py"), "--steps", "6"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("memory_sample") == 7  # six steps and the evaluation after the last one
    report = read_report(run_dir)
    assert report["schema"] == "torchdoctor.report" and report["schema_version"] == 1
    assert report["outcome"] == "success" and report["exit_code"] == 0 and report["steps"] == 6
    assert report["findings"] == []
    assert [s["step"] for s in report["samples"] if s["span"] == "step"] == [1, 2, 3, 4, 5, 6]
    cpu_peak = next(p for p in report["peaks"] if p["device"] == "cpu" and p["kind"] == "tensor_bytes")
    # the biggest moment is the evaluation after training: 4096 x 256 float32 hidden activations and more
    assert cpu_peak["span"] == "tail" and cpu_peak["phase"] == "evaluation"
    assert cpu_peak["bytes"] > 4096 * 256 * 4
    assert set(cpu_peak["breakdown"]) == {"parameters", "gradients", "optimizer_state", "optimizer_temporaries",
                                          "activations_saved", "activations_other", "inputs_data"}
    params = (32 * 256 + 256 + 256 * 4 + 4) * 4
    assert cpu_peak["breakdown"]["parameters"] == params
    assert cpu_peak["breakdown"]["gradients"] == params  # AdamW keeps grads after step (no zero_grad yet)
    assert cpu_peak["breakdown"]["optimizer_state"] >= 2 * params
    assert any(p["kind"] == "process_rss" for p in report["peaks"])
    # every figure is labelled with the kind of number it is
    assert all(p["label"] for p in report["peaks"])
    # the final report is printed (on stderr, since stdout is not a terminal) and names the peak
    assert "Peak memory" in result.stderr and "evaluation" in result.stderr
    assert result.stdout == "done 6 steps, eval output (4096, 4)\n"
    # and the report validates against the published JSON Schema
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "torchdoctor" / "schemas" / "report-v1.schema.json").read_text())
    jsonschema.validate(report, schema)


def test_measured_cpu_peak_equals_the_allocator_own_figures_within_one_percent(scripts, tmp_path):
    # GIVEN an independent measurement: torch.profiler's allocator events in a plain python run
    script = scripts / "peak_probe.py"
    independent = tmp_path / "profiled.json"
    bare = run_python([str(script), "--batch", "512", "--profile-out", str(independent)], cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    expected = json.loads(independent.read_text())
    # WHEN torchdoctor measures the same steps with its exact accounting
    result = run_torchdoctor(["run", "-q", "--accounting", "exact", "--run-dir", str(tmp_path / "r"), str(script),
                              "--batch", "512"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    measured = {str(s["step"]): s["devices"]["cpu"]["tensor_peak"]
                for s in read_report(tmp_path / "r")["samples"] if s["span"] == "step"}
    # THEN every step's peak agrees within 1%
    assert set(measured) == set(expected) == {"1", "2", "3", "4"}
    for step, value in expected.items():
        assert abs(measured[step] - value) <= 0.01 * value, (step, measured[step], value)


def test_sampled_accounting_measures_the_first_steps_and_says_which(scripts, tmp_path):
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "--sample-every", "5",
                              str(scripts / "tiny_train.py"), "--steps", "12"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "r")
    measured = [s["step"] for s in report["samples"] if s["measured"]]
    assert measured[:3] == [1, 2, 3]
    unmeasured = [s for s in report["samples"] if not s["measured"]]
    # unmeasured steps carry the allocator's total and peak (measured by it), never a made-up breakdown
    assert unmeasured and all("breakdown" not in s["devices"].get("cpu", {}) for s in unmeasured)
    if HAS_CXX:
        assert all(s["devices"]["cpu"]["tensor_peak"] > 0 for s in unmeasured)
    assert {k: v for k, v in report["accounting"].items() if k not in ("cpu_figures", "unmeasured")} == {
        "mode": "sampled", "sample_every": 5, "measured_steps": len(measured)}
    assert isinstance(report["accounting"]["unmeasured"], list)
    assert report["accounting"]["cpu_figures"] == ("allocator" if HAS_CXX else report["accounting"]["cpu_figures"])


def test_accounting_off_reports_no_tensor_figures_at_all(scripts, tmp_path):
    result = run_torchdoctor(["run", "-q", "--accounting", "off", "--run-dir", str(tmp_path / "r"),
                              str(scripts / "tiny_train.py"), "--steps", "3"], cwd=tmp_path)
    assert result.returncode == 0
    report = read_report(tmp_path / "r")
    assert not [p for p in report["peaks"] if p["kind"] == "tensor_bytes"]
    assert report["steps"] == 3


def test_a_sigkilled_script_is_reported_as_killed_with_its_steps(scripts, tmp_path):
    result = run_torchdoctor(["run", "-q", "--max-retries", "0", "--run-dir", str(tmp_path / "r"),
                              str(scripts / "self_kill.py")],
                             cwd=tmp_path)
    assert result.returncode == 128 + signal.SIGKILL
    report = read_report(tmp_path / "r")
    assert report["outcome"] == "killed" and report["signal"] == "SIGKILL"
    assert report["steps"] == 3  # the samples written before the kill survive it


def test_ctrl_c_is_forwarded_to_the_script_and_the_report_is_still_written(scripts, tmp_path):
    marker = tmp_path / "marker.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "torchdoctor", "run", "-q", "--run-dir", str(tmp_path / "r"),
                             str(scripts / "interruptible.py"), str(marker)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # to the supervisor only, as `kill -INT` would
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT
    assert marker.read_text().startswith("interrupted after")  # the script's own handler ran
    assert "KeyboardInterrupt" in err
    report = read_report(tmp_path / "r")
    assert report["outcome"] == "interrupted" and report["steps"] >= 3


def test_plain_progress_lines_go_to_stderr_and_leave_stdout_to_the_script(scripts, tmp_path):
    example = REPO / "examples" / "train_mlp.py"
    result = run_torchdoctor(["run", "--log-interval", "0.5", "--run-dir", str(tmp_path / "r"), str(example),
                              "--epochs", "2", "--samples", "4096"], cwd=tmp_path)
    bare = run_python([str(example), "--epochs", "2", "--samples", "4096"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == bare.stdout
    assert "[torchdoctor]" in result.stderr and "steps/s" in result.stderr
    assert "RSS" in result.stderr


def test_report_command_re_renders_a_recorded_run(scripts, tmp_path):
    run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), str(scripts / "tiny_train.py"), "--steps", "3"],
                    cwd=tmp_path)
    shown = run_torchdoctor(["report", str(tmp_path / "r")], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Peak memory" in shown.stdout and "tensor bytes" in shown.stdout and "step" in shown.stdout
    assert "tiny_train.py" in shown.stdout


@pytest.mark.parametrize("accounting", ["sampled", "exact"])
def test_torch_compile_still_compiles_under_torchdoctor(scripts, tmp_path, accounting):
    bare = run_python([str(scripts / "compiled.py")], cwd=tmp_path)
    doctored = run_torchdoctor(["run", "-q", "--accounting", accounting, "--run-dir", str(tmp_path / "r"),
                                str(scripts / "compiled.py")], cwd=tmp_path)
    assert doctored.returncode == 0, doctored.stderr
    frames = int(doctored.stdout.split("frames_ok=")[1].split()[0])
    assert frames >= 1  # Dynamo compiled the model instead of skipping it for the dispatch mode
    assert doctored.stdout.split("loss=")[1] == bare.stdout.split("loss=")[1]
    assert "global hooks" not in doctored.stderr


@pytest.mark.parametrize("shape", ["zero_grad at the top", "grad = None after the update"])
def test_manual_sgd_updates_are_steps_for_ci_steps(scripts, tmp_path, shape):
    # GIVEN manual SGD without torch.optim (p -= lr * p.grad), in two loop shapes
    extra = ["--grad-none"] if shape.startswith("grad") else []
    result = run_torchdoctor(["ci", "--steps", "3", "--budget", "1GiB", "--run-dir", str(tmp_path / "r"),
                              str(scripts / "manual_sgd.py"), *extra], cwd=tmp_path)
    # THEN ci stops after 3 updates (not at the script's end) and gates what it measured
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("update ") == 3
    report = read_report(tmp_path / "r")
    assert report["steps"] == 3 and [s["step"] for s in report["samples"] if s["span"] == "step"] == [1, 2, 3]
    assert any(p["kind"] == "tensor_bytes" for p in report["peaks"])


def test_an_lbfgs_closures_passes_are_forward_and_backward_and_only_the_first_are_counted_op_by_op(tmp_path):
    script = SCRIPTS / "real" / "lbfgs_sequence.py"
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), str(script), "--steps", "2",
                              "--out", str(tmp_path / "seq.pt")], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "r")
    first = next(s for s in report["samples"] if s["span"] == "step" and s["step"] == 1)
    cpu = first["devices"]["cpu"]
    # the closure's forwards and backwards are forward and backward (not the optimizer phase)
    assert cpu["peak_phase"] in ("forward", "backward") and cpu["phase_peaks"]["backward"] > 0
    assert any("closure runs several forward/backward passes per step" in e.get("message", "")
               for e in report["events"])

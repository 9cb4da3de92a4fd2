"""A full disk never costs the user a traceback, the script's exit code or a usable run directory.

The disk fills through ``RLIMIT_FSIZE`` (no file may grow past the limit; SIGXFSZ ignored, so a write past it
fails with EFBIG as a full disk fails with ENOSPC): set on the supervisor, inherited by the training child."""

import json
import resource
import signal

from tests.conftest import run_torchdoctor

TRAIN = """
import torch
model = torch.nn.Linear(8, 8)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range({steps}):
    opt.zero_grad(); model(torch.randn(4, 8)).pow(2).mean().backward(); opt.step()
print("trained", flush=True)
"""


def _limit(size: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


def _no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


def test_a_disk_full_from_the_start_gives_one_line_and_leaves_the_run_directory_usable(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN.format(steps=3))
    run_dir = tmp_path / "run"
    full = run_torchdoctor(["run", "-q", "--run-dir", str(run_dir), str(script)], cwd=tmp_path,
                           preexec_fn=_limit(0))
    assert full.returncode != 0 and _no_traceback(full.stderr), full.stderr
    lines = [line for line in full.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot write" in lines[0] and str(run_dir) in lines[0], full.stderr
    rerun = run_torchdoctor(["run", "-q", "--run-dir", str(run_dir), str(script)], cwd=tmp_path)
    assert rerun.returncode == 0 and "trained" in rerun.stdout, rerun.stderr  # the directory is not refused


def test_a_disk_filling_during_the_run_keeps_the_scripts_exit_code_and_says_what_was_not_written(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN.format(steps=40))
    run_dir = tmp_path / "run"
    result = run_torchdoctor(["run", "-q", "--run-dir", str(run_dir), str(script)], cwd=tmp_path,
                             preexec_fn=_limit(6000))
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr
    assert _no_traceback(result.stderr), result.stderr
    assert "events could not all be written" in result.stderr  # the agent's writer, in one line
    assert "could not write" in result.stderr and "report.json" in result.stderr
    assert not (run_dir / "report.json").exists()
    shown = run_torchdoctor(["report", str(run_dir)], cwd=tmp_path)  # rebuilt from what the events kept
    assert shown.returncode == 0 and _no_traceback(shown.stderr), shown.stderr


def test_ci_outputs_on_a_full_device_fail_in_one_line(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN.format(steps=3))
    result = run_torchdoctor(["ci", "--steps", "2", "--junit", "/dev/full", "--markdown", "/dev/full",
                              "--run-dir", str(tmp_path / "run"), str(script)], cwd=tmp_path)
    assert result.returncode == 1 and _no_traceback(result.stderr), result.stderr
    lines = result.stderr.splitlines()
    assert "torchdoctor ci: cannot write --junit /dev/full (No space left on device)" in lines
    assert "torchdoctor ci: cannot write --markdown /dev/full (No space left on device)" in lines
    assert json.loads((tmp_path / "run" / "report.json").read_text())["outcome"] == "success"


CRASHES = """
import ctypes, os, time
import torch
model = torch.nn.Linear(8, 8)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    time.sleep({pause})  # steps slower than the emitter's interval are on disk as soon as they end
    opt.zero_grad(); model(torch.randn(4, 8)).pow(2).mean().backward(); opt.step()
{end}
"""


def test_events_written_before_os_exit_and_a_segfault_are_in_the_report(tmp_path):
    # os._exit right after fast steps: the queued events are written first; a segfault right after a slow step
    for name, pause, end, code, outcome in (("exit", 0, "os._exit(3)", 3, "failed"),
                                            ("segfault", 0.3, "ctypes.string_at(0)", 128 + signal.SIGSEGV, "killed")):
        script = tmp_path / f"{name}.py"
        script.write_text(CRASHES.format(pause=pause, end=end))
        run_dir = tmp_path / name
        result = run_torchdoctor(["run", "-q", "--run-dir", str(run_dir), str(script)], cwd=tmp_path)
        report = json.loads((run_dir / "report.json").read_text())
        assert result.returncode == code and report["outcome"] == outcome, result.stderr
        assert report["steps"] == 3, (name, report["steps"])

"""A supervisor killed with SIGKILL takes its training child with it, and its run directory still has a report."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, process_alive, run_torchdoctor

SLOW_TRAINING = """
import time, torch
model = torch.nn.Linear(4, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(100000):
    opt.zero_grad(); model(torch.randn(2, 4)).sum().backward(); opt.step(); time.sleep(0.02)
"""


def test_the_child_dies_with_a_killed_supervisor_and_report_rebuilds_from_events(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SLOW_TRAINING)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TORCHDOCTOR_EVENTS", None)
    supervisor = subprocess.Popen([sys.executable, "-m", "torchdoctor", "run", "-q", "--run-dir", str(run_dir),
                                   str(script)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    events = run_dir / "events.jsonl"
    deadline = time.monotonic() + 60
    child = None
    while time.monotonic() < deadline and child is None:
        lines = events.read_text().splitlines() if events.exists() else []
        steps = [json.loads(line) for line in lines if '"memory_sample"' in line]
        if len(steps) >= 3:
            child = json.loads(lines[0])["pid"]
        time.sleep(0.05)
    assert child is not None, "the run never reached step 3"
    # WHEN the supervisor is killed outright
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait(timeout=30)
    # THEN its training child dies too (the kernel's parent-death signal), instead of training on under init
    deadline = time.monotonic() + 10
    while process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child)
    # AND `torchdoctor report` rebuilds the report from the event stream, and says so
    assert not (run_dir / "report.json").exists()
    result = run_torchdoctor(["report", str(run_dir)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rebuilt from events.jsonl" in result.stderr and "optimizer steps" in result.stdout

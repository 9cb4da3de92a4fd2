"""A stalled run is noticed and said where it stalls (with the Python stacks); ``--stall-timeout`` ends it with its
own outcome; a script that ignores SIGINT and SIGTERM is stopped by escalating signals, and the report says which
were needed. No test leaves a process running."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, process_alive, read_report, run_torchdoctor

STUBBORN = """
import signal, sys, time
import torch
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGINT and SIGTERM", flush=True)
while True:
    time.sleep(0.1)
"""

STALLS = """
import threading
import torch

def train(steps):
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad(); model(torch.randn(2, 4)).sum().backward(); opt.step()

def wait_for_a_peer_that_never_comes():
    threading.Event().wait()  # a deadlock: no progress, no exception

train(3)
wait_for_a_peer_that_never_comes()
"""


def _child_pid(run_dir) -> int:
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "run_started":
            return event["pid"]
    raise AssertionError("no run_started event")


def test_a_script_ignoring_sigint_and_sigterm_is_killed_after_the_grace_periods(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TORCHDOCTOR_EVENTS", None)
    supervisor = subprocess.Popen([sys.executable, "-m", "torchdoctor", "run", "-q", "--stop-grace", "1",
                                   "--run-dir", str(run_dir), str(script)], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert supervisor.stdout.readline().strip() == "ignoring SIGINT and SIGTERM"
        began = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)
        out, err = supervisor.communicate(timeout=60)
        took = time.monotonic() - began
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
    report = read_report(run_dir)
    assert not process_alive(_child_pid(run_dir))
    assert report["stop"] == {"reason": "signal SIGTERM", "signals": ["SIGTERM", "SIGKILL"], "grace_s": 1.0}
    assert supervisor.returncode == 128 + signal.SIGKILL and report["outcome"] == "interrupted"
    assert 1.0 <= took < 30, took
    assert "torchdoctor/supervisor" not in err and "still running 1 s after SIGTERM: sending SIGKILL" in err


def test_a_stalled_run_is_ended_by_stall_timeout_with_where_it_stalled_and_its_stacks(tmp_path):
    script = tmp_path / "stalls.py"
    script.write_text(STALLS)
    run_dir = tmp_path / "run"
    began = time.monotonic()
    result = run_torchdoctor(["run", "--stall-timeout", "4", "--stop-grace", "1", "--log-interval", "1",
                              "--run-dir", str(run_dir), str(script)], cwd=tmp_path, timeout=120)
    took = time.monotonic() - began
    report = read_report(run_dir)
    assert result.returncode == 124 and report["outcome"] == "stalled", result.stderr[-2000:]
    stall = report["stall"]
    assert stall["where"].startswith("stalls.py:") and stall["where"].endswith("in wait_for_a_peer_that_never_comes")
    assert stall["seconds"] >= 4
    assert "wait_for_a_peer_that_never_comes" in stall["stacks"] and "threading.py" in stall["stacks"]
    assert report["steps"] == 3 and report["stop"]["reason"] == "stall-timeout"
    assert report["stop"]["signals"][0] == "SIGINT"
    assert "stalled for" in result.stderr and "wait_for_a_peer_that_never_comes" in result.stderr
    assert "torchdoctor/supervisor" not in result.stderr  # no traceback of torchdoctor's own
    assert not process_alive(_child_pid(run_dir))
    assert took < 60


def test_the_stall_and_the_stop_are_in_the_final_summary(tmp_path):
    script = tmp_path / "stalls.py"
    script.write_text(STALLS)
    result = run_torchdoctor(["run", "-q", "--stall-timeout", "3", "--stop-grace", "1", "--run-dir",
                              str(tmp_path / "run"), str(script)], cwd=tmp_path, timeout=120)
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("[torchdoctor] stalled (exit 124)"), summary
    assert "at stalls.py:" in summary and "stopped (stall-timeout): SIGINT" in summary
    shown = run_torchdoctor(["report", str(tmp_path / "run")], cwd=tmp_path)
    assert "Stalled for" in shown.stdout and "Stopped (stall-timeout): SIGINT" in shown.stdout, shown.stdout

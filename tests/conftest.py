from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Two test processes share two cores: each torch process (these, and the scripts they run) uses one thread, so
# they do not oversubscribe the cores (measured here: a small transformer ran 2-5 times slower with two threads
# each). Set before torch is imported anywhere in the session; the scripts' subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
SCRIPTS = Path(__file__).resolve().parent / "scripts"
# The allocator probe (docs/memory.md) is built with the machine's C++ compiler; without one the CPU figures are
# the tensor outputs' and the tests of the allocator's figures are skipped (.ci/run installs g++).
HAS_CXX = any(__import__("shutil").which(name) for name in ("c++", "g++", "clang++"))
needs_probe = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler to build the allocator probe")


def run_torchdoctor(args: list[str], cwd: Path, timeout: float = 120, env_extra: dict[str, str] | None = None,
                    **kwargs) -> subprocess.CompletedProcess:
    """``python -m torchdoctor ARGS`` in a subprocess, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    env.pop("TORCHDOCTOR_EVENTS", None)
    env.pop("GITHUB_STEP_SUMMARY", None)  # a CI runner's own summary file is not the tests' to write
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "torchdoctor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def run_torchdoctor_and_kill(args: list[str], cwd: Path, run_dir: Path, at_step: int,
                             timeout: float = 180) -> tuple[subprocess.CompletedProcess, int]:
    """``torchdoctor run`` (``args`` must hold ``--run-dir run_dir``), with its child SIGKILLed from outside once
    its events show ``at_step`` optimizer steps; returns the finished process and the step seen at the kill."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    env.pop("TORCHDOCTOR_EVENTS", None)
    proc = subprocess.Popen([sys.executable, "-m", "torchdoctor", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen, deadline = 0, time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        pid, seen = None, 0
        try:
            lines = (run_dir / "events.jsonl").read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event["kind"] == "run_started":
                pid = event["pid"]
            elif event["kind"] == "memory_sample":
                seen = max(seen, event["step"])
        if pid is not None and seen >= at_step:
            os.kill(pid, signal.SIGKILL)
            break
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


def run_python(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def read_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture
def scripts() -> Path:
    return SCRIPTS

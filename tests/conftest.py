from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def run_torchdoctor(args: list[str], cwd: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m torchdoctor ARGS`` in a subprocess, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    env.pop("TORCHDOCTOR_EVENTS", None)
    return subprocess.run([sys.executable, "-m", "torchdoctor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def run_python(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def read_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture
def scripts() -> Path:
    return SCRIPTS

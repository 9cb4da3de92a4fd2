"""The supervisor side (the parent process), the shared contract and the reporters never import torch: they run
in a process that must stay light and must work where torch does not import (DESIGN.md's import boundaries)."""

import subprocess
import sys

from tests.conftest import REPO

TORCH_FREE = [
    "torchdoctor", "torchdoctor.cli", "torchdoctor.supervisor", "torchdoctor.attempts", "torchdoctor.recovery",
    "torchdoctor.state", "torchdoctor.report_model", "torchdoctor.rundir", "torchdoctor.target",
    "torchdoctor.terminal", "torchdoctor.devices", "torchdoctor.ci_gate", "torchdoctor.coverage",
    "torchdoctor.invariants", "torchdoctor.events", "torchdoctor.config", "torchdoctor.plan", "torchdoctor.errors",
    "torchdoctor.sizes", "torchdoctor.atomic_files", "torchdoctor.checkpoint_files", "torchdoctor.doctor_catalog",
    "torchdoctor.oom", "torchdoctor.zygote", "torchdoctor.environment", "torchdoctor.reporters",
    "torchdoctor.reporters.charts", "torchdoctor.reporters.console", "torchdoctor.reporters.html",
    "torchdoctor.reporters.live", "torchdoctor.reporters.monitors", "torchdoctor.reporters.summary_line",
    "torchdoctor.reporters.text",
]

BLOCK_TORCH = r"""
import importlib, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked here (imported while loading {sys._getframe(1).f_globals.get('__name__')})")
        return None

sys.meta_path.insert(0, NoTorch())
for name in sys.argv[1:]:
    importlib.import_module(name)
assert "torch" not in sys.modules
print("ok")
"""


def test_the_supervisor_side_and_the_reporters_import_with_torch_blocked():
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *TORCH_FREE], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]

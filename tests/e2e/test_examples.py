"""The bundled examples keep doing what their docstrings say."""

import pytest

from tests.conftest import REPO, run_python

pytestmark = pytest.mark.e2e


def test_library_example_recovers_a_real_oom_and_reloads_its_checkpoint(tmp_path):
    result = run_python([str(REPO / "examples" / "library_recovery.py")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step 2: loss 2.3050 (2 micro-batches per batch)" in result.stdout  # the same loss as the full batch
    assert "recovered: micro-batches 1 -> 2; memory back to baseline: True" in result.stdout
    assert "newest valid checkpoint: step 8" in result.stdout
    assert "out of memory" in result.stderr  # the recovery is logged, not hidden

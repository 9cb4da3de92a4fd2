"""Exact resume through the library API: killed by SIGKILL mid-way through epoch 2, resumed, bit-identical."""

import signal

import pytest
import torch

from tests.conftest import SCRIPTS, run_python

pytestmark = pytest.mark.e2e


def test_a_killed_run_resumed_from_its_checkpoint_ends_bit_identical(tmp_path):
    script = str(SCRIPTS / "resume_train.py")
    # GIVEN the uninterrupted run (shuffle, 2 workers with random augmentation, dropout, AdamW, StepLR)
    full = run_python([script, "--ckpt", str(tmp_path / "a"), "--out", str(tmp_path / "full.pt")], cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    # WHEN the same run is SIGKILLed in the middle of its second epoch (12 batches an epoch; step 22)
    killed = run_python([script, "--ckpt", str(tmp_path / "b"), "--out", str(tmp_path / "x.pt"),
                         "--kill-at", "22"], cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    # AND started again: it resumes from its last checkpoint (step 20) and finishes
    resumed = run_python([script, "--ckpt", str(tmp_path / "b"), "--out", str(tmp_path / "resumed.pt")],
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # THEN the parameters are equal bit for bit, and so is the step count
    assert full.stdout == resumed.stdout == "steps 36\n"
    a, b = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

"""`torchdoctor run --checkpoint-every N`: torchdoctor's own checkpoints of an unmodified script's state."""

import pytest
import torch
from torch import nn

from tests.conftest import SCRIPTS, read_report, run_torchdoctor
from torchdoctor.agent.checkpoint import committed, load_checkpoint

pytestmark = pytest.mark.e2e


def test_checkpoints_of_the_scripts_model_and_optimizer_land_in_the_run_directory(tmp_path):
    result = run_torchdoctor(["run", "-q", "--checkpoint-every", "3", "--run-dir", str(tmp_path / "r"),
                              str(SCRIPTS / "tiny_train.py"), "--steps", "8"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    directory = tmp_path / "r" / "checkpoints"
    assert len(committed(str(directory))) == 2  # steps 3 and 6; at least two are always kept
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4))  # the script's architecture
    optimizer = torch.optim.AdamW(model.parameters())
    found = load_checkpoint(str(directory), model=model, optimizer=optimizer, restore_rng_state=False)
    assert found.step == 6 and optimizer.state_dict()["state"]  # AdamW moments came back
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # nothing written into the user's folder
    notes = [e["message"] for e in read_report(tmp_path / "r")["events"] if e["kind"] == "note"]
    assert "checkpoint of step 6: ckpt-000000002.pt" in notes


def test_a_script_without_a_dataloader_is_restarted_from_the_beginning_and_told_why(tmp_path):
    result = run_torchdoctor(["run", "-q", "--checkpoint-every", "1", "--max-retries", "1", "--run-dir",
                              str(tmp_path / "r"), str(SCRIPTS / "self_kill.py")], cwd=tmp_path)
    assert result.returncode == 137
    assert ("restarting from the beginning, not from ckpt-000000002.pt: the script's batches do not come from a "
            "DataLoader, so torchdoctor cannot tell where in its loop it is") in result.stderr
    assert "the checkpoint is kept for torchdoctor.load_checkpoint" in result.stderr

"""The script's own torch.save(obj, path) under `torchdoctor run`: a full disk mid-save keeps the old file."""

import pytest
import torch

from tests.conftest import SCRIPTS, run_python, run_torchdoctor

pytestmark = pytest.mark.e2e
SCRIPT = str(SCRIPTS / "save_then_disk_full.py")


def loads(path):
    try:
        return torch.load(path)["step"]
    except Exception:  # noqa: BLE001 - a destroyed file is what we look for
        return None


def test_a_full_disk_destroys_the_file_under_python_but_not_under_torchdoctor(tmp_path):
    bare = run_python([SCRIPT, str(tmp_path / "bare.pt")], cwd=tmp_path)
    assert "save failed" in bare.stdout
    assert loads(tmp_path / "bare.pt") is None  # plain torch.save truncated the only checkpoint

    doctored = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), SCRIPT, str(tmp_path / "td.pt")],
                               cwd=tmp_path)
    assert doctored.returncode == 0 and "save failed" in doctored.stdout
    assert loads(tmp_path / "td.pt") == 1  # the previous save survived
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_no_atomic_save_leaves_torch_save_alone(tmp_path):
    result = run_torchdoctor(["run", "-q", "--no-atomic-save", "--run-dir", str(tmp_path / "r"), SCRIPT,
                              str(tmp_path / "td.pt")], cwd=tmp_path)
    assert result.returncode == 0
    assert loads(tmp_path / "td.pt") is None

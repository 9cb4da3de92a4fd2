"""Atomic checkpoints against real faults: SIGKILLs in the middle of saves, a full disk, bad files."""

from __future__ import annotations

import os
import random
import resource
import signal
import time

import pytest
import torch
from torch import nn

from torchdoctor.agent.checkpoint import CheckpointError, committed, load_checkpoint, save_checkpoint


def model_of(width=256):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, width), nn.ReLU(), nn.Linear(width, 10))


def test_a_checkpoint_is_a_plain_dict_torch_load_reads_with_weights_only(tmp_path):
    model = model_of()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 512)).sum().backward()
    opt.step()
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, epoch=1, step=7, loss=0.5, custom=3)
    data = torch.load(path)  # the default weights_only=True
    assert data["epoch"] == 1 and data["step"] == 7 and data["loss"] == 0.5 and data["extra"] == {"custom": 3}
    assert set(data["model_state_dict"]) == set(model.state_dict())
    assert "state" in data["optimizer_state_dict"]
    assert {"python", "numpy", "torch"} <= set(data["rng"])


def test_at_least_two_are_kept_and_loading_takes_the_newest(tmp_path):
    model = model_of()
    for step in range(1, 6):
        save_checkpoint(str(tmp_path), model=model, step=step)
    kept = committed(str(tmp_path))
    assert len(kept) == 2
    assert load_checkpoint(str(tmp_path), model=model).step == 5
    with pytest.raises(CheckpointError, match="at least 2"):
        save_checkpoint(str(tmp_path), model=model, keep=1)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model = model_of()
    save_checkpoint(str(tmp_path), model=model, step=1)
    newest = save_checkpoint(str(tmp_path), model=model, step=2)
    with open(newest, "r+b") as handle:
        handle.truncate(os.path.getsize(newest) // 2)
    found = load_checkpoint(str(tmp_path), model=model)
    assert found.step == 1 and "truncated" in found.skipped[0]


def test_fifty_sigkills_in_the_middle_of_saves_never_lose_the_newest_valid_checkpoint(tmp_path):
    # GIVEN a process that saves checkpoints of a 4 MB model as fast as it can
    directory = str(tmp_path / "ckpt")
    model = model_of(width=2048)
    save_checkpoint(directory, model=model, step=0)
    rng = random.Random(1234)
    newest_step = 0
    for kill in range(50):
        pid = os.fork()
        if pid == 0:  # the child: save, save, save... until killed
            try:
                step = newest_step
                while True:
                    step += 1
                    save_checkpoint(directory, model=model, step=step)
            finally:
                os._exit(1)
        # WHEN it is killed at a random moment (inside a save most of the time)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # THEN the newest valid checkpoint loads, and is never older than the one before the kill
        found = load_checkpoint(directory, model=model, restore_rng_state=False)
        assert found.step >= newest_step, f"kill {kill}: went back from step {newest_step} to {found.step}"
        assert len(committed(directory)) >= 2 or found.step == 0
        newest_step = found.step
    # and the next successful save cleans every temporary the kills left behind
    save_checkpoint(directory, model=model, step=newest_step + 1)
    leftovers = [n for n in os.listdir(directory) if ".tmp-" in n or n.startswith(".")]
    assert leftovers == []
    assert newest_step > 0  # the child really made progress between kills


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path):
    directory = str(tmp_path)
    model = model_of(width=2048)
    first = save_checkpoint(directory, model=model, step=1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # files of at most 1 MiB: "disk full"
            try:
                save_checkpoint(directory, model=model, step=2)
            except CheckpointError as exc:
                code = 3 if "is untouched" in str(exc) else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3  # a clear CheckpointError, not a crash
    assert committed(directory) == [first]
    assert load_checkpoint(directory, model=model).step == 1
    assert [n for n in os.listdir(directory) if ".tmp-" in n] == []


def test_bad_inputs_give_one_line_errors_naming_the_file(tmp_path):
    model = model_of()
    path = save_checkpoint(str(tmp_path / "a"), model=model, step=1)
    # a truncated file given directly
    broken = tmp_path / "broken.pt"
    broken.write_bytes(open(path, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match=r"broken\.pt cannot be read"):
        load_checkpoint(str(broken), model=model)
    # a checkpoint of another model: nothing is loaded into this one
    other = model_of(width=128)
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(CheckpointError, match=r"does not fit the model: 0\.weight is \(256, 512\).*\(128, 512\)"):
        load_checkpoint(path, model=other)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))
    # another world size
    data = torch.load(path)
    data["world_size"] = 4
    foreign = tmp_path / "foreign.pt"
    torch.save(data, foreign)
    with pytest.raises(CheckpointError, match="written by 4 processes; this run has 1"):
        load_checkpoint(str(foreign), model=model)
    # not a torchdoctor checkpoint at all
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a torchdoctor checkpoint"):
        load_checkpoint(str(plain))
    # an unwritable directory (a path under a regular file)
    with pytest.raises(CheckpointError, match="cannot write checkpoints"):
        save_checkpoint(str(broken / "sub"), model=model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no committed checkpoint in .*empty"):
        load_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="no checkpoint at .*missing"):
        load_checkpoint(str(tmp_path / "missing"))


def test_a_plan_that_changes_the_effective_batch_does_not_load(tmp_path):
    model = nn.Linear(3, 2)
    save_checkpoint(str(tmp_path), model=model, plan={"micro_batches": 2, "keep_effective_batch": False})
    with pytest.raises(CheckpointError, match="an effective batch 2 times smaller and this run uses the script's own"):
        load_checkpoint(str(tmp_path), model=model, plan={"micro_batches": 1, "keep_effective_batch": True})
    # micro-batches with accumulation keep the effective batch: that plan change is fine
    found = load_checkpoint(str(tmp_path), model=model, plan={"micro_batches": 2, "keep_effective_batch": False})
    assert found.step is None
    save_checkpoint(str(tmp_path), model=model, plan={"micro_batches": 3, "keep_effective_batch": True})
    load_checkpoint(str(tmp_path), model=model, plan={"micro_batches": 1})

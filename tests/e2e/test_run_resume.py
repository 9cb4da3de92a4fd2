"""`torchdoctor run --checkpoint-every N` on an unmodified script: killed, relaunched, resumed where it was.

The reference is the same script run by plain python, without torchdoctor at all.
"""

import pytest
import torch

from tests.conftest import SCRIPTS, read_report, run_python, run_torchdoctor, run_torchdoctor_and_kill

pytestmark = pytest.mark.e2e

SCRIPT = str(SCRIPTS / "plain_train.py")
EVERY = 5
STEPS = 36  # 3 epochs of 12 batches


def _reference(tmp_path, *flags):
    result = run_python([SCRIPT, "--out", str(tmp_path / "reference.pt"), *flags], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return torch.load(tmp_path / "reference.pt")


def _killed_and_relaunched(tmp_path, *flags, at_step=18):
    run_dir = tmp_path / "run"
    result, seen = run_torchdoctor_and_kill(
        ["run", "-q", "--checkpoint-every", str(EVERY), "--run-dir", str(run_dir), SCRIPT,
         "--out", str(tmp_path / "resumed.pt"), "--sleep", "0.05", *flags], cwd=tmp_path, run_dir=run_dir,
        at_step=at_step)
    assert result.returncode == 0, result.stderr
    report = read_report(run_dir)
    assert len(report["attempts"]) >= 2, result.stderr
    assert report["attempts"][0]["returncode"] == -9  # it really was killed
    return result, report, torch.load(tmp_path / "resumed.pt")


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_mid_second_epoch_then_resume_ends_bit_identical_to_the_uninterrupted_run(tmp_path):
    # GIVEN the script's uninterrupted run (shuffle, 2 workers with random augmentation, dropout, AdamW, StepLR)
    reference = _reference(tmp_path)
    # WHEN it runs under torchdoctor, is SIGKILLed in the middle of its second epoch and relaunched
    result, report, resumed = _killed_and_relaunched(tmp_path)
    first, second = report["attempts"][:2]
    assert 12 < first["steps"] < 24  # the kill landed in the second epoch
    # THEN the relaunch resumed from the newest checkpoint: at most N steps are redone
    assert second["resume"]["status"] == "resumed", result.stderr
    assert first["steps"] - EVERY <= second["resume"]["step"] <= first["steps"]
    assert f"resuming from the checkpoint of step {second['resume']['step']}" in result.stderr
    assert second["steps"] == STEPS
    recovery = report["recovery"]
    assert recovery["restarted_from"] == f"checkpoint of step {second['resume']['step']}"
    assert recovery["steps_redone"] == first["steps"] - second["resume"]["step"] <= EVERY
    # AND the finished training equals the uninterrupted one, bit for bit
    assert _equal(reference, resumed)
    notes = [e["message"] for e in report["events"] if e["kind"] == "note"]
    assert "resumed step verified against the first run (learning rates, backward passes and losses)" in notes


def test_the_scripts_own_saves_are_not_rewritten_while_it_replays(tmp_path):
    saves = tmp_path / "saves"
    saves.mkdir()
    reference = _reference(tmp_path)
    result, report, resumed = _killed_and_relaunched(tmp_path, "--save-epochs", str(saves))
    assert report["attempts"][1]["resume"]["status"] == "resumed", result.stderr
    assert "1 torch.save call(s) of the replay not written" in report["attempts"][1]["resume"]["message"]
    assert _equal(reference, resumed)
    # epoch 0's file was written once, by the first attempt, and holds what the uninterrupted run saved
    solo = tmp_path / "solo"
    solo.mkdir()
    assert run_python([SCRIPT, "--out", str(tmp_path / "solo.pt"), "--save-epochs", str(solo)],
                      cwd=tmp_path).returncode == 0
    for epoch in range(3):
        assert _equal(torch.load(solo / f"epoch{epoch}.pt"), torch.load(saves / f"epoch{epoch}.pt"))


def test_a_script_that_evaluates_between_epochs_restarts_from_the_beginning_and_says_why(tmp_path):
    reference = _reference(tmp_path, "--eval")
    result, report, resumed = _killed_and_relaunched(tmp_path, "--eval")
    assert "restarting from the beginning, not from ckpt-" in result.stderr
    assert "the script evaluates (puts its model in eval mode) after training began" in result.stderr
    assert "resume" not in report["attempts"][1]
    assert _equal(reference, resumed)


def test_a_learning_rate_from_the_scripts_own_counter_abandons_the_resume_and_restarts(tmp_path):
    reference = _reference(tmp_path, "--manual-lr")
    result, report, resumed = _killed_and_relaunched(tmp_path, "--manual-lr")
    second, third = report["attempts"][1:3]
    assert second["resume"]["status"] == "abandoned"
    assert "the first resumed step uses learning rates" in second["resume"]["message"]
    assert "does the script compute them from its own step counter?" in result.stderr
    assert "resume" not in third and third["steps"] == STEPS  # the third attempt ran from the beginning
    assert _equal(reference, resumed)  # and so nothing of the abandoned attempt leaked into the result


def test_an_oom_mid_epoch_resumes_from_the_checkpoint_with_micro_batches_and_the_same_training(tmp_path):
    # GIVEN a script whose tenth batch (a long padded sequence) needs ~19 MiB where the others need ~1.3 MiB
    script = str(SCRIPTS / "oom" / "padded_sequences.py")
    assert run_python([script, "--out", str(tmp_path / "reference.pt")], cwd=tmp_path).returncode == 0
    # WHEN it runs under a 12 MiB budget with a checkpoint every 3 steps
    result = run_torchdoctor(["run", "-q", "--memory-budget", "12MiB", "--checkpoint-every", "3", "--run-dir",
                              str(tmp_path / "run"), script, "--out", str(tmp_path / "resumed.pt")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "run")
    first, *later = report["attempts"]
    # THEN attempt 1 died at step 10, and every later attempt split the batches and resumed from step 9 (the
    # micro-batch size estimated from an OOM in the forward errs large: it may take one more attempt to fit)
    assert first["oom"]["step"] == 10 and first["steps"] == 9
    for attempt in later:
        assert attempt["plan"]["micro_batches"] >= 2 and attempt["resume"]["step"] == 9
        assert "0 pass(es) and 9 batch(es) skipped" in attempt["resume"]["message"]
    assert later[-1]["steps"] == 30 and report["recovery"]["steps_redone"] == 0
    # AND the weights are those of the uninterrupted run without a budget (up to float summation order)
    reference, resumed = torch.load(tmp_path / "reference.pt"), torch.load(tmp_path / "resumed.pt")
    assert all(torch.allclose(reference[k], resumed[k], rtol=0, atol=1e-6) for k in reference)


def test_gradients_the_checkpoint_did_not_hold_abandon_the_resume_when_the_script_adds_to_them(tmp_path):
    # A script that never calls zero_grad() adds each step's gradient to all the earlier ones; they are not in
    # the checkpoint (it holds no gradients), so resuming would train differently: it must restart instead.
    reference = _reference(tmp_path, "--no-zero-grad")
    result, report, resumed = _killed_and_relaunched(tmp_path, "--no-zero-grad")
    second = report["attempts"][1]
    assert second["resume"]["status"] == "abandoned"
    assert "adds the next gradients to ones it did not reset" in second["resume"]["message"]
    assert _equal(reference, resumed)

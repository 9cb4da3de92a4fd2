"""Scripts that really run out of memory under --memory-budget on the CPU, and really recover.

Each scenario runs the unmodified script twice: bare (the reference, with all the memory it wants) and under
`torchdoctor run --memory-budget`, where it OOMs; the recovered run must end with the same weights and the same
number of optimizer steps. "The same weights" is up to the float rounding of accumulating micro-batch gradients:
up to 3.7e-5 relative after 8 momentum-SGD steps on one CPU seen here (bit-identical to the same accumulation
written by hand in the script), hence WEIGHTS.
"""

from __future__ import annotations

import json
import signal

import pytest
import torch

from tests.conftest import SCRIPTS, read_report, run_python, run_torchdoctor

pytestmark = pytest.mark.e2e
OOM = SCRIPTS / "oom"
WEIGHTS = 1e-4  # relative: the rounding of summing two half-batch gradients instead of one whole-batch gradient


def max_relative_difference(a_path, b_path) -> float:
    a, b = torch.load(a_path), torch.load(b_path)
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)


def reference_and_recovered(tmp_path, script, budget, out_flag="--out", extra=()):
    """Run ``script`` bare and under a budget; both write their final weights with ``out_flag``."""
    def out(path):
        return [f"{out_flag}{path}"] if out_flag.endswith("=") else [out_flag, str(path)]

    ref, got = tmp_path / "ref.pt", tmp_path / "got.pt"
    bare = run_python([str(script), *extra, *out(ref)], cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    result = run_torchdoctor(["run", "-q", "--memory-budget", budget, "--run-dir", str(tmp_path / "run"),
                              str(script), *extra, *out(got)], cwd=tmp_path, timeout=300)
    return bare, result, read_report(tmp_path / "run"), max_relative_difference(ref, got)


def test_a_dataloader_script_that_ooms_in_backward_finishes_with_the_same_weights(tmp_path):
    # GIVEN an MLP trained on batches of 1024 from a shuffled DataLoader, and a 16 MiB budget it does not fit
    # WHEN it runs under torchdoctor
    bare, result, report, difference = reference_and_recovered(tmp_path, OOM / "dataloader_mlp.py", "16MiB")
    # THEN it ran out of memory in backward, recovered with micro-batches, and trained exactly as asked
    assert result.returncode == 0, result.stderr
    first = report["attempts"][0]
    assert first["outcome"] == "oom" and first["oom"]["phase"] == "backward"
    assert first["oom"]["backend"] == "torchdoctor-budget" and first["oom"]["capacity_bytes"] == 16 * 2**20
    assert "tried to allocate" in first["summary"] and "free of 16.0 MiB" in first["summary"]
    recovery = report["recovery"]
    assert recovery["recovered"] and recovery["remedies"] == ["micro-batch"] and recovery["effective_batch_kept"]
    assert recovery["steps_redone"] == first["steps"] and recovery["restarted_from"] == "beginning"
    assert report["attempts"][-1]["plan"]["micro_batches"] == 2
    assert report["steps"] == 8  # optimizer steps, as in the reference run
    # the script's own loop saw each micro-batch: its iteration count doubles (documented behaviour)
    assert bare.stdout == "loop iterations 8\n" and result.stdout == "loop iterations 16\n"
    assert difference < WEIGHTS  # no gradient counted twice, none lost
    assert report["findings"] == []  # torchdoctor's own accumulation is no training-loop bug
    peak = next(p for p in report["peaks"] if p["kind"] == "tensor_bytes")
    assert peak["bytes"] <= 16 * 2**20


def test_an_oom_only_in_evaluation_is_cured_by_no_grad_without_touching_training(tmp_path):
    bare, result, report, difference = reference_and_recovered(tmp_path, OOM / "eval_oom.py", "24MiB")
    assert result.returncode == 0, result.stderr
    assert report["attempts"][0]["oom"]["phase"] == "evaluation"
    plan = report["attempts"][-1]["plan"]
    assert plan["eval_no_grad"] and plan["micro_batches"] == 1  # the training batch is unchanged
    assert report["recovery"]["remedies"] == ["eval-no-grad"]
    assert difference == 0.0
    assert result.stdout == bare.stdout
    notes = [e["message"] for e in report["events"] if e["kind"] == "note"]
    assert any(n.startswith("eval-no-grad: 2 evaluation forwards") for n in notes)
    # the doctor names the script's own bug, at the line of the evaluation forward
    assert [f["id"] for f in report["findings"]] == ["TD110"]
    assert report["findings"][0]["location"].endswith("eval_oom.py:25")


def test_gradscaler_unscale_and_clipping_survive_the_retry(tmp_path):
    bare, result, report, difference = reference_and_recovered(tmp_path, OOM / "scaler_clip.py", "16MiB")
    assert result.returncode == 0, result.stderr
    assert "unscale_() has already been called" not in result.stderr
    assert report["recovery"]["recovered"] and report["steps"] == 8
    assert difference < WEIGHTS  # clipping, unscaling and the cosine schedule acted once per whole batch
    assert report["findings"] == []  # gated clipping and scheduler steps are not the script's bugs


def test_an_argparse_batch_size_is_divided_and_accumulated(tmp_path):
    bare, result, report, difference = reference_and_recovered(tmp_path, OOM / "argparse_batch.py", "14MiB")
    assert result.returncode == 0, result.stderr
    plan = report["attempts"][-1]["plan"]
    assert plan["batch_arg"] == "--batch_size" and plan["batch_arg_size"] == 1024 and plan["micro_batches"] == 2
    assert "batch_size=512" in result.stdout
    assert report["steps"] == 8 and difference < WEIGHTS


def test_a_key_value_config_override_is_divided_and_accumulated(tmp_path):
    bare, result, report, difference = reference_and_recovered(
        tmp_path, OOM / "keyvalue_batch.py", "14MiB", out_flag="--out=", extra=("--batch_size=1024",))
    assert result.returncode == 0, result.stderr
    assert "batch_size=512" in result.stdout
    assert report["attempts"][-1]["plan"]["batch_arg"] == "--batch_size"
    assert report["steps"] == 8 and difference < WEIGHTS


def test_without_effective_batch_kept_the_batch_really_shrinks(tmp_path):
    result = run_torchdoctor(["run", "-q", "--memory-budget", "16MiB", "--no-keep-effective-batch", "--run-dir",
                              str(tmp_path / "run"), str(OOM / "dataloader_mlp.py")], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "run")
    assert report["recovery"]["effective_batch_kept"] is False
    assert report["steps"] == 16  # twice the optimizer steps on half the batch: said, not hidden


def test_no_remedy_left_gives_up_with_the_scripts_own_exit_code(tmp_path):
    result = run_torchdoctor(["run", "-q", "--memory-budget", "10MiB", "--remedies", "micro-batch", "--min-batch-size", "512", "--run-dir",
                              str(tmp_path / "run"), str(OOM / "dataloader_mlp.py")], cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    report = read_report(tmp_path / "run")
    assert report["outcome"] == "failed" and report["exception"]["type"] == "OutOfMemoryError"
    assert report["recovery"]["recovered"] is False and report["recovery"]["gave_up"]
    assert report["ooms"] and report["ooms"][-1]["breakdown"]["parameters"] > 0


def test_a_sigkill_is_reported_as_a_host_memory_kill_and_relaunched_within_max_retries(tmp_path):
    result = run_torchdoctor(["run", "-q", "--max-retries", "2", "--run-dir", str(tmp_path / "run"),
                              str(SCRIPTS / "self_kill.py")], cwd=tmp_path, timeout=300)
    assert result.returncode == 128 + signal.SIGKILL
    report = read_report(tmp_path / "run")
    assert [a["outcome"] for a in report["attempts"]] == ["host-kill"] * 3
    assert "killed by SIGKILL" in report["attempts"][0]["summary"]
    assert report["attempts"][-1]["decision"] == "--max-retries 2 reached"


def test_a_failure_that_is_not_an_oom_is_never_retried(scripts, tmp_path):
    result = run_torchdoctor(["run", "-q", "--memory-budget", "1GiB", "--run-dir", str(tmp_path / "run"),
                              str(scripts / "semantics.py"), "--exit", "7"], cwd=tmp_path)
    assert result.returncode == 7
    report = read_report(tmp_path / "run")
    assert len(report["attempts"]) == 1 and report["recovery"] is None
    json.dumps(report)


def test_a_real_cpu_allocator_failure_under_a_heap_limit_is_caught_and_recovered(tmp_path):
    # GIVEN a heap limit (RLIMIT_DATA) the script's 2048-row batch does not fit in: malloc really fails
    result = run_torchdoctor(["run", "-q", "--host-memory-limit", "620MiB", "--run-dir", str(tmp_path / "run"),
                              str(OOM / "host_alloc.py")], cwd=tmp_path, timeout=300)
    # THEN the allocator's own RuntimeError is recognised as an OOM and the run recovers with micro-batches
    assert result.returncode == 0, result.stderr
    assert "DefaultCPUAllocator: can't allocate memory" in result.stderr
    report = read_report(tmp_path / "run")
    first = report["attempts"][0]
    assert first["outcome"] == "oom" and first["oom"]["backend"] == "cpu"
    assert first["oom"]["requested_bytes"] == 2048 * 16384 * 4
    assert report["recovery"]["recovered"] and report["steps"] == 1
    assert "trained" in result.stdout

"""`torchdoctor run --nproc-per-node 2`: a tiny DDP script on gloo, two processes on the CPU, under torch's own
launcher (torchrun), an agent in every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, SCRIPTS, read_report, run_torchdoctor

pytestmark = pytest.mark.e2e

DDP = SCRIPTS / "distributed" / "ddp_train.py"


def test_two_ranks_run_and_each_has_its_figures_in_the_report(tmp_path):
    # GIVEN a DDP script where rank 1 holds 16 MiB more than rank 0
    # WHEN it runs on 2 processes, torchrun options passed through
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "--nproc-per-node", "2", "--standalone",
                              "--max-restarts", "0", str(DDP), "--extra-mib-rank", "1"], cwd=tmp_path)
    # THEN both ranks trained, and the report has each rank's steps and peak, and says rank 1 holds more
    assert result.returncode == 0, result.stderr
    assert "rank 0 done 4 steps" in result.stdout and "rank 1 done 4 steps" in result.stdout
    report = read_report(tmp_path / "r")
    assert report["outcome"] == "success" and report["steps"] == 4
    distributed = report["distributed"]
    assert distributed["world_size"] == 2
    ranks = {r["rank"]: r for r in distributed["ranks"]}
    assert set(ranks) == {0, 1}
    assert [ranks[r]["events"] for r in (0, 1)] == ["events.jsonl", "events-rank1.jsonl"]
    for rank in ranks.values():
        assert rank["steps"] == 4 and rank["ended"] == "finished" and rank["peak"]["kind"] == "tensor_bytes"
    assert ranks[1]["peak"]["bytes"] - ranks[0]["peak"]["bytes"] >= 16 << 20
    assert distributed["imbalance"]["rank"] == 1 and distributed["root_cause"] is None
    assert "2 ranks" in result.stderr and "memory imbalance: rank 1 peak" in result.stderr
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, json.loads((REPO / "torchdoctor" / "schemas" / "report-v1.schema.json").read_text()))
    # each rank's own events: its RunStarted says which rank wrote them
    for name, rank in (("events.jsonl", 0), ("events-rank1.jsonl", 1)):
        started = [json.loads(line) for line in (tmp_path / "r" / name).read_text().splitlines()
                   if '"run_started"' in line]
        assert [(s["rank"], s["local_rank"], s["world_size"]) for s in started] == [(rank, rank, 2)]


def test_a_rank_killed_by_sigkill_is_named_as_the_root_cause(tmp_path):
    # GIVEN rank 1 SIGKILLs itself after 2 steps (rank 0 then fails in gloo, and torchrun stops it)
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "--max-retries", "0", "--nproc-per-node",
                              "2", str(DDP), "--kill-rank", "1"], cwd=tmp_path)
    # THEN torchrun's exit (1) is returned, and the report names rank 1 and the signal, not rank 0's network error
    assert result.returncode == 1
    report = read_report(tmp_path / "r")
    cause = report["distributed"]["root_cause"]
    assert (cause["rank"], cause["signal"], cause["exit_code"]) == (1, "SIGKILL", -9)
    assert cause["why"].startswith("rank 1 was killed by SIGKILL")
    assert report["exception"] is None  # not rank 0's "Connection closed by peer"
    ranks = {r["rank"]: r for r in report["distributed"]["ranks"]}
    assert ranks[1]["ended"] == "killed by SIGKILL" and ranks[1]["steps"] == 2
    assert ranks[0]["ended"] != "finished"
    assert "root cause: rank 1 was killed by SIGKILL" in result.stderr
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, json.loads((REPO / "torchdoctor" / "schemas" / "report-v1.schema.json").read_text()))


def test_an_oom_on_one_rank_gives_every_rank_the_same_new_plan(tmp_path):
    # GIVEN rank 1 holds 4 MiB more than rank 0, and a budget that only rank 1 exceeds at batch 256 (its peak
    # 7.3 MiB measured here, rank 0's 3.3 MiB; 5.7 MiB at batch 128)
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "--memory-budget", "7.2MiB",
                              "--nproc-per-node", "2", str(DDP), "--hidden", "1024", "--batch-size", "256",
                              "--extra-mib-rank", "1", "--extra-mib", "4"], cwd=tmp_path)
    # THEN attempt 1's OOM is rank 1's, and attempt 2 runs both ranks on micro-batches (each rank's loop went round
    # once per micro-batch: 8 times for 4 steps) and succeeds, the training kept
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "r")
    first, second = report["attempts"]
    assert first["outcome"] == "oom" and first["summary"].endswith("on rank 1") and first["oom"]["step"] == 1
    assert second["outcome"] == "success" and second["plan"]["micro_batches"] >= 2
    assert "rank 0 done 8 steps" in result.stdout and "rank 1 done 8 steps" in result.stdout
    assert [r["steps"] for r in report["distributed"]["ranks"]] == [4, 4]
    assert report["recovery"]["recovered"] and report["recovery"]["training_changed"] == []


def test_a_stall_takes_the_first_ranks_stacks_and_stops_the_launcher(tmp_path):
    # GIVEN every rank stuck after joining the group
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "--stall-timeout", "8", "--stop-grace",
                              "3", "--nproc-per-node", "2", str(SCRIPTS / "distributed" / "ddp_stall.py")],
                             cwd=tmp_path)
    # THEN the stacks come from rank 0 (the stacks signal goes to it, not to torchrun, which it would kill), and the
    # stop reaches torchrun, which stops the ranks
    assert result.returncode == 124, result.stderr
    report = read_report(tmp_path / "r")
    assert report["stall"]["where"].endswith("ddp_stall.py:11 in <module>")
    assert "ddp_stall.py\", line 11" in report["stall"]["stacks"]
    assert report["distributed"]["root_cause"] is None  # torchdoctor stopped it: no rank is blamed


def test_an_unknown_torchrun_option_is_refused_in_one_line(tmp_path):
    result = run_torchdoctor(["run", "--nproc-per-node", "2", "--rdzv-bogus", "x", str(DDP)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "torchdoctor: error: no such option: --rdzv-bogus (see torchdoctor run --help)\n"
    assert not (tmp_path / "torchdoctor-runs").exists()


def test_plain_torchrun_with_the_agents_bootstrap_leaves_a_report_to_rebuild(tmp_path):
    # GIVEN a cluster whose scheduler owns the launch line: torchrun itself runs the agent's bootstrap module
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCHDOCTOR_EVENTS": str(run_dir / "events.jsonl")}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "torchdoctor.agent.bootstrap", str(DDP)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stderr
    # WHEN the report is rebuilt from the event files
    shown = run_torchdoctor(["report", str(run_dir)], cwd=tmp_path)
    # THEN it has both ranks, each from its own events file
    assert shown.returncode == 0, shown.stderr
    assert (run_dir / "events-rank1.jsonl").exists()
    assert "Ranks (2 in the run" in shown.stdout + shown.stderr


def _final_params(prefix) -> list[dict]:
    """Each rank's final parameters, as the script saved them (``--save-params``)."""
    import torch

    return [torch.load(f"{prefix}-rank{rank}.pt") for rank in (0, 1)]


def _events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_an_oom_on_rank_1_alone_ends_with_the_unconstrained_weights_on_both_ranks(tmp_path):
    import torch

    # GIVEN the DDP script where only rank 1 runs out of memory under a 7.2 MiB budget at batch 256
    script = [str(DDP), "--hidden", "1024", "--batch-size", "256", "--extra-mib-rank", "1", "--extra-mib", "4"]
    plain = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "plain"), "--nproc-per-node", "2", *script,
                             "--save-params", str(tmp_path / "plain")], cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    # WHEN it runs under the budget, with checkpoints
    began = time.monotonic()
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "--memory-budget", "7.2MiB",
                              "--checkpoint-every", "2", "--nproc-per-node", "2", *script,
                              "--save-params", str(tmp_path / "budget")], cwd=tmp_path, timeout=150)
    took = time.monotonic() - began
    # THEN it finishes in time, attempt 1's OOM is rank 1's, and attempt 2 runs both ranks on the same micro-batches
    assert result.returncode == 0, result.stderr
    assert took < 90, took
    report = read_report(tmp_path / "r")
    first, second = report["attempts"]
    assert first["outcome"] == "oom" and first["summary"].endswith("on rank 1")
    assert second["outcome"] == "success" and second["plan"]["micro_batches"] == 2
    splits = []
    for name in ("events.jsonl", "events-rank1.jsonl"):
        figures = [e for e in _events(tmp_path / "r" / name) if e["kind"] == "training_figures"][-1]
        steps = figures["updates"][0]["first"]
        splits.append([[size for size, _ in step["parts"]] for step in steps])
    assert splits[0] == splits[1] and all(len(sizes) == 2 and sum(sizes) == 256 for sizes in splits[0])
    # and the final parameters are the same on both ranks, and the unconstrained run's within 1e-5 relative
    rank0, rank1 = _final_params(tmp_path / "budget")
    expected, _ = _final_params(tmp_path / "plain")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    for key, value in expected.items():
        assert torch.allclose(rank0[key], value, rtol=1e-5, atol=1e-5 * float(value.abs().max())), key


def test_a_rank_killed_mid_run_is_named_relaunched_and_resumed_to_the_uninterrupted_weights(tmp_path):
    import torch

    # GIVEN 2 epochs of 5 steps, shuffled, with dropout (each rank its own masks) and momentum, uninterrupted under
    # plain torchrun
    script = [str(DDP), "--steps", "5", "--epochs", "2", "--shuffle", "--dropout", "0.1", "--momentum", "0.9"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TORCHDOCTOR_EVENTS", None)
    plain = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            *script, "--save-params", str(tmp_path / "plain")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    # WHEN rank 1 SIGKILLs itself after 7 steps in attempt 1, with a checkpoint every 3 steps
    began = time.monotonic()
    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "--checkpoint-every", "3",
                              "--nproc-per-node", "2", *script, "--kill-rank", "1", "--kill-at", "7",
                              "--kill-attempt", "1", "--save-params", str(tmp_path / "resumed")], cwd=tmp_path,
                             timeout=150)
    took = time.monotonic() - began
    # THEN the kill is reported with its rank, the relaunch resumes every rank from the checkpoint of step 6
    assert result.returncode == 0, result.stderr
    assert took < 90, took
    report = read_report(tmp_path / "r")
    first, second = report["attempts"]
    assert first["outcome"] == "host-kill" and first["summary"].startswith("was killed by SIGKILL on rank 1")
    assert "resuming from the checkpoint of step 6, ckpt-000000002.pt" in result.stderr
    assert second["resume"]["status"] == "resumed" and second["resume"]["step"] == 6
    assert report["recovery"]["restarted_from"] == "checkpoint of step 6" and report["steps"] == 10
    for name in ("events.jsonl", "events-rank1.jsonl"):
        events = _events(tmp_path / "r" / name)
        resumed = [e for e in events if e["kind"] == "resume"]
        assert [(e["status"], e["step"], e["checkpoint"].rsplit("/", 1)[1]) for e in resumed] == [
            ("resumed", 6, "ckpt-000000002.pt")]
        assert any(e["kind"] == "note" and e["message"].startswith("resumed step verified against the first run "
                                                                    "(learning rates, backward passes and losses)")
                   for e in events)
    assert "rank 0 done 4 steps" in result.stdout and "rank 1 done 4 steps" in result.stdout  # steps 7 to 10
    # and both ranks end with the uninterrupted run's parameters, bit for bit
    rank0, rank1 = _final_params(tmp_path / "resumed")
    expected, _ = _final_params(tmp_path / "plain")
    assert all(torch.equal(rank0[k], expected[k]) and torch.equal(rank1[k], expected[k]) for k in expected)
    checkpoints = tmp_path / "r" / "checkpoints"
    assert json.loads((checkpoints / "ckpt-000000002.pt.json").read_text())["world_size"] == 2
    assert (checkpoints / "ranks" / "rank1-step000000006.pt.json").exists()


def test_a_rank_that_cannot_resume_ends_the_attempt_and_no_rank_waits_for_it(tmp_path):
    from torchdoctor.plan import Plan

    # GIVEN a finished run's checkpoints, rank 1's part of the newest one damaged on disk (its marker still there)
    script = [str(DDP), "--steps", "5", "--epochs", "2", "--momentum", "0.9"]
    first = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), "--checkpoint-every", "3",
                             "--nproc-per-node", "2", *script], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    checkpoints = tmp_path / "r" / "checkpoints"
    (checkpoints / "ranks" / "rank1-step000000009.pt").write_bytes(b"damaged")
    Plan(resume_from=str(checkpoints / "ckpt-000000003.pt")).write(str(tmp_path / "plan.json"))
    # WHEN every rank is started to resume from it (torchrun itself, the agent's bootstrap as its module)
    run_dir = tmp_path / "again"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCHDOCTOR_EVENTS": str(run_dir / "events.jsonl"),
           "TORCHDOCTOR_PLAN": str(tmp_path / "plan.json")}
    began = time.monotonic()
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "torchdoctor.agent.bootstrap", *script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    took = time.monotonic() - began
    # THEN rank 1 does not start from the beginning alone: it ends at its first batch with a resume abandoned (the
    # supervisor's cue to restart every rank), rank 0, resumed, loses its peer instead of waiting, and all is over
    # in seconds
    assert launched.returncode != 0
    assert took < 60, took
    rank1 = [e for e in _events(run_dir / "events-rank1.jsonl") if e["kind"] in ("resume", "run_finished")]
    assert rank1[0]["status"] == "abandoned" and rank1[0]["restart"] is True
    assert rank1[0]["message"].startswith("resume abandoned: rank 1 cannot resume (")
    assert "every rank must start from the same point" in rank1[0]["message"]
    assert (rank1[1]["exit_code"], rank1[1]["exception"], rank1[1]["steps"]) == (3, "ResumeAbandoned", 0)
    rank0 = [e for e in _events(run_dir / "events.jsonl") if e["kind"] in ("resume", "run_finished")]
    assert rank0[0]["status"] == "resumed" and rank0[-1]["kind"] == "run_finished" and rank0[-1]["exit_code"] != 0


def test_each_ranks_findings_reach_the_report_once_or_with_the_ranks_that_had_them(tmp_path):
    # GIVEN every rank never resets its gradients (TD101), and rank 1 alone keeps every step's loss with its graph
    result = run_torchdoctor(["run", "--run-dir", str(tmp_path / "r"), "--nproc-per-node", "2", str(DDP),
                              "--steps", "8", "--no-zero-grad", "--keep-graph-rank", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # THEN each rank's doctor found its own (in its own events file), and the report lists TD101 once (every rank
    # had it at the same line) and TD109 with rank 1 alone
    for name, ids in (("events.jsonl", {"TD101"}), ("events-rank1.jsonl", {"TD101", "TD109"})):
        assert {e["id"] for e in _events(tmp_path / "r" / name) if e["kind"] == "finding"} == ids
    report = read_report(tmp_path / "r")
    found = {f["id"]: f for f in report["findings"]}
    assert len(report["findings"]) == 2
    assert found["TD101"]["location"].endswith("ddp_train.py:65") and "ranks" not in found["TD101"]
    assert found["TD109"]["location"].endswith("ddp_train.py:64") and found["TD109"]["ranks"] == [1]
    assert "ddp_train.py:64] (rank 1 only)" in result.stderr
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, json.loads((REPO / "torchdoctor" / "schemas" / "report-v1.schema.json").read_text()))

"""Resuming a run under torch's launcher, the supervisor's side (no torch): which checkpoint every rank loads, and
which rank's end an attempt is read from."""

from __future__ import annotations

import json

from tests.unit.test_distributed_ranks import failed, killed, rank_state
from torchdoctor.events import RanksFailed, Resume
from torchdoctor.files import rank_part_path, sha256_of
from torchdoctor.supervisor.ranks import failing_returncode, failing_state
from torchdoctor.supervisor.resume_source import resume_source


def checkpoint(directory, number: int, step: int, *, world: int = 2, fingerprint: str = "f0") -> None:
    path = directory / f"ckpt-{number:09d}.pt"
    path.write_bytes(b"rank 0's checkpoint %d" % step)
    marker = {"format": "torchdoctor.checkpoint", "file": path.name, "size": path.stat().st_size,
              "sha256": sha256_of(str(path)), "step": step, "world_size": world, "fingerprint": fingerprint,
              "resume": {"resumable": True, "step": step}}
    (directory / f"{path.name}.json").write_text(json.dumps(marker))


def part(directory, rank: int, step: int, *, fingerprint: str = "f0", resumable: bool = True,
         why: str | None = None) -> None:
    path = rank_part_path(str(directory), rank, step)
    (directory / "ranks").mkdir(exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"part")
    with open(path + ".json", "w") as handle:
        json.dump({"rank": rank, "step": step, "world_size": 2, "fingerprint": fingerprint,
                   "resume": {"resumable": resumable, "why": why, "step": step}}, handle)


def test_the_newest_checkpoint_every_rank_has_its_part_of_is_the_one_resumed(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    checkpoint(directory, 1, 3)
    checkpoint(directory, 2, 6)
    part(directory, 1, 3)  # rank 1 was killed before it wrote its part of step 6
    source, message = resume_source(str(tmp_path), checkpoint_every=3, blocked=None, world_size=2)
    assert source == str(directory / "ckpt-000000001.pt")
    assert message == ("resuming from the checkpoint of step 3, ckpt-000000001.pt (ckpt-000000002.pt skipped: "
                       "rank 1 has no part of it)")
    part(directory, 1, 6)
    source, message = resume_source(str(tmp_path), checkpoint_every=3, blocked=None, world_size=2)
    assert source == str(directory / "ckpt-000000002.pt") and message.endswith("step 6, ckpt-000000002.pt")


def test_ranks_that_held_different_weights_or_another_world_size_restart_from_the_beginning(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    checkpoint(directory, 1, 3)
    part(directory, 1, 3, fingerprint="other")
    source, message = resume_source(str(tmp_path), checkpoint_every=3, blocked=None, world_size=2)
    assert source is None
    assert message.startswith("restarting from the beginning: rank 1's training state at step 3 is not rank 0's")
    part(directory, 1, 3)
    source, message = resume_source(str(tmp_path), checkpoint_every=3, blocked=None, world_size=4)
    assert source is None
    assert message == ("restarting from the beginning: ckpt-000000001.pt was written by 2 processes and this run "
                       "has 4")
    part(directory, 1, 3, resumable=False, why="the training DataLoader keeps its workers across passes")
    source, message = resume_source(str(tmp_path), checkpoint_every=3, blocked=None, world_size=2)
    assert source is None
    assert message == ("restarting from the beginning: rank 1 cannot resume from ckpt-000000001.pt: the training "
                       "DataLoader keeps its workers across passes")


def test_a_rank_that_cannot_resume_makes_the_attempt_a_restart_of_every_rank():
    # rank 1 abandoned its resume (exit 3); rank 0, resumed, failed of its own before that was seen
    main = rank_state(0, 1 << 20, finished=failed("ValueError", "a bug of the script's", t=101.0))
    rank1 = rank_state(1, 1 << 20, finished=failed("ResumeAbandoned", "rank 1 cannot resume", t=102.0))
    rank1.apply(Resume(status="abandoned", message="resume abandoned: rank 1 cannot resume", restart=True))
    assert failing_state(main, {"events-rank1.jsonl": rank1}) is rank1


def test_a_rank_killed_by_sigkill_gives_the_attempt_its_exit():
    main = rank_state(0, 1 << 20, finished=failed("RuntimeError", "Connection closed by peer", t=103.0))
    main.apply(RanksFailed(failures=[killed(1, "SIGKILL", -9)]))
    others = {"events-rank1.jsonl": rank_state(1, 1 << 20)}
    assert failing_returncode(main, others, 1) == -9
    assert failing_returncode(main, others, 0) == 0


def _finding(id_: str, location: str, evidence: str = "seen"):
    from torchdoctor.events import Finding

    return Finding(id=id_, severity="error", title=id_, location=location, evidence=evidence, fix="fix it")


def test_findings_every_rank_had_are_listed_once_the_others_with_their_ranks():
    from torchdoctor.supervisor.rank_findings import merged_findings

    states = {r: rank_state(r, 1 << 20, world=3) for r in (0, 1, 2)}
    for rank, state in states.items():
        state.apply(_finding("TD101", "train.py:9", evidence=f"rank {rank}'s words"))
    states[2].apply(_finding("TD109", "train.py:12"))
    states[1].apply(_finding("TD109", "train.py:12"))
    states[1].apply(_finding("TD101", "train.py:30"))  # the same problem at another line is another finding
    merged = merged_findings(states[0], {"events-rank2.jsonl": states[2], "events-rank1.jsonl": states[1]})
    assert [(f["id"], f["location"], f.get("ranks"), f["evidence"]) for f in merged] == [
        ("TD101", "train.py:9", None, "rank 0's words"), ("TD109", "train.py:12", [1, 2], "seen"),
        ("TD101", "train.py:30", [1], "seen")]
    assert merged_findings(states[0], {}) == [{k: v for k, v in states[0].findings[0].to_dict().items()
                                               if k not in ("v", "kind")}]

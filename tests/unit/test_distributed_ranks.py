"""The report's `distributed` section from the ranks' event streams (pure: RunStates built from events)."""

from __future__ import annotations

from torchdoctor.events import MemorySample, RanksFailed, RunFinished, RunStarted
from torchdoctor.supervisor.ranks import distributed_summary
from torchdoctor.supervisor.state import RunState, fold


def rank_state(rank: int, peak: int, *, finished: RunFinished | None = None, t: float = 100.0,
               world: int = 2) -> RunState:
    events = [RunStarted(pid=1000 + rank, target="t.py", is_module=False, argv=["t.py"], python="3", torch_version="2",
                         cuda_version=None, cuda_devices=0, accounting="sampled", sample_every=50, rank=rank,
                         local_rank=rank, world_size=world, t=t),
              MemorySample(step=1, span="step", step_time_s=0.1, measured=True, rss_bytes=1 << 28,
                           devices={"cpu": {"tensor_bytes": peak, "tensor_peak": peak}}, t=t + 1)]
    return fold(events + ([finished] if finished else []))


def failed(exception: str, message: str, t: float) -> RunFinished:
    return RunFinished(exit_code=1, exception=exception, message=message, steps=1, dropped_events=0, t=t)


def ok(t: float = 102.0) -> RunFinished:
    return RunFinished(exit_code=0, exception=None, message=None, steps=1, dropped_events=0, t=t)


def killed(rank: int, signal: str, code: int) -> dict:
    return {"rank": rank, "local_rank": rank, "pid": 1000 + rank, "exit_code": code, "signal": signal,
            "message": f"Signal {-code} ({signal}) received by PID {1000 + rank}"}


def test_a_single_process_run_has_no_distributed_section():
    state = fold([RunStarted(pid=1, target="t.py", is_module=False, argv=[], python="3", torch_version="2",
                             cuda_version=None, cuda_devices=0, accounting="sampled", sample_every=50)])
    assert distributed_summary(state, {}, stopped=False) is None


def test_every_rank_has_its_figures_and_balanced_ranks_no_imbalance():
    summary = distributed_summary(rank_state(0, 10 << 20, finished=ok()),
                                  {"events-rank1.jsonl": rank_state(1, 11 << 20, finished=ok())}, stopped=False)
    assert summary is not None
    assert [(r["rank"], r["steps"], r["peak"]["bytes"], r["ended"]) for r in summary["ranks"]] == [
        (0, 1, 10 << 20, "finished"), (1, 1, 11 << 20, "finished")]
    assert summary["world_size"] == 2
    assert summary["root_cause"] is None and summary["imbalance"] is None


def test_one_rank_far_above_the_others_is_named():
    others = {f"events-rank{r}.jsonl": rank_state(r, 10 << 20, world=4) for r in (1, 2)}
    others["events-rank3.jsonl"] = rank_state(3, 30 << 20, world=4)
    summary = distributed_summary(rank_state(0, 10 << 20, world=4), others, stopped=False)
    assert summary is not None
    imbalance = summary["imbalance"]
    assert (imbalance["rank"], imbalance["bytes"], imbalance["others_bytes"], imbalance["ratio"]) == (
        3, 30 << 20, 10 << 20, 3.0)
    assert imbalance["message"].startswith("memory imbalance: rank 3's peak tensor bytes 30.0 MiB is 3.0×")


def test_a_small_difference_is_no_imbalance():
    # 1.5x, but under a MiB apart: noise of a tiny model, not a rank holding more
    summary = distributed_summary(rank_state(0, 200 << 10), {"events-rank1.jsonl": rank_state(1, 300 << 10)},
                                  stopped=False)
    assert summary is not None and summary["imbalance"] is None


def test_a_rank_killed_by_a_signal_is_the_root_cause_not_its_peers_network_error():
    # GIVEN rank 0 failed first in time with gloo's error (its peer went away), then torchrun stopped it; rank 1 was
    # SIGKILLed and wrote nothing more
    main = rank_state(0, 1 << 20, finished=failed("RuntimeError", "[gloo/pair.cc:553] Connection closed by peer", 101))
    main.apply(RanksFailed(failures=[killed(0, "SIGTERM", -15), killed(1, "SIGKILL", -9)]))
    summary = distributed_summary(main, {"events-rank1.jsonl": rank_state(1, 1 << 20)}, stopped=False)
    assert summary is not None
    cause = summary["root_cause"]
    assert (cause["rank"], cause["signal"], cause["exit_code"], cause["exception"]) == (1, "SIGKILL", -9, None)
    assert cause["why"].startswith("rank 1 was killed by SIGKILL")
    assert "rank 0: failed: RuntimeError, then killed by SIGTERM (a peer went away)" in cause["why"]


def test_a_rank_s_own_exception_comes_before_the_peers_it_broke():
    oom = failed("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB", 105)
    main = rank_state(0, 1 << 20, finished=failed("DistBackendError", "NCCL watchdog timeout", 103))
    summary = distributed_summary(main, {"events-rank1.jsonl": rank_state(1, 1 << 20, finished=oom)}, stopped=False)
    assert summary is not None
    assert summary["root_cause"]["rank"] == 1
    assert summary["root_cause"]["exception"]["type"] == "OutOfMemoryError"


def test_a_rank_that_left_no_end_is_suspected_before_a_peers_network_error():
    main = rank_state(0, 1 << 20, finished=failed("RuntimeError", "Connection reset by peer", 101))
    summary = distributed_summary(main, {"events-rank1.jsonl": rank_state(1, 1 << 20)}, stopped=False)
    assert summary is not None
    assert summary["root_cause"]["rank"] == 1
    assert summary["ranks"][1]["ended"] == "no end recorded (killed?)"


def test_a_run_torchdoctor_stopped_blames_no_rank():
    main = rank_state(0, 1 << 20)
    main.apply(RanksFailed(failures=[killed(0, "SIGTERM", -15), killed(1, "SIGTERM", -15)]))
    summary = distributed_summary(main, {"events-rank1.jsonl": rank_state(1, 1 << 20)}, stopped=True)
    assert summary is not None and summary["root_cause"] is None


def test_a_rank_that_failed_before_its_first_event_is_still_listed():
    main = rank_state(0, 1 << 20)
    main.apply(RanksFailed(failures=[killed(1, "SIGSEGV", -11)]))
    summary = distributed_summary(main, {}, stopped=False)
    assert summary is not None
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    assert summary["root_cause"]["rank"] == 1 and summary["root_cause"]["signal"] == "SIGSEGV"


def test_the_attempts_end_is_read_from_the_rank_where_the_failure_began():
    from torchdoctor.supervisor.ranks import failing_state

    oom = failed("OutOfMemoryError", "CPU out of memory. Tried to allocate 1.00 MiB", 105)
    main = rank_state(0, 1 << 20, finished=failed("RuntimeError", "Connection closed by peer", 104))
    rank1 = rank_state(1, 1 << 20, finished=oom)
    assert failing_state(main, {"events-rank1.jsonl": rank1}) is rank1
    # nothing failed, or the first rank did: the first rank's
    assert failing_state(rank_state(0, 1, finished=ok()), {"events-rank1.jsonl": rank_state(1, 1, finished=ok())}
                         ).started.rank == 0
    first = rank_state(0, 1 << 20, finished=oom)
    assert failing_state(first, {"events-rank1.jsonl": rank_state(1, 1 << 20, finished=ok())}) is first

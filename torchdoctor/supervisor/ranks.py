"""A run under torch's launcher, rank by rank: every rank's event stream folded on its own, and from them the
report's ``distributed`` section (each rank's figures and end, which rank failed first, memory imbalance).

The first process of the machine (LOCAL_RANK 0) writes the run's ``events.jsonl`` (the run's state, as in a single
process); every other rank ``events-rank{RANK}.jsonl`` (``config.AgentSettings.for_rank``). torch's launcher adds
the failed ranks' exits (``RanksFailed``) to ``events.jsonl``. The summary is pure: no torch, no I/O.
"""

from __future__ import annotations

import os
import re
from typing import Any

from torchdoctor.sizes import format_bytes
from torchdoctor.supervisor.event_tail import EventTail
from torchdoctor.supervisor.state import RunState

RANK_FILE = re.compile(r"^events-rank(\d+)\.jsonl$")
# One rank's peak this much above the median of the others' (and at least IMBALANCE_MIN_BYTES more) is imbalance.
IMBALANCE_RATIO = 1.25
IMBALANCE_MIN_BYTES = 1 << 20
# A rank's exception that says a peer went away, or the group broke: what follows another rank's failure.
PEER_ERROR = re.compile(r"connection (?:closed|reset|refused)|broken pipe|peer|gloo|nccl|timed? ?out|socket|"
                        r"rendezvous|tcpstore|process ?group|collective", re.IGNORECASE)
# Signals torchrun (or torchdoctor's stop) sends to ranks it stops after another one failed, or on a user's stop.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
# The figure a rank's peak is read from, the first the rank measured.
PEAK_KINDS = ("tensor_bytes", "cuda_allocated", "process_rss")


class RankStreams:
    """The event files of the ranks other than the run's own, found in the run directory as they appear, each
    folded into its own ``RunState`` (reset with each attempt; the files keep being read where they were)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._tails: dict[str, EventTail] = {}
        self.states: dict[str, RunState] = {}

    def reset(self) -> None:
        for name in self._tails:
            self._tails[name].read()  # what an earlier attempt left unread is not this attempt's
        self.states = {}

    def read(self) -> None:
        try:
            names = [n for n in os.listdir(self.run_dir) if RANK_FILE.match(n)]
        except OSError:
            return
        for name in names:
            tail = self._tails.setdefault(name, EventTail(os.path.join(self.run_dir, name)))
            events = tail.read()
            if events:
                state = self.states.setdefault(name, RunState())
                for event in events:
                    state.apply(event)


def _peak(state: RunState) -> dict[str, Any] | None:
    """A rank's headline peak: its largest value of the first kind it measured (tensor bytes where counted)."""
    for kind in PEAK_KINDS:
        found = [p for p in state.peaks.values() if p.kind == kind]
        if found:
            best = max(found, key=lambda p: p.bytes)
            return {"device": best.device, "kind": kind, "bytes": best.bytes, "step": best.step}
    return None


def _rank_entry(name: str, state: RunState, failure: dict[str, Any] | None) -> dict[str, Any]:
    started, finished = state.started, state.finished
    rank = started.rank if started and started.rank is not None else (failure or {}).get("rank")
    entry: dict[str, Any] = {
        "rank": rank,
        "local_rank": started.local_rank if started else (failure or {}).get("local_rank"),
        "pid": started.pid if started else (failure or {}).get("pid"),
        "events": name,
        "steps": state.steps,
        "peak": _peak(state),
        "exit_code": None, "signal": None, "exception": None,
        "ended_at": (finished.t if finished else state.last_t),
    }
    if finished is not None:
        entry["exit_code"] = finished.exit_code
        if finished.exception:
            entry["exception"] = {"type": finished.exception, "message": finished.message}
    if failure is not None:  # torch's launcher saw the process end: its exit code is the one that counts
        entry["exit_code"] = failure.get("exit_code")
        entry["signal"] = failure.get("signal")
    entry["ended"] = _ended(entry, finished is not None)
    return entry


def _ended(entry: dict[str, Any], finished: bool) -> str:
    exception = entry["exception"]
    if entry["signal"]:  # after its own exception, torchrun may still have stopped it while it was cleaning up
        return (f"failed: {exception['type']}, then " if exception else "") + f"killed by {entry['signal']}"
    if exception:
        return f"failed: {exception['type']}"
    if entry["exit_code"] == 0:
        return "finished"
    if entry["exit_code"] is not None:
        return f"exit {entry['exit_code']}"
    return "ended" if finished else "no end recorded (killed?)"


def _peer_error(exception: dict[str, Any]) -> bool:
    """An exception that says a peer went away or the group broke (gloo's "Connection closed by peer", NCCL's
    watchdog, a timed-out collective)."""
    return exception["type"].startswith("Dist") or bool(PEER_ERROR.search(exception.get("message") or ""))


def _blame(entry: dict[str, Any]) -> int:
    """How likely a failed rank is to be where the failure began (lower: more)."""
    exception = entry["exception"]
    if entry["signal"] and entry["signal"] not in STOP_SIGNALS:
        return 0  # died of a signal nobody sent to stop it: SIGKILL (the OOM killer), SIGSEGV, SIGABRT ...
    if exception and not _peer_error(exception):
        return 1  # its own error (an OOM, a bug)
    if entry["exit_code"] is None and entry["ended"].startswith("no end"):
        return 2
    if exception or (entry["exit_code"] not in (None, 0) and not entry["signal"]):
        return 3  # a peer went away under it
    return 4  # stopped (SIGTERM) after another rank failed


def _root_cause(ranks: list[dict[str, Any]]) -> dict[str, Any] | None:
    failed = [r for r in ranks if r["exit_code"] not in (0, None) or r["ended"].startswith("no end")]
    if not failed:
        return None
    first = min(failed, key=lambda r: (_blame(r), r["ended_at"] or float("inf"), r["rank"] if r["rank"] is not None
                                       else 1 << 30))
    blame = _blame(first)
    if blame == 0:
        why = (f"rank {first['rank']} was killed by {first['signal']} (no Python exception"
               + ("; SIGKILL: the kernel's OOM killer, or a kill from outside" if first["signal"] == "SIGKILL" else "")
               + ")")
    elif blame == 1:
        why = f"rank {first['rank']} failed with {first['exception']['type']}: {first['exception']['message'] or ''}"
    elif blame == 2:
        why = f"rank {first['rank']} ended without a word (no exit recorded: killed?)"
    else:
        why = f"rank {first['rank']} {first['ended']} (the earliest failure; no rank died of its own cause)"
    others = [f"rank {r['rank']}: {r['ended']}" + (" (a peer went away)" if r["exception"] and _peer_error(
        r["exception"]) else "") for r in ranks if r is not first and r in failed]
    if others:
        why += "; then " + ", ".join(others)
    return {"rank": first["rank"], "local_rank": first["local_rank"], "exit_code": first["exit_code"],
            "signal": first["signal"], "exception": first["exception"], "why": why.rstrip(": ")}


def _imbalance(ranks: list[dict[str, Any]]) -> dict[str, Any] | None:
    peaks = [r for r in ranks if r["peak"] is not None]
    kinds = {r["peak"]["kind"] for r in peaks}
    if len(peaks) < 2 or len(kinds) != 1:
        return None
    top = max(peaks, key=lambda r: r["peak"]["bytes"])
    others = sorted(r["peak"]["bytes"] for r in peaks if r is not top)
    median = others[len(others) // 2] if len(others) % 2 else (others[len(others) // 2 - 1]
                                                               + others[len(others) // 2]) / 2
    high = top["peak"]["bytes"]
    if high - median < IMBALANCE_MIN_BYTES or high < IMBALANCE_RATIO * median:
        return None
    kind = kinds.pop()
    times = f"{high / median:.1f}×" if median else "far above"
    message = (f"memory imbalance: rank {top['rank']}'s peak {kind.replace('_', ' ')} {format_bytes(high)} is "
               f"{times} the other ranks' ({format_bytes(median)}{' median' if len(others) > 1 else ''}): the ranks "
               f"do not hold the same (uneven batches, work or tensors kept on one rank only); the device must fit "
               f"rank {top['rank']}'s")
    return {"rank": top["rank"], "kind": kind, "bytes": high, "others_bytes": int(median),
            "ratio": round(high / median, 2) if median else None, "message": message}


def distributed_summary(main: RunState, others: dict[str, RunState], stopped: bool) -> dict[str, Any] | None:
    """The report's ``distributed`` section, or None for a run in one process. ``stopped``: torchdoctor stopped the
    run (a signal, --stall-timeout): no rank is blamed for its end."""
    started = main.started
    if (started is None or started.world_size is None) and not others and not main.rank_failures:
        return None
    failures = {f.get("rank"): f for f in main.rank_failures}
    ranks = [_rank_entry("events.jsonl", main, failures.get(started.rank if started else None))]
    for name, state in sorted(others.items()):
        ranks.append(_rank_entry(name, state, failures.get(state.started.rank if state.started else None)))
    seen = {r["rank"] for r in ranks}
    ranks += [_rank_entry("", RunState(), f) for rank, f in failures.items()
              if rank not in seen]  # a rank that failed before it wrote a single event
    ranks.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0))
    world = max((s.started.world_size for s in [main, *others.values()] if s.started and s.started.world_size),
                default=None)
    return {"world_size": world, "ranks": ranks, "root_cause": None if stopped else _root_cause(ranks),
            "imbalance": _imbalance(ranks)}


def failing_state(main: RunState, others: dict[str, RunState]) -> RunState:
    """The state an attempt's end is read from (is it an OOM? where?): a rank that abandoned its resume (every rank
    must then start from the beginning), else the rank where the failure began, so an OOM on any rank gives every
    rank the same new plan (they read one plan file); the first rank's when none failed."""
    for state in (main, *others.values()):
        if state.resume is not None and state.resume.restart:
            return state
    summary = distributed_summary(main, others, stopped=False)
    cause = (summary or {}).get("root_cause")
    if not cause:
        return main
    return next((s for s in others.values() if s.started is not None and s.started.rank == cause["rank"]), main)


def failing_returncode(main: RunState, others: dict[str, RunState], returncode: int) -> int:
    """torch's launcher exits 1 for any failure; the exit of the rank where the failure began, as the launcher saw
    it (-9: killed by SIGKILL), is the attempt's, so a rank's end is read as a single process's would be."""
    if returncode == 0:
        return returncode
    cause = (distributed_summary(main, others, stopped=False) or {}).get("root_cause") or {}
    code = cause.get("exit_code")
    return code if isinstance(code, int) and code != 0 else returncode

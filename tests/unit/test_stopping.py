"""Stall detection and the stop ladder (pure logic), the run directory's one-step claim, the event writer on a full
disk."""

import signal
import threading

import pytest

from torchdoctor.agent.emitter import FileEmitter
from torchdoctor.errors import UsageError
from torchdoctor.events import Note
from torchdoctor.supervisor.rundir import claim_run_dir
from torchdoctor.supervisor.stopping import StallWatch, StopLadder


class Child:
    def __init__(self):
        self.signals, self.alive = [], True

    def send_signal(self, signum):
        self.signals.append(signum)
        if signum == signal.SIGKILL:
            self.alive = False

    def poll(self):
        return None if self.alive else -9


def test_progress_is_a_step_or_the_main_thread_somewhere_else():
    watch = StallWatch(timeout=30, now=0)
    watch.progress(1, "train.py:10 in step", now=0)
    watch.progress(1, "train.py:10 in step", now=29)
    assert watch.stalled_for(29) == 29 and not watch.timed_out(29)
    assert watch.due_notice(30) and watch.timed_out(30)  # the notice comes no later than the timeout
    watch.progress(1, "train.py:11 in step", now=31)
    assert watch.stalled_for(31) == 0 and not watch.due_notice(31)
    without = StallWatch(timeout=None, now=0)
    assert not without.timed_out(10_000) and without.due_notice(60) and not without.due_notice(59)


def test_the_ladder_escalates_after_each_grace_period_and_a_second_start_escalates_at_once():
    child, ladder = Child(), StopLadder(grace=5)
    ladder.start("stall-timeout", child, now=0)
    assert child.signals == [signal.SIGINT]
    ladder.tick(child, now=4.9)
    assert child.signals == [signal.SIGINT]
    ladder.tick(child, now=5)
    ladder.tick(child, now=10)
    ladder.tick(child, now=100)
    assert child.signals == [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
    assert ladder.to_dict() == {"reason": "stall-timeout", "signals": ["SIGINT", "SIGTERM", "SIGKILL"], "grace_s": 5}
    child, ladder = Child(), StopLadder(grace=5)
    ladder.start("signal SIGINT", child, now=0, first=signal.SIGINT, already_delivered=True)  # Ctrl-C in a terminal
    assert child.signals == [] and ladder.sent == ["SIGINT"]
    ladder.start("signal SIGINT", child, now=1, first=signal.SIGINT, already_delivered=True)  # Ctrl-C again
    assert child.signals == [signal.SIGTERM]
    child, ladder = Child(), StopLadder(grace=5)
    ladder.start("signal SIGTERM", child, now=0, first=signal.SIGTERM)
    ladder.tick(child, now=5)
    assert child.signals == [signal.SIGTERM, signal.SIGKILL]
    child.alive = True
    ladder.tick(child, now=50)  # nothing beyond SIGKILL
    assert child.signals == [signal.SIGTERM, signal.SIGKILL]


def test_a_run_directory_is_claimed_in_one_step_and_released_when_nothing_ran(tmp_path):
    target = tmp_path / "run"
    results = []

    def claim():
        try:
            results.append(claim_run_dir("train.py", str(target)))
        except UsageError as exc:
            results.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [r for r in results if not isinstance(r, UsageError)]
    assert len(claimed) == 1 and claimed[0].created  # exactly one run owns it
    assert all("already holds a run" in str(r) for r in results if isinstance(r, UsageError))
    (target / "plan-1.json").write_text("{}")
    claimed[0].release()
    assert not target.exists()  # made by the claim, so taken away with it
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("the user's")
    claim = claim_run_dir("train.py", str(kept))
    claim.release()
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_the_event_writer_on_a_full_device_drops_counts_and_says_so_once(capsys):
    emitter = FileEmitter("/dev/full", interval=0.01)
    for i in range(3):
        emitter.emit(Note(level="info", message=f"note {i}"))
        emitter._flush()
    emitter.close()
    err = capsys.readouterr().err
    assert err.count("events could not all be written") == 1 and "No space left on device" in err
    assert emitter.dropped == 3 and "Traceback" not in err


@pytest.mark.parametrize("bad", ["nan"])
def test_stall_options_refuse_values_that_are_not_seconds(tmp_path, bad):
    from tests.conftest import run_torchdoctor

    script = tmp_path / "s.py"
    script.write_text("print(1)\n")
    for option in ("--stall-timeout", "--stop-grace"):
        result = run_torchdoctor(["run", option, bad, str(script)], cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_probe_reads_only_the_runs_own_process_tree(monkeypatch):
    import builtins
    import os
    import subprocess
    import sys

    from torchdoctor.supervisor import child as child_module

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                               "print(p.pid, flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        grandchild = int(parent.stdout.readline())
        opened: list[str] = []
        real_open, real_listdir = builtins.open, os.listdir
        monkeypatch.setattr(builtins, "open", lambda path, *a, **k: (opened.append(str(path)), real_open(path, *a, **k))[1])
        monkeypatch.setattr(os, "listdir", lambda path: (opened.append(str(path)), real_listdir(path))[1])
        found = child_module.descendants(parent.pid)
        monkeypatch.undo()
        assert found == [grandchild]
        pids = {int(path.split("/")[2]) for path in opened if path.startswith("/proc/") and path.split("/")[2].isdigit()}
        assert pids <= {parent.pid, grandchild}, pids  # nothing else on the machine was looked at
    finally:
        if grandchild is not None:
            os.kill(grandchild, 9)
        parent.kill()
        parent.wait()


def test_the_cgroup_peak_is_read_from_v2_or_v1_files(tmp_path):
    from torchdoctor.devices import cgroup_memory_peak

    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/user.slice/run-1\n")
    (root / "user.slice" / "run-1").mkdir(parents=True)
    (root / "user.slice" / "run-1" / "memory.peak").write_text("123456\n")
    assert cgroup_memory_peak(str(proc), str(root)) == 123456
    (proc / "self" / "cgroup").write_text("4:memory:/docker/abc\n0::/\n")
    (root / "memory" / "docker" / "abc").mkdir(parents=True)
    (root / "memory" / "docker" / "abc" / "memory.max_usage_in_bytes").write_text("789\n")
    assert cgroup_memory_peak(str(proc), str(root)) == 789
    (proc / "self" / "cgroup").write_text("1:cpu:/\n")
    assert cgroup_memory_peak(str(proc), str(root)) is None

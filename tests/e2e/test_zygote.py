"""Attempts forked from a torch-preloaded zygote behave as the supervisor's fresh ``python -c <boot>`` child does.

Real processes throughout: a zygote server that imports torch, scripts from tests/scripts run through the agent's
bootstrap, their exit codes, output and event files.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SCRIPTS, run_python
from torchdoctor.supervisor.zygote import Zygote, ZygoteError, _has_vanished

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def zygote():
    zygote = Zygote.start(str(REPO))
    try:
        assert zygote.ready(120), zygote.failure
        yield zygote
    finally:
        zygote.close()


def attempt_env(events: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDOCTOR_")}
    return {**env, "TORCHDOCTOR_EVENTS": str(events), **extra}


def spawn(zygote: Zygote, argv: list[str], cwd: Path, stdout: int | None = None, stdin: int | None = None,
          **extra: str):
    """Spawn with stdout and stderr to files in ``cwd``; returns the process and the events path."""
    events = cwd / "events.jsonl"
    events.write_text("")
    out = os.open(cwd / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(cwd / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        child = zygote.spawn(argv, attempt_env(events, **extra), str(cwd),
                             null if stdin is None else stdin, out if stdout is None else stdout, err)
    finally:
        for fd in (out, err, null):
            os.close(fd)
    return child, events


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_script_sees_what_it_sees_under_python_and_its_exit_code_passes_through(zygote, tmp_path):
    script = SCRIPTS / "semantics.py"
    bare = run_python([str(script), "--lr", "3e-4", "-x"], cwd=tmp_path)
    child, events = spawn(zygote, [str(script), "--lr", "3e-4", "-x"], tmp_path)
    assert child.wait(30) == 0
    # __name__, argv, sys.path[0] (the script's folder), __file__, and torch not imported: as under python
    assert (tmp_path / "stdout").read_text() == bare.stdout
    assert json.loads(bare.stdout)["torch_imported"] is False
    assert (tmp_path / "stderr").read_text() == bare.stderr == "to stderr\n"
    kinds = [e["kind"] for e in read_events(events)]
    assert kinds == ["run_started", "run_finished"]
    child, events = spawn(zygote, [str(script), "--exit", "7"], tmp_path)
    assert child.wait(30) == 7
    assert child.poll() == 7 and child.returncode == 7
    assert read_events(events)[-1]["exit_code"] == 7


def test_asking_a_ready_zygote_whether_it_is_ready_does_not_wait(zygote):
    import time

    began = time.monotonic()
    assert zygote.ready(60)  # a relaunch asks this with a long timeout: a ready zygote answers at once
    assert time.monotonic() - began < 1.0


def test_module_targets_run_like_python_dash_m(zygote, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(
        "import sys, json\nprint(json.dumps([__name__, sys.argv, sys.path[0], __file__]))\n")
    bare = run_python(["-m", "pkg.train", "--epochs", "2"], cwd=tmp_path)
    child, _ = spawn(zygote, ["-m", "pkg.train", "--epochs", "2"], tmp_path)
    assert child.wait(30) == 0
    assert (tmp_path / "stdout").read_text() == bare.stdout


def test_a_training_script_runs_under_the_agent_with_its_events(zygote, tmp_path):
    child, events = spawn(zygote, [str(SCRIPTS / "tiny_train.py"), "--steps", "5"], tmp_path)
    assert child.wait(60) == 0, (tmp_path / "stderr").read_text()
    assert (tmp_path / "stdout").read_text() == "done 5 steps, eval output (4096, 4)\n"
    recorded = read_events(events)
    assert recorded[0]["kind"] == "run_started" and recorded[0]["pid"] == child.pid
    assert [e["step"] for e in recorded if e["kind"] == "memory_sample" and e["span"] == "step"] == [1, 2, 3, 4, 5]
    assert recorded[-1]["kind"] == "run_finished" and recorded[-1]["exit_code"] == 0 and recorded[-1]["steps"] == 5


def test_the_child_ends_through_the_interpreters_own_shutdown(zygote, tmp_path):
    # a file left open, a non-daemon thread still running and an atexit callback: python finishes all three
    script = tmp_path / "ending.py"
    script.write_text(
        "import atexit, sys, threading, time\n"
        "log = open(sys.argv[1], 'w'); log.write('never closed\\n')\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', flush=True))).start()\n"
        "atexit.register(print, 'atexit ran')\n"
        "sys.exit(5)\n")
    bare = run_python([str(script), str(tmp_path / "bare.log")], cwd=tmp_path)
    child, _ = spawn(zygote, [str(script), str(tmp_path / "zygote.log")], tmp_path)
    assert child.wait(30) == bare.returncode == 5
    assert (tmp_path / "stdout").read_text() == bare.stdout == "thread done\natexit ran\n"
    assert (tmp_path / "zygote.log").read_text() == (tmp_path / "bare.log").read_text() == "never closed\n"


def test_nothing_from_one_attempt_leaks_into_the_next(zygote, tmp_path):
    script = tmp_path / "leaky.py"
    script.write_text(
        "import os, sys, json, torch\n"
        "print(json.dumps([os.environ.get('LEAK'), 'leaked_td' in sys.modules, torch.get_num_threads(),\n"
        "                  os.getcwd(), torch.initial_seed()]))\n"
        "os.environ['LEAK'] = '1'; sys.modules['leaked_td'] = sys; torch.set_num_threads(2); os.chdir('/')\n"
        "torch.manual_seed(1234)\n")
    first, _ = spawn(zygote, [str(script)], tmp_path)
    assert first.wait(30) == 0
    output = (tmp_path / "stdout").read_text()
    second, _ = spawn(zygote, [str(script)], tmp_path)
    assert second.wait(30) == 0
    assert second.pid != first.pid
    assert (tmp_path / "stdout").read_text() == output
    assert json.loads(output)[:2] == [None, False]


def test_signals_reach_the_child_and_poll_tells_running_from_ended(zygote, tmp_path):
    marker = tmp_path / "marker"
    read, write = os.pipe()
    try:
        child, _ = spawn(zygote, [str(SCRIPTS / "interruptible.py"), str(marker)], tmp_path, stdout=write)
        os.close(write)
        write = -1
        with os.fdopen(read, closefd=False) as lines:
            assert lines.readline() == "ready\n"  # three optimizer steps done
        assert child.poll() is None and child.returncode is None
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM  # Popen's convention: minus the signal number
        assert child.poll() == -signal.SIGTERM
        child.send_signal(signal.SIGTERM)  # an ended child is not signalled again (its pid may be reused)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    child, _ = spawn(zygote, [str(SCRIPTS / "self_kill.py")], tmp_path)
    assert child.wait(30) == -signal.SIGKILL


def test_ctrl_c_runs_the_scripts_handler_and_ends_the_child_by_sigint(zygote, tmp_path):
    marker = tmp_path / "marker"
    child, events = spawn(zygote, [str(SCRIPTS / "interruptible.py"), str(marker)], tmp_path)
    deadline = time.monotonic() + 30
    while not any(e["kind"] == "memory_sample" for e in read_events(events)) and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    assert child.wait(30) == -signal.SIGINT
    assert marker.read_text().startswith("interrupted after")
    assert "KeyboardInterrupt" in (tmp_path / "stderr").read_text()


def test_a_terminal_on_stdout_makes_it_line_buffered_as_python_does(zygote, tmp_path):
    script = tmp_path / "slow_line.py"
    script.write_text("import time\nprint('first line')\ntime.sleep(30)\n")
    master, slave = pty.openpty()
    try:
        child, _ = spawn(zygote, [str(script)], tmp_path, stdout=slave)
        os.close(slave)
        slave = -1
        ready, _, _ = select.select([master], [], [], 10)
        assert ready and os.read(master, 100).startswith(b"first line")
        child.kill()
        assert child.wait(10) == -signal.SIGKILL
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_start_with_fork_and_spawn(zygote, tmp_path, context):
    child, events = spawn(zygote, [str(SCRIPTS / "spawn_loader.py"), context], tmp_path)
    assert child.wait(120) == 0, (tmp_path / "stderr").read_text()
    # the same samples and weights in both contexts (the data is deterministic and unshuffled)
    assert (tmp_path / "stdout").read_text() == f"context={context} samples=128 weight_sum=3.821354\n"
    assert read_events(events)[-1]["steps"] == 8


def test_an_environment_that_changes_what_import_torch_read_is_refused(zygote, tmp_path):
    env = attempt_env(tmp_path / "events.jsonl")
    assert zygote.can_spawn(env) == (True, "")
    assert zygote.can_spawn({**env, "TORCHDOCTOR_ATTEMPT": "2", "TORCHDOCTOR_PLAN": "/x"}) == (True, "")
    threads = str(int(env.get("OMP_NUM_THREADS", "1")) + 1)
    ok, why = zygote.can_spawn({**env, "OMP_NUM_THREADS": threads})
    assert not ok and "OMP_NUM_THREADS" in why
    with pytest.raises(ZygoteError, match="OMP_NUM_THREADS"):
        zygote.spawn([str(SCRIPTS / "semantics.py")], {**env, "OMP_NUM_THREADS": threads}, str(tmp_path))
    # a request the server refuses is answered with an error, and the zygote stays usable
    with pytest.raises(ZygoteError, match="no such directory"):
        zygote.spawn([str(SCRIPTS / "semantics.py")], env, str(tmp_path / "missing"))
    assert zygote.can_spawn(env) == (True, "")


def test_a_dead_zygote_fails_cleanly_and_its_child_is_reported_killed(tmp_path):
    zygote = Zygote.start(str(REPO), preload=("torch",))
    try:
        assert zygote.ready(120), zygote.failure
        child, _ = spawn(zygote, [str(SCRIPTS / "interruptible.py"), str(tmp_path / "m")], tmp_path)
        os.kill(zygote.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL and child.status_lost  # it died with its parent
        started = time.monotonic()
        ok, why = zygote.can_spawn(attempt_env(tmp_path / "e"))
        assert not ok and "killed by signal 9" in why
        with pytest.raises(ZygoteError, match="killed by signal 9"):
            spawn(zygote, [str(SCRIPTS / "semantics.py")], tmp_path)
        assert time.monotonic() - started < 2
    finally:
        zygote.close()


def test_close_ends_the_children_and_reaps_the_server(tmp_path):
    zygote = Zygote.start(str(REPO), preload=("torch",))
    assert zygote.ready(120), zygote.failure
    child, _ = spawn(zygote, [str(SCRIPTS / "interruptible.py"), str(tmp_path / "m")], tmp_path)
    assert child.poll() is None
    zygote.close(timeout=10)
    assert child.returncode is not None and child.returncode < 0  # SIGTERM'd (or SIGINT's handler path)
    assert zygote._process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    assert not zygote.ready() and zygote.failure == "the zygote was closed"
    zygote.close()  # twice is fine


def test_a_supervisor_that_dies_leaves_neither_zygote_nor_children(tmp_path):
    supervisor = (
        "import os, sys; sys.path.insert(0, sys.argv[1])\n"
        "from torchdoctor.supervisor.zygote import Zygote\n"
        "z = Zygote.start(sys.argv[1], preload=('torch',)); assert z.ready(120), z.failure\n"
        "env = {k: v for k, v in os.environ.items() if not k.startswith('TORCHDOCTOR_')}\n"
        "child = z.spawn([sys.argv[2], sys.argv[3]], env, sys.argv[4], 0, 1, 2)\n"
        "print(z.pid, child.pid, flush=True)\n"
        "os._exit(1)  # a crash: no close()\n")
    result = subprocess.run([sys.executable, "-c", supervisor, str(REPO), str(SCRIPTS / "interruptible.py"),
                             str(tmp_path / "m"), str(tmp_path)], capture_output=True, text=True, timeout=120)
    server, child = (int(pid) for pid in result.stdout.split()[-2:])
    deadline = time.monotonic() + 15
    alive = {server, child}
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if not _has_vanished(pid)}  # gone, or a zombie waiting for init
        time.sleep(0.05)
    assert not alive, f"still running: {alive}"

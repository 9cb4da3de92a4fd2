"""The training process, seen from the supervisor: started fresh or forked from the torch-preloaded zygote,
signalled, and probed from outside (resident memory, the GPU's own figures)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import torchdoctor
from torchdoctor.events import ProcessSample
from torchdoctor.supervisor.zygote import Zygote, ZygoteError, ZygoteProcess

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(torchdoctor.__file__)))
# Run the agent with torchdoctor importable wherever it lives, without leaving its folder on the
# script's sys.path (the bootstrap then sets sys.path[0] as python would for the script).
BOOT = ("import sys; sys.path.insert(0, {root!r}); from torchdoctor.agent.bootstrap import main; "
         "sys.path.pop(0); main()")
# The launcher process of a run under torch's launcher (torchrun): agent/launch.py, started the same way.
LAUNCH = ("import sys; sys.path.insert(0, {root!r}); from torchdoctor.agent.launch import main; "
          "sys.path.pop(0); main()")
ZYGOTE_WAIT_S = 60.0  # a relaunch waits this long at most for a zygote still importing (a fresh start would too)


def in_terminal_foreground() -> bool:
    """True when a Ctrl-C typed in our terminal reaches the child directly (same process group)."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


class RankProcess:
    """A rank under torch's launcher, signalled by its pid (it is the launcher's child, not the supervisor's)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)


class Launcher:
    """Starts each attempt's process: attempt 1 fresh, relaunches forked from the zygote when it can serve them."""

    def __init__(self, relaunch: str, fork_first: bool = False) -> None:
        self.relaunch = relaunch  # "auto" | "fork" | "fresh"
        self.fork_first = fork_first  # attempt 1 forks too (torchdoctor estimate: one zygote for many runs)
        self.zygote: Zygote | None = None
        self.launched = ""  # how the latest process was started, for its attempt's record

    def start_zygote(self, env: dict[str, str]) -> None:
        """Start the torch-preloaded zygote relaunches fork from (once; a failure only means fresh processes)."""
        if self.zygote is not None or self.relaunch == "fresh":
            return
        try:
            self.zygote = Zygote.start(PACKAGE_ROOT, env={k: v for k, v in env.items()
                                                           if not k.startswith("TORCHDOCTOR_")})
        except OSError:
            self.zygote = None

    def launch(self, command: list[str], env: dict[str, str], stdout: int | None = None,
                stderr: int | None = None) -> subprocess.Popen[bytes] | ZygoteProcess:
        """A relaunch forks from the zygote when it can (tens of milliseconds instead of a new interpreter and
        ``import torch``); attempt 1, and any attempt the zygote cannot serve, is a fresh process."""
        zygote = self.zygote
        first = env.get("TORCHDOCTOR_ATTEMPT", "1") == "1" and not self.fork_first
        why = "the first attempt" if first else "no zygote"
        if zygote is not None and not first:
            zygote.ready(ZYGOTE_WAIT_S)
            ok, why = zygote.can_spawn(env)
            if ok:
                try:
                    child = zygote.spawn(command[3:], env, os.getcwd(), 0, 1 if stdout is None else stdout,
                                         2 if stderr is None else stderr)
                    self.launched = "forked from the torch-preloaded zygote"
                    return child
                except ZygoteError as exc:
                    why = str(exc)
        self.launched = f"a fresh process ({why})"
        return subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()


def descendants(pid: int) -> list[int] | None:
    """The processes below ``pid`` (DataLoader workers and theirs), read from ``/proc/PID/task/TID/children``: only
    the run's own tree is read, never every process on the machine (psutil's ``children()`` scans them all). None
    where the kernel does not offer that file."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            if current == pid and not os.path.isdir("/proc/self/task"):
                return None  # no /proc here
            continue  # gone since its parent listed it
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children", encoding="ascii") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except FileNotFoundError:
                if current == pid and not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
                    return None  # a kernel without CONFIG_PROC_CHILDREN
                continue
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


def _resident(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def probe_process(proc: Any, nvml: Any) -> ProcessSample:
    """The process's resident memory and its descendants', read from outside, with the GPUs' used memory."""
    rss = children = None
    if proc is not None:
        try:
            rss = proc.memory_info().rss
            kids = descendants(proc.pid)
            if kids is None:
                children = sum(c.memory_info().rss for c in proc.children(recursive=True)) or None
            else:
                children = sum(_resident(k) for k in kids) or None
        except Exception:  # noqa: BLE001 - the child may be exiting
            pass
    return ProcessSample(rss_bytes=rss, children_rss_bytes=children, device_used=nvml.used() if nvml else {})

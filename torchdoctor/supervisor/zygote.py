"""Fast relaunch: a process that has imported torch once forks a fresh child for each attempt.

A relaunch after an out-of-memory failure costs seconds, nearly all of it the new interpreter's start and its
``import torch``. A *zygote* pays that once: a server process (``torchdoctor.agent.zygote_server``) imports torch
and the agent, then waits; each attempt is an ``os.fork()`` of it that runs the script through the agent's
bootstrap, as ``python -c <boot> TARGET ARGS`` would, in a few tens of milliseconds.

This module is the supervisor's side. Like the supervisor it never imports torch, and it needs only the
standard library. The child is the server's child, not ours, so its exit status comes back over the socket;
:class:`ZygoteProcess` turns that into the part of ``subprocess.Popen`` the supervisor uses. Whenever the zygote
cannot serve an attempt (not started, dead, still importing, an environment that would have changed what
``import torch`` did), :meth:`Zygote.can_spawn` says so and why, and :meth:`Zygote.spawn` raises
:class:`ZygoteError`: the caller then starts the attempt with ``subprocess.Popen`` as before.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from torchdoctor.channel import Channel, ChannelClosed

# Variables read while the interpreter starts or while ``import torch`` runs (by Python, the C library, the
# dynamic loader, OpenMP/MKL/BLAS, CUDA, torch): the zygote imported torch under its own values, so a child whose
# environment changes one of them must be a fresh process. Checked as prefixes of the variable's name.
IMPORT_TIME_PREFIXES = (
    "OMP_", "MKL_", "CUDA_", "PYTORCH_", "TORCH_", "LD_", "PYTHON",  # asked for by the design
    "KMP_", "GOMP_", "OPENBLAS_", "NUMPY_",  # the other thread pools and numpy (imported by torch)
    "MALLOC_", "GLIBC_TUNABLES",  # the C allocator reads its settings once, at process start
    "LANG", "LC_",  # Python picks the encoding of stdin/stdout/stderr from the locale at start-up
    "TORCHDYNAMO_", "TORCHINDUCTOR_", "TRITON_",  # torch._dynamo's and inductor's configs (preloaded by default)
)
IMPORT_TIME_NAMES = frozenset({"NVIDIA_VISIBLE_DEVICES"})

_SERVER_BOOT = ("import sys; sys.path.insert(0, {root!r}); from torchdoctor.agent.zygote_server import serve; "
                "sys.path.pop(0); serve({fd}, {preload!r})")
# What the server imports before it is ready: torch, the agent, and torch._dynamo, which the agent's hooks import
# on the script's first tensor (1.4 s of the first step here). None of them initialises CUDA (checked).
DEFAULT_PRELOAD = ("torch", "torchdoctor.agent.session", "torch._dynamo")


class ZygoteError(RuntimeError):
    """The zygote cannot run this attempt (not started, dead, refused the request): start it with Popen instead."""


def import_time_differences(ours: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    """The variables read at interpreter start or ``import torch`` whose values differ between two environments
    (set in one and not the other counts), sorted."""
    names = {name for name in (*ours, *theirs)
             if name in IMPORT_TIME_NAMES or name.startswith(IMPORT_TIME_PREFIXES)}
    return sorted(name for name in names if ours.get(name) != theirs.get(name))


class ZygoteProcess:
    """A child forked by the zygote, with the part of ``subprocess.Popen``'s interface the supervisor uses.

    ``returncode`` follows Popen: the exit code, or minus the signal number when a signal killed the child. If
    the server dies first, the child dies with it (it asked the kernel for SIGKILL on its parent's death) and is
    reported as killed by SIGKILL once it is gone, with ``status_lost`` set: its real status died with the server.
    """

    stdin = stdout = stderr = None  # as a Popen whose streams were not pipes

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self.status_lost = False
        self._zygote = zygote

    def poll(self) -> int | None:
        """The return code if the child has ended, else None; never blocks."""
        if self.returncode is None:
            self._zygote._pump(0.0)
            if self.returncode is None and self._zygote._gone and _has_vanished(self.pid):
                self._lost()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to end; raises subprocess.TimeoutExpired after ``timeout`` seconds, as Popen does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 0.5 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
            if not self._zygote._pump(min(left, 0.5)):
                time.sleep(min(left, 0.02))  # the server is gone (or another thread reads): watch the pid
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child, unless it is known to have ended (as Popen: its pid may belong to another
        process by now)."""
        if self.poll() is not None:
            return
        os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _ended(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)

    def _lost(self) -> None:
        self.returncode = -signal.SIGKILL
        self.status_lost = True

    def __repr__(self) -> str:
        return f"<ZygoteProcess pid={self.pid} returncode={self.returncode}>"


def _has_vanished(pid: int) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie waiting for whoever adopted it to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False


class Zygote:
    """The supervisor's handle on a zygote server: start it, spawn attempts from it, close it.

        zygote = Zygote.start(package_root)            # returns at once; the server imports torch meanwhile
        ok, why = zygote.can_spawn(env)                # never blocks
        child = zygote.spawn(argv, env, cwd, 0, 1, 2) if ok else subprocess.Popen(...)
        ...
        zygote.close()                                 # stops the server, ends and reaps its children

    The server exits by itself when its socket closes, so a supervisor that dies leaves no zygote behind (nor
    its children: they are ended too).
    """

    def __init__(self, process: subprocess.Popen[bytes], channel: Channel, env: Mapping[str, str],
                 log: IO[bytes]) -> None:
        self._process = process
        self._channel = channel
        self._env = dict(env)
        self._log = log
        self._ready = False
        self._failure: str | None = None
        self._gone = False  # the socket reached its end: the server has exited or is exiting
        self._closed = False
        self._children: dict[int, ZygoteProcess] = {}  # running, by pid
        self._spawned: dict[int, ZygoteProcess] = {}  # answered spawns not yet handed to the caller
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 1
        self._pumping = threading.Lock()  # taken without blocking: a signal handler's poll() may come in mid-read
        self.info: dict[str, Any] = {}

    # -- life ----------------------------------------------------------------------------------------
    @classmethod
    def start(cls, boot_root: str, python: str = sys.executable, *, env: Mapping[str, str] | None = None,
              cwd: str | None = None, preload: Sequence[str] = DEFAULT_PRELOAD) -> Zygote:
        """Start a server with ``python``, torchdoctor imported from ``boot_root``; returns without waiting.

        ``env`` is the environment it imports torch under (default: ours without the TORCHDOCTOR_* settings,
        which change with every attempt and are read only when an attempt starts). ``preload`` names the modules
        it imports before it reports ready. Its stdout goes to /dev/null and its stderr to a temporary file
        whose end is quoted when it fails.
        """
        if env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDOCTOR_")}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            process = subprocess.Popen(
                [python, "-c", _SERVER_BOOT.format(root=boot_root, fd=theirs.fileno(), preload=tuple(preload))],
                env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                pass_fds=[theirs.fileno()])
        except BaseException:
            ours.close()
            log.close()
            raise
        finally:
            theirs.close()
        return cls(process, Channel(ours), env, log)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def failure(self) -> str | None:
        """Why this zygote can no longer be used (None while it can, or may once ready)."""
        return self._failure

    def ready(self, timeout: float = 0.0) -> bool:
        """Wait up to ``timeout`` seconds for the server to have imported torch; False if it has not, or failed
        (``failure`` says why)."""
        if self._ready or self._failure is not None:  # already known: nothing to wait for
            self._pump(0.0)  # (but notice a server that died since)
            return self._ready and self._failure is None
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            if not self._pump(left) and left > 0:
                time.sleep(min(left, 0.01))  # another thread is reading, or the server is gone
            if self._ready or self._failure is not None or time.monotonic() >= deadline:
                return self._ready and self._failure is None

    def can_spawn(self, env: Mapping[str, str]) -> tuple[bool, str]:
        """Whether an attempt with environment ``env`` can be forked from this zygote now, and if not, why.

        Never blocks. No when the server is still importing torch, has failed or died, or when ``env``
        differs from the zygote's in a variable read at interpreter start or ``import torch`` time (see
        ``IMPORT_TIME_PREFIXES``): a fork would keep what the zygote read, so that attempt needs a fresh process.
        """
        if not self.ready(0.0):
            return False, self._failure or "the zygote is still importing torch"
        differing = import_time_differences(self._env, env)
        if differing:
            return False, (f"the attempt's environment differs from the zygote's in {', '.join(differing)} "
                           f"(read when the interpreter starts or torch is imported)")
        return True, ""

    def spawn(self, argv: list[str], env: Mapping[str, str], cwd: str, stdin: int = 0, stdout: int = 1,
              stderr: int = 2, *, timeout: float = 10.0) -> ZygoteProcess:
        """Fork a child that runs ``python -c <boot> *argv`` as the supervisor's own child would, with
        environment ``env``, working directory ``cwd`` and the three descriptors as its stdin/stdout/stderr
        (the server gets its own copies; the caller keeps and closes its own).

        Raises ZygoteError when the zygote cannot (see ``can_spawn``) or does not answer within ``timeout``
        seconds; a zygote that failed once is not used again.
        """
        ok, why = self.can_spawn(env)
        if not ok:
            raise ZygoteError(why)
        request_id = self._next_id
        self._next_id += 1
        args = [str(a) for a in argv]
        request = {"type": "spawn", "id": request_id, "argv": args,
                   "env": {str(k): str(v) for k, v in env.items()}, "cwd": os.path.abspath(cwd)}
        try:
            self._channel.send(request, [stdin, stdout, stderr], timeout=timeout)
        except (OSError, ChannelClosed) as exc:
            self._fail(f"could not send the request to the zygote: {exc}")
            raise ZygoteError(self._failure) from exc
        deadline = time.monotonic() + timeout
        while request_id not in self._replies:
            left = deadline - time.monotonic()
            if self._failure is not None:
                raise ZygoteError(self._failure)
            if left <= 0:
                self._fail(f"the zygote did not answer a spawn request within {timeout:g} s")
                raise ZygoteError(self._failure)
            self._pump(left)
        reply = self._replies.pop(request_id)
        if reply["type"] == "error":
            raise ZygoteError(f"the zygote could not start the attempt: {reply.get('message')}")
        child = self._spawned.pop(reply["pid"])
        child.args = args
        return child

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server: its children still running get SIGTERM, then SIGKILL after ``timeout`` / 2 seconds;
        all are reaped and their statuses delivered. The server is killed if it is not gone within ``timeout``."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        if not self._gone:
            try:
                self._channel.send({"type": "stop", "grace": timeout / 2}, timeout=1.0)
            except (OSError, ChannelClosed):
                pass
            while not self._gone and time.monotonic() < deadline:
                self._pump(deadline - time.monotonic())
        try:
            self._process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._gone = True
        if self._failure is None:
            self._failure = "the zygote was closed"
        self._channel.close()
        self._log.close()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages ------------------------------------------------------------------------------------
    def _pump(self, timeout: float) -> bool:
        """Read and apply what the server sent, waiting up to ``timeout`` seconds for something to arrive.
        False when it could not look: the server is gone, or someone else is reading.

        Re-entry (a signal handler's ``poll()`` while the main thread is in here) and a second thread return at
        once: whoever holds the lock applies what arrives.
        """
        if self._gone or not self._pumping.acquire(blocking=False):
            return False
        try:
            if not self._channel.wait(timeout):
                return True
            try:
                messages = self._channel.receive()
            except (OSError, ValueError) as exc:  # ChannelClosed is an OSError; ValueError: not JSON
                self._server_gone(exc)
                return True
            for message in messages:
                self._apply(message)
            return True
        finally:
            self._pumping.release()

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        for fd in message.get("_fds", ()):  # none are expected from the server
            os.close(fd)
        if kind == "ready":
            self._ready = True
            self.info = {k: v for k, v in message.items() if k not in ("type", "_fds")}
        elif kind == "failed":
            self._fail(f"the zygote could not start: {message.get('message', '').strip()}")
        elif kind == "spawned":  # registered now: its exit may be in the same read
            self._spawned[message["pid"]] = self._children[message["pid"]] = ZygoteProcess(self, message["pid"], [])
            self._replies[message["id"]] = message
        elif kind == "error":
            self._replies[message["id"]] = message
        elif kind == "exit":
            child = self._children.pop(message["pid"], None)
            if child is not None:
                child._ended(message["status"])

    def _server_gone(self, why: BaseException) -> None:
        self._gone = True
        if self._failure is None and not self._closed:
            try:  # the socket closes a moment before the process is gone: give it that moment
                code: int | None = self._process.wait(1.0)
            except subprocess.TimeoutExpired:
                code = None
            how = "is exiting" if code is None else (
                f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
            self._fail(f"the zygote server {how} ({why}){self._log_tail()}")

    def _fail(self, why: str | None) -> None:
        if self._failure is None:
            self._failure = why or "the zygote failed"

    def _log_tail(self, limit: int = 1500) -> str:
        try:
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - limit))
            text = self._log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return f"; its stderr ends with:\n{text}" if text else ""

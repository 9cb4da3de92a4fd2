"""The zygote's server: imports torch once, then forks one fresh child per attempt (see supervisor/zygote.py).

Started as ``python -c "...; serve(FD)"`` with one end of a socket pair. It imports torch and the agent (so a
child pays nothing for them), reports ready, and serves spawn requests until its socket closes or it is asked to
stop. It ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C in the terminal reaches the whole process group; only the
attempt should see it), reaps its children and sends each one's exit status back.

Each child becomes what the supervisor's own ``python -c <boot> ARGS`` child would be when the bootstrap starts:
the request's environment, working directory and stdin/stdout/stderr, the default signal handlers, Python-level
stdio built afresh for the new descriptors, and a ``sys.modules`` without what the zygote loaded beyond the
bootstrap. Torch comes back (the same objects, in microseconds) when the script imports it, so the agent starts
at that moment, as under plain python, and a script that never imports torch does not see it. The child leaves
the server's loop by an exception and runs at the top of serve(); the bootstrap's ``sys.exit(code)`` then ends
it through the interpreter's own shutdown, as it ends a fresh process.
"""

from __future__ import annotations

import sys
import warnings

from torchdoctor.agent import bootstrap

# What a fresh `python -c <boot>` child has loaded when its script starts: the interpreter's start-up and the
# bootstrap with its imports. Everything loaded after this line is hidden from each child until imported.
_BASELINE_MODULES = frozenset(sys.modules) - {__name__}
_BASELINE_FILTERS = list(warnings.filters)

import gc  # noqa: E402
import importlib  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.machinery  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

from torchdoctor.agent.hidden_modules import HiddenModules  # noqa: E402
from torchdoctor.agent.lifeline import parent_death_signal  # noqa: E402
from torchdoctor.channel import Channel, ChannelClosed  # noqa: E402

_SHIELDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # ignored by the server, default again in children


# -- what a child is made from ----------------------------------------------------------------------------
@dataclass
class _Template:
    """What the server captured for its children: how a fresh interpreter's state looked, and what to close."""

    path: list[str]
    stdio: list[tuple[str, str | None]]  # (encoding, errors) of stdin, stdout, stderr
    unbuffered: bool  # python -u / PYTHONUNBUFFERED
    torch_filters: list[Any]
    server_pid: int
    server_fds: list[int] = field(default_factory=list)
    parent_death: Callable[[], None] | None = None
    mask: set[int] = field(default_factory=set)


def _stdio_stream(fd: int, write: bool, name: str, encoding: str, errors: str | None,
                  unbuffered: bool) -> io.TextIOWrapper:
    """sys.stdin/stdout/stderr as CPython's start-up builds them (Python/pylifecycle.c, create_stdio)."""
    buffering = 0 if (unbuffered and write) else -1
    buffer: Any = io.open(fd, "wb" if write else "rb", buffering, closefd=False)  # noqa: SIM115
    raw = buffer if buffering == 0 else buffer.raw
    raw.name = name
    line_buffering = not unbuffered and (raw.isatty() or fd == 2)
    stream = io.TextIOWrapper(buffer, encoding, errors, "\n", line_buffering, unbuffered)
    stream.mode = "w" if write else "r"  # type: ignore[misc]
    return stream


def _fresh_stdio(template: _Template) -> None:
    old = {id(sys.stdout): 1, id(sys.stderr): 2}
    streams = [_stdio_stream(fd, fd > 0, name, encoding, errors, template.unbuffered)
               for fd, name, (encoding, errors) in zip((0, 1, 2), ("<stdin>", "<stdout>", "<stderr>"), template.stdio)]
    # the originals too, as a fresh interpreter has them (typeshed marks them Final: no one else should)
    sys.stdin = sys.__stdin__ = streams[0]  # type: ignore[misc]
    sys.stdout = sys.__stdout__ = streams[1]  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = streams[2]  # type: ignore[misc]
    # Logging handlers made while the zygote imported torch hold its streams: point them at the new ones.
    logging = sys.modules.get("logging")
    if logging is not None:
        for logger in [logging.root, *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", ()):
                fd = old.get(id(getattr(handler, "stream", None)))
                if fd is not None:
                    handler.stream = streams[fd]


def _fresh_process_state() -> None:
    """Per-process state a fresh interpreter would have made on its own (the zygote made it once for all)."""
    mp_process = sys.modules.get("multiprocessing.process")
    if mp_process is not None:
        mp_process.current_process().authkey = os.urandom(32)
        mp_process.ORIGINAL_DIR = os.path.abspath(os.getcwd())  # type: ignore[attr-defined]  # not in typeshed


def _become(request: dict[str, Any], fds: list[int], template: _Template) -> None:
    """Turn this fresh fork of the server into the attempt's process, up to the call of the bootstrap."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    if template.parent_death is not None:
        template.parent_death()
    if os.getppid() != template.server_pid:  # the server died before the line above: follow it
        os.kill(os.getpid(), signal.SIGKILL)
    for fd in template.server_fds:  # the socket was closed through its object
        os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[:] = template.path
    sys.argv = ["-c", *request["argv"]]
    sys.orig_argv = [sys.orig_argv[0], *request["argv"]]  # as `python ARGS` would show them
    _fresh_stdio(template)
    _fresh_process_state()
    warnings.filters[:] = _BASELINE_FILTERS  # type: ignore[index]  # a list at run time; typeshed: Sequence
    warnings._filters_mutated()  # type: ignore[attr-defined]
    HiddenModules.install(_BASELINE_MODULES, template.torch_filters)
    importlib.invalidate_caches()  # the script's folder may have changed since the zygote looked
    signal.pthread_sigmask(signal.SIG_SETMASK, template.mask)  # a signal sent meanwhile arrives now


class _ForkedChild(BaseException):
    """Raised in a freshly forked child to leave the server's loop: the child goes on at the top of serve().

    A BaseException, so that no ``except Exception`` of the server stops it on the way up; the server's frames
    between the fork and serve() have no ``finally`` that would act in the child.
    """

    def __init__(self, request: dict[str, Any], fds: list[int]) -> None:
        super().__init__()
        self.request = request
        self.fds = fds


def _child(request: dict[str, Any], fds: list[int], template: _Template, channel: Channel) -> NoReturn:
    """Become the attempt and run the bootstrap. It ends with ``sys.exit(code)``, and that SystemExit (or
    whatever else ends the script) propagates out of serve() to the interpreter, which exits exactly as it would
    for ``python -c <boot>``: non-daemon threads joined, atexit callbacks, module teardown (files the script left
    open are flushed), stdout and stderr flushed, the exit code or the signal."""
    channel.sock.close()
    _become(request, fds, template)
    bootstrap.main()
    sys.exit(0)  # main() always exits; kept so that this function never returns into the server


# -- the server ---------------------------------------------------------------------------------------------
class _Server:
    """The request loop: spawn, reap, report; stop on request or when the socket closes."""

    def __init__(self, channel: Channel, template: _Template, wake: int) -> None:
        self.channel = channel
        self.template = template
        self.wake = wake
        self.children: set[int] = set()
        self.connected = True

    def run(self) -> None:
        while True:
            watched: list[Any] = [self.channel.sock, self.wake]
            select.select(watched, [], [], 5.0)
            self._drain_wake()
            self._reap()
            try:
                messages = self.channel.receive()
            except (OSError, ValueError):  # ChannelClosed is an OSError; ValueError: not JSON
                self._stop(grace=2.0, notify=False)  # the supervisor is gone: leave nothing behind
                return
            for message in messages:
                if message.get("type") == "spawn":
                    self._spawn(message)
                elif message.get("type") == "stop":
                    self._stop(grace=float(message.get("grace", 2.0)), notify=True)
                    return
                else:
                    self._close_fds(message)

    def _send(self, message: dict[str, Any]) -> None:
        if not self.connected:
            return
        try:
            self.channel.send(message, timeout=10.0)
        except (OSError, ChannelClosed):
            self.connected = False  # the supervisor is gone; the next receive() sees the end of the stream

    @staticmethod
    def _close_fds(message: dict[str, Any]) -> None:
        for fd in message.get("_fds", ()):
            os.close(fd)

    def _spawn(self, request: dict[str, Any]) -> None:
        """Fork a child for ``request``; in the child this raises _ForkedChild (see there)."""
        fds = request.get("_fds", [])
        try:
            argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
            if len(fds) != 3:
                raise ValueError(f"a spawn request carries stdin, stdout and stderr, not {len(fds)} descriptors")
            if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
                raise ValueError("argv must be a non-empty list of strings")
            if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
                raise ValueError("env must map names to strings")
            if not (isinstance(cwd, str) and os.path.isdir(cwd)):
                raise ValueError(f"no such directory: {cwd!r}")
            pid = self._fork(request, fds)
        except Exception as exc:  # noqa: BLE001 - answered, not fatal: the next request may work
            self._close_fds(request)
            self._send({"type": "error", "id": request.get("id"), "message": f"{type(exc).__name__}: {exc}"})
            return
        self._close_fds(request)  # the child has its copies: the supervisor's pty sees its end when the child's go
        self.children.add(pid)
        self._send({"type": "spawned", "id": request.get("id"), "pid": pid})

    @staticmethod
    def _fork(request: dict[str, Any], fds: list[int]) -> int:
        # Block the shielded signals across the fork: one sent to the new child before it has restored the
        # default handlers stays pending (a blocked signal is never discarded as ignored) and arrives after.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SHIELDED)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            raise
        if pid == 0:
            raise _ForkedChild(request, fds)  # still blocked: _become() unblocks once the handlers are set
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return pid

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _reap(self, block: bool = False) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                self._send({"type": "exit", "pid": pid, "status": status})

    def _stop(self, grace: float, notify: bool) -> None:
        """End the children still running (SIGTERM, SIGKILL after ``grace`` seconds) and reap them all."""
        self.connected = self.connected and notify
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pid in list(self.children):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + (grace if signum == signal.SIGTERM else 10.0)
            while self.children and time.monotonic() < deadline:
                select.select([self.wake], [], [], min(0.05, max(0.0, deadline - time.monotonic())))
                self._drain_wake()
                self._reap()
        self._reap(block=True)


def _preload(modules: tuple[str, ...]) -> Any:
    """Import ``modules`` (torch first); returns torch. Refuses a preload that initialised CUDA: a forked child
    cannot use a CUDA context made by its parent."""
    import torch

    for name in modules:
        importlib.import_module(name)
    if torch.cuda.is_initialized():  # reads a flag; initialises nothing
        raise RuntimeError(f"preloading {', '.join(modules)} initialised CUDA; a fork could not use it")
    return torch


def serve(fd: int, preload: tuple[str, ...] = ("torch", "torchdoctor.agent.session")) -> None:
    """The zygote server's main function: import ``preload``, report ready, serve until stopped, then end the
    process. In each forked child it returns only by the exception that ends the attempt (see _child)."""
    for signum in _SHIELDED:
        signal.signal(signum, signal.SIG_IGN)
    channel = Channel(socket.socket(fileno=fd))
    path = list(sys.path)
    began = time.perf_counter()
    try:
        version = _preload(tuple(preload)).__version__
    except BaseException:  # noqa: BLE001 - reported to the supervisor, which then starts attempts itself
        message = traceback.format_exc()
        print(message, file=sys.stderr, flush=True)
        try:
            channel.send({"type": "failed", "message": message[-2000:]}, timeout=5.0)
        except (OSError, ChannelClosed):
            pass
        os._exit(1)
    imported = time.perf_counter() - began
    # What the zygote holds now lives as long as it does: keep the garbage collector off it in every child. Their
    # collections then neither walk it (an interpreter's exit took 0.74 s instead of 0.29 s here) nor write to its
    # pages (each write would copy a page shared with the zygote). Side effect: gc.get_objects() in a child lists
    # only what the child made, not torch's own import-time objects.
    gc.collect()
    gc.freeze()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a Python handler, so that the wake-up fd fires
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    template = _Template(
        path=path,
        stdio=[(stream.encoding, stream.errors) for stream in (sys.stdin, sys.stdout, sys.stderr)],
        unbuffered=bool(getattr(sys.stdout, "write_through", False)),
        torch_filters=[f for f in warnings.filters if f not in _BASELINE_FILTERS],
        server_pid=os.getpid(),
        server_fds=[wake_read, wake_write],
        parent_death=parent_death_signal(),
        mask=signal.pthread_sigmask(signal.SIG_BLOCK, []),
    )
    server = _Server(channel, template, wake_read)
    server._send({"type": "ready", "pid": os.getpid(), "torch": version, "python": sys.version.split()[0],
                  "import_seconds": round(imported, 3)})
    try:
        server.run()
    except _ForkedChild as forked:  # in a new child
        request, fds = forked.request, forked.fds
    else:
        os._exit(0)  # the server's end: no interpreter teardown for a process that only waited
    del server
    _child(request, fds, template, channel)

"""Child entry point: ``python -m torchdoctor.agent.bootstrap [-m] TARGET [ARGS...]``.

Runs the user's script exactly as ``python TARGET ARGS`` would (``__name__ == "__main__"``, ``sys.argv``,
``sys.path[0]``, its exit code and its traceback), with the agent's hooks installed around it.
"""

from __future__ import annotations

import atexit
import builtins
import faulthandler
import importlib.machinery
import importlib.metadata
import os
import platform
import runpy
import signal
import sys
import types
import zipfile
from types import TracebackType
from typing import Any, TypedDict

from torchdoctor.agent.emitter import FileEmitter, MemorySink
from torchdoctor.agent.heartbeat import HeartbeatThread
from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.agent.import_hook import TorchImportWatcher
from torchdoctor.agent.lifeline import die_with_parent
from torchdoctor.config import AgentSettings, Rank
from torchdoctor.errors import ResumeAbandoned, StepsDone, UsageError
from torchdoctor.events import RunFinished, RunStarted

RESUME_ABANDONED_EXIT = 3  # the supervisor relaunches from the beginning (it reads why from the events)

_AGENT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_RUNPY_FILES = ("<frozen runpy>", os.path.abspath(runpy.__file__), "<string>")


class _StartedFields(TypedDict):
    target: str
    is_module: bool
    argv: list[str]
    python: str
    accounting: str
    sample_every: int
    attempt: int


class _Started(_StartedFields, total=False):
    """The fields of ``RunStarted`` that the agent knows before torch is imported (``cpu_figures``: once it is;
    the rank's, under torch's launcher)."""

    cpu_figures: str
    rank: int
    local_rank: int
    world_size: int


def _user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """Drop the leading frames of torchdoctor and runpy, so the traceback reads as under plain python."""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not (filename in _RUNPY_FILES or os.path.abspath(filename).startswith(_AGENT_DIR)):
            break
        tb = tb.tb_next
    return tb


def _print_exception(exc: BaseException) -> None:
    # The default excepthook prints the traceback stored on the exception, so store the trimmed one.
    exc.__traceback__ = _user_traceback(exc.__traceback__)
    sys.excepthook(type(exc), exc, exc.__traceback__)


def _run_script(path: str) -> None:
    """Run a file as python does: a fresh ``__main__`` with an absolute ``__file__`` that stays in
    ``sys.modules`` (spawned DataLoader workers re-import the script from it to unpickle its classes)."""
    if os.path.isdir(path) or zipfile.is_zipfile(path):
        runpy.run_path(path, run_name="__main__")
        return
    filename = os.path.abspath(path)
    with open(filename, "rb") as handle:
        code = compile(handle.read(), filename, "exec", dont_inherit=True)
    module = types.ModuleType("__main__")
    module.__dict__.update({
        "__file__": filename, "__builtins__": builtins, "__cached__": None, "__package__": None,
        "__spec__": None, "__loader__": importlib.machinery.SourceFileLoader("__main__", filename),
    })
    sys.modules["__main__"] = module
    exec(code, module.__dict__)


def _exit_code_of(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


def _parse(argv: list[str]) -> tuple[bool, str, list[str]]:
    is_module = False
    if argv and argv[0] == "-m":
        is_module = True
        argv = argv[1:]
    if not argv:
        raise UsageError("bootstrap: no script given")
    return is_module, argv[0], argv[1:]


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _flushing_exit(original: Any, sink: Any) -> Any:
    def _exit(code: int) -> None:
        try:
            sink.close()  # nothing in a forked child (a DataLoader worker): the events are its parent's
        finally:
            original(code)
    return _exit


def _arm(settings: AgentSettings) -> Any:
    """What the process needs before the script runs: death with the supervisor, faulthandler's file (returned:
    it must stay open), the host memory limit."""
    if settings.events_path:  # started by a supervisor: never outlive it
        die_with_parent()
    fault_file = None
    if settings.fault_log:
        fault_file = open(settings.fault_log, "w")  # noqa: SIM115 - must outlive main() for faulthandler
        faulthandler.enable(fault_file)
    if settings.host_memory_limit:
        import resource

        # The data segment limit makes the C allocator fail for real ("DefaultCPUAllocator: can't allocate
        # memory"), as a machine with less RAM would, instead of the kernel's OOM killer.
        resource.setrlimit(resource.RLIMIT_DATA, (settings.host_memory_limit, settings.host_memory_limit))
    return fault_file


def _start_session(settings: AgentSettings, sink: Any, started: _Started) -> Any:
    """Called right after the script's ``import torch`` completes."""
    import torch

    session: Any
    if settings.estimate:
        from torchdoctor.agent.estimate.session import EstimateSession

        session = EstimateSession(settings, sink)
        started["accounting"] = "off"
        started["cpu_figures"] = "fake tensors (torchdoctor estimate)"
    else:
        from torchdoctor.agent.session import AgentSession

        session = AgentSession(settings, sink)
        started["accounting"] = session.schedule.mode  # exact when a CPU memory budget is enforced
        started["cpu_figures"] = session.cpu_figures
    sink.emit(RunStarted(pid=os.getpid(), torch_version=torch.__version__, cuda_version=torch.version.cuda,
                         cuda_devices=torch.cuda.device_count() if torch.version.cuda else 0, **started))
    session.start()
    return session


def _run_target(is_module: bool, target: str, script_args: list[str]) -> tuple[int, BaseException | None, bool]:
    """Run the script as python would; (its exit code, what it failed with, whether Ctrl-C ended it)."""
    sys.argv = [target, *script_args]  # for a module, run_module(alter_sys=True) puts its file in argv[0]
    sys.path[0] = os.getcwd() if is_module else os.path.dirname(os.path.realpath(target))
    try:
        if is_module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            _run_script(target)
    except SystemExit as exc:
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
            return _exit_code_of(exc), exc, False
        return _exit_code_of(exc), None, False
    except StepsDone as exc:  # the steps asked for (torchdoctor ci --steps N): a successful end
        print(f"[torchdoctor] stopped after {exc}", file=sys.stderr)
    except ResumeAbandoned as exc:
        print(f"[torchdoctor] resume abandoned: {exc}; the run restarts from the beginning", file=sys.stderr)
        return RESUME_ABANDONED_EXIT, exc, False
    except KeyboardInterrupt as exc:
        _print_exception(exc)
        return 128 + signal.SIGINT, exc, True
    except BaseException as exc:  # noqa: BLE001 - the user's failure, reported as python would
        _print_exception(exc)
        return 1, exc, False
    return 0, None, False


def _record_end(sink: Any, sessions: list[Any], started: _Started, exit_code: int,
                failure: BaseException | None) -> None:
    oom = False
    if sessions:
        oom = sessions[0].record_failure(failure)
        sessions[0].finish()
    else:  # the script never imported torch: nothing to hook, but the run is still recorded
        sink.emit(RunStarted(pid=os.getpid(), torch_version=_torch_version(), cuda_version=None,
                             cuda_devices=0, **started))
    sink.emit(RunFinished(
        exit_code=exit_code,
        exception=type(failure).__name__ if failure is not None else None,
        message=str(failure)[:500] if failure is not None else None,
        steps=sessions[0].step if sessions else 0,
        dropped_events=getattr(sink, "dropped", 0),
        oom=oom,
    ))


def main(argv: list[str] | None = None) -> None:
    is_module, target, script_args = _parse(list(sys.argv[1:] if argv is None else argv))
    rank = Rank.from_env()
    settings = AgentSettings.from_env().for_rank(rank)
    fault_file = _arm(settings)
    sink = FileEmitter(settings.events_path) if settings.events_path else MemorySink()
    heartbeat = HeartbeatThread(sink) if settings.events_path else None
    exits = ClassPatches()  # os._exit skips every cleanup: the events queued so far are written first
    exits.wrap(os, "_exit", lambda original: _flushing_exit(original, sink))
    started: _Started = {"target": target, "is_module": is_module, "argv": [target, *script_args],
                         "python": platform.python_version(), "accounting": settings.accounting,
                         "sample_every": settings.sample_every, "attempt": settings.attempt}
    if rank is not None:
        started["rank"], started["local_rank"], started["world_size"] = rank.rank, rank.local_rank, rank.world_size
    sessions: list[Any] = []

    def on_import_torch() -> None:
        sessions.append(_start_session(settings, sink, started))
        if heartbeat is not None:  # after run_started, which stays the stream's first event
            heartbeat.start(stacks_file=fault_file)

    watcher = TorchImportWatcher(on_import_torch)
    exit_code, failure, interrupted = 1, None, False
    watcher.install()
    try:
        exit_code, failure, interrupted = _run_target(is_module, target, script_args)
    finally:
        watcher.remove()
        exits.restore()
        if heartbeat is not None:
            heartbeat.stop()
        _record_end(sink, sessions, started, exit_code, failure)
        sys.stdout.flush()
        sys.stderr.flush()
        sink.close()
        del failure
    if interrupted:
        # Python itself dies by SIGINT after an unhandled KeyboardInterrupt; do the same after cleanup.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()

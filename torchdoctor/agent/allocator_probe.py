"""The c10 CPU allocator's own figures, through a small native probe (``torchdoctor/native/allocator_probe.cpp``).

Kernels allocate buffers that are never an op's output (oneDNN reorders a convolution's activations into blocked
layouts, RNNs keep workspaces): a dispatch-level view of op outputs misses them, a quarter of a conv net's peak.
The allocator sees them. The probe is compiled once per torch version with the machine's C++ compiler (a few
seconds; cached under ``$TORCHDOCTOR_CACHE``, else ``$XDG_CACHE_HOME/torchdoctor`` or ``~/.cache/torchdoctor``) and
called through ctypes. Without a compiler (or with ``TORCHDOCTOR_ALLOCATOR_PROBE=0``) there is no probe and the CPU
figures are the tensor outputs' (the run says so).

The probe takes the thread's profiler slot: a script's own ``torch.profiler`` would find it taken, so the probe
steps aside while one runs (its figures then miss that time, and the run says so). Threads the script starts get
the probe too.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

SOURCE = Path(__file__).resolve().parent.parent / "native" / "allocator_probe.cpp"
ENV_SWITCH = "TORCHDOCTOR_ALLOCATOR_PROBE"  # "0": no probe
ENV_CACHE = "TORCHDOCTOR_CACHE"
BUILD_TIMEOUT_S = 300


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchdoctor"


def _compiler() -> str | None:
    named = os.environ.get("CXX")
    if named:
        return shutil.which(named) or (named if os.path.isfile(named) else None)
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def library_path(torch: Any, compiler: str) -> Path:
    """Where the probe built for this torch, source and compiler lives."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), torch.__version__.encode(), torch.__file__.encode(),
                                     compiler.encode()])).hexdigest()[:16]
    return cache_dir() / f"allocator_probe-{key}.so"


def build(torch: Any) -> tuple[Path | None, str]:
    """The probe's shared library, built if it is not cached yet: (path, "") or (None, why not)."""
    if os.environ.get(ENV_SWITCH) == "0":
        return None, f"{ENV_SWITCH}=0"
    if not sys.platform.startswith("linux"):
        return None, f"the allocator probe is built on Linux only (this is {sys.platform})"
    compiler = _compiler()
    if compiler is None:
        return None, "no C++ compiler found (c++, g++, clang++ or $CXX)"
    target = library_path(torch, compiler)
    if target.exists():
        return target, ""
    torch_dir = Path(torch.__file__).resolve().parent
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(dir=target.parent, prefix=".allocator_probe-", suffix=".so")
        os.close(handle)
    except OSError as exc:
        return None, f"cannot write the probe to {target.parent}: {exc.strerror or exc}"
    command = [compiler, "-O2", "-std=c++20", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w",
               "-I", str(torch_dir / "include"), str(SOURCE), "-L", str(torch_dir / "lib"), "-lc10", "-ltorch_cpu",
               f"-Wl,-rpath,{torch_dir / 'lib'}", "-o", scratch]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return None, f"the allocator probe did not compile ({os.path.basename(compiler)}: {last[:200]})"
        os.replace(scratch, target)  # atomic: a concurrent build of the same key writes the same bytes
        return target, ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"the allocator probe did not compile: {exc}"
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


class AllocatorProbe:
    """The running figures of the c10 CPU allocator since the probe was first attached."""

    def __init__(self, library: ctypes.CDLL) -> None:
        for name in ("td_current", "td_peak", "td_reset_peak", "td_allocations"):
            getattr(library, name).restype = ctypes.c_int64
        self._lib = library
        self.current: Callable[[], int] = library.td_current  # bytes handed out and not yet freed
        self.peak: Callable[[], int] = library.td_peak  # their largest value since the last reset
        self.reset_peak: Callable[[], int] = library.td_reset_peak  # the peak starts again from now; returns now
        self.allocations: Callable[[], int] = library.td_allocations
        self.paused_by_profiler = 0  # how many times the script's own profiler made the probe step aside

    def attach(self) -> bool:
        """This thread's CPU allocations reach the probe (False: a profiler holds the slot here)."""
        return bool(self._lib.td_attach())

    def detach(self) -> bool:
        return bool(self._lib.td_detach())


def figures_source(why: str) -> str:
    """Where the CPU's tensor figures come from, as ``report.json`` says it: ``why`` there is no probe, or ""."""
    return f"tensor outputs ({why})" if why else "allocator"


_STARTED: list[AllocatorProbe] = []  # one probe per process: the allocator's figures are the process's


def start(torch: Any) -> tuple[AllocatorProbe | None, str]:
    """Build (once), load and attach the probe to this thread, to threads started from now on, and step it
    aside while the script's own profiler runs: (probe, "") or (None, why there is none)."""
    if _STARTED:
        probe = _STARTED[0]
        return (probe, "") if probe.attach() else (None, "a profiler holds this thread's profiler slot")
    path, why = build(torch)
    if path is None:
        return None, why
    try:
        probe = AllocatorProbe(ctypes.CDLL(str(path)))
    except OSError as exc:
        return None, f"the allocator probe did not load: {exc}"
    if not probe.attach():
        return None, "a profiler was already running when torchdoctor started"
    _attach_new_threads(probe)
    _step_aside_for_profilers(probe)
    _STARTED.append(probe)
    return probe, ""


def _attach_new_threads(probe: AllocatorProbe) -> None:
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def _bootstrap_inner(self: threading.Thread) -> None:
        probe.attach()
        original(self)

    threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]


def _step_aside_for_profilers(probe: AllocatorProbe) -> None:
    """torch refuses to start a profiler on a thread whose profiler slot is taken: the probe leaves the slot
    just before one starts and takes it back once it stops."""
    from torch.autograd import profiler, profiler_legacy

    for module, enable, disable in ((profiler, "_enable_profiler", "_disable_profiler"),
                                    (profiler_legacy, "_enable_profiler_legacy", "_disable_profiler_legacy")):
        original_enable, original_disable = getattr(module, enable, None), getattr(module, disable, None)
        if original_enable is None or original_disable is None:
            continue

        def enabled(*args: Any, _original: Any = original_enable, **kwargs: Any) -> Any:
            if probe.detach():
                probe.paused_by_profiler += 1
            try:
                return _original(*args, **kwargs)
            except BaseException:
                probe.attach()
                raise

        def disabled(*args: Any, _original: Any = original_disable, **kwargs: Any) -> Any:
            try:
                return _original(*args, **kwargs)
            finally:
                probe.attach()

        setattr(module, enable, enabled)
        setattr(module, disable, disabled)


if __name__ == "__main__":  # python -m torchdoctor.agent.allocator_probe: build it now (CI, images)
    import torch as _torch

    built, reason = build(_torch)
    print(built if built else f"no allocator probe: {reason}")
    sys.exit(0 if built else 1)

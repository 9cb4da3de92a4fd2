"""The c10 CPU allocator's own figures, through a small native probe (``torchdoctor/native/allocator_probe.cpp``).

Kernels allocate buffers that are never an op's output (oneDNN reorders a convolution's activations into blocked
layouts, RNNs keep workspaces): a dispatch-level view of op outputs misses them, a quarter of a conv net's peak.
The allocator sees them. The probe is compiled once per torch version with the machine's C++ compiler (a few
seconds; cached under ``$TORCHDOCTOR_CACHE``, else ``$XDG_CACHE_HOME/torchdoctor`` or ``~/.cache/torchdoctor``) and
called through ctypes. Without a compiler (or with ``TORCHDOCTOR_ALLOCATOR_PROBE=0``) there is no probe and the CPU
figures are the tensor outputs' (the run says so).

The probe is a thin allocator in front of torch's CPU allocator (``c10::SetCPUAllocator``): it counts every CPU
allocation torch makes from then on, on every thread, by the category it is born as (the phase running then, set
from here) and re-classified later by storage; a script's own ``torch.profiler`` runs as usual beside it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from torchdoctor.events import PHASES as EVENT_PHASES

SOURCE = Path(__file__).resolve().parents[2] / "native" / "allocator_probe.cpp"
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


PHASES = ("other", *(phase for phase in EVENT_PHASES if phase != "other"))  # the probe's phase indices (0: other)
CATEGORY_SLOTS = 8  # the probe's categories (torchdoctor.events.CATEGORIES fit in them)
PHASE_SLOTS = 8
_READ_SIZE = 4 + 2 * CATEGORY_SLOTS + PHASE_SLOTS  # td_read's figures


class AllocatorProbe:
    """The running figures of the CPU allocator since the probe was put in front of it: bytes held, their peak,
    each phase's peak and the bytes by category, now and at the peak."""

    def __init__(self, library: ctypes.CDLL) -> None:
        for name in ("td_current", "td_peak", "td_reset_peak", "td_allocations", "td_classify"):
            getattr(library, name).restype = ctypes.c_int64
        library.td_classify.argtypes = (ctypes.POINTER(ctypes.c_int64), ctypes.c_int64, ctypes.c_int, ctypes.c_int)
        library.td_forget_height.argtypes = (ctypes.c_int64,)
        library.td_forget_height.restype = None
        library.td_set_phase.argtypes = (ctypes.c_int, ctypes.c_int)
        library.td_set_phase.restype = None
        library.td_read.argtypes = (ctypes.POINTER(ctypes.c_int64), ctypes.c_int)
        library.td_owned.argtypes = (ctypes.POINTER(ctypes.c_int64), ctypes.c_int64, ctypes.POINTER(ctypes.c_int64))
        library.td_owned.restype = None
        self._lib = library
        self.current: Callable[[], int] = library.td_current  # bytes handed out and not yet freed
        self.peak: Callable[[], int] = library.td_peak  # their largest value since the last reset
        self.reset_peak: Callable[[], int] = library.td_reset_peak  # the peak starts again from now; returns now
        self.allocations: Callable[[], int] = library.td_allocations
        # (bytes held at most before an op the budget failed): that op's height never was
        self.forget_height: Callable[[int], None] = library.td_forget_height
        self._set_phase = library.td_set_phase
        self._phase_index = {name: index for index, name in enumerate(PHASES)}
        self._read_buffer = (ctypes.c_int64 * _READ_SIZE)()

    def install(self) -> bool:
        """The CPU allocator is the probe from now on (False: torch kept another one)."""
        return bool(self._lib.td_install())

    def uninstall(self) -> bool:
        return bool(self._lib.td_uninstall())

    def set_phase(self, phase: str, birth_category: int) -> None:
        """What runs from now on, and the category what it allocates is born as."""
        self._set_phase(self._phase_index.get(phase, 0), birth_category)

    def classify(self, storages: list[int], category: int, only_from: int = -1) -> int:
        """The allocations behind these storages (``untyped_storage()._cdata``; only those now ``only_from``, if
        given) are ``category`` from now on, and at the peak if they were alive then; storages the probe did not
        allocate are left alone. Their bytes."""
        if not storages:
            return 0
        return int(self._lib.td_classify((ctypes.c_int64 * len(storages))(*storages), len(storages), category,
                                         only_from))

    def owned(self, storages: list[int]) -> list[bool]:
        """Whether the probe made each storage's allocation (so the allocator's figures count it)."""
        if not storages:
            return []
        out = (ctypes.c_int64 * len(storages))()
        self._lib.td_owned((ctypes.c_int64 * len(storages))(*storages), len(storages), out)
        return [value >= 0 for value in out]

    def read(self) -> dict[str, Any]:
        """All figures at once: ``current``, ``peak``, ``allocations``, ``peak_phase``, ``categories`` (now),
        ``peak_categories`` and ``phase_peaks`` (phases that ran since the last reset)."""
        buffer = self._read_buffer
        self._lib.td_read(buffer, _READ_SIZE)
        values = list(buffer)
        cats = 4 + CATEGORY_SLOTS
        phases = values[4 + 2 * CATEGORY_SLOTS:]
        return {"current": values[0], "peak": values[1], "allocations": values[2], "peak_phase": PHASES[values[3]],
                "categories": values[4:cats], "peak_categories": values[cats:cats + CATEGORY_SLOTS],
                "phase_peaks": {name: phases[i] for i, name in enumerate(PHASES) if phases[i] >= 0}}


def figures_source(why: str) -> str:
    """Where the CPU's tensor figures come from, as ``report.json`` says it: ``why`` there is no probe, or ""."""
    return f"tensor outputs ({why})" if why else "allocator"


_STARTED: list[AllocatorProbe] = []  # one probe per process: the allocator's figures are the process's


def start(torch: Any) -> tuple[AllocatorProbe | None, str]:
    """Build (once), load and put the probe in front of torch's CPU allocator: (probe, "") or (None, why not)."""
    if _STARTED:
        probe = _STARTED[0]
        return (probe, "") if probe.install() else (None, "another CPU allocator took the probe's place")
    path, why = build(torch)
    if path is None:
        return None, why
    try:
        probe = AllocatorProbe(ctypes.CDLL(str(path)))
    except OSError as exc:
        return None, f"the allocator probe did not load: {exc}"
    if not probe.install():
        return None, "torch kept its own CPU allocator (another one is installed with a higher priority)"
    _STARTED.append(probe)
    return probe, ""


if __name__ == "__main__":  # python -m torchdoctor.agent.memory.allocator_probe: build it now (CI, images)
    import torch as _torch

    built, reason = build(_torch)
    print(built if built else f"no allocator probe: {reason}")
    sys.exit(0 if built else 1)

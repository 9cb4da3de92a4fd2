"""One device's running figures within a span (between two optimizer steps), and the storages counted on it."""

from __future__ import annotations

from typing import Any

from torchdoctor.events import CATEGORIES


def oom_size(n: int) -> str:
    """Sizes as torch's own OOM messages write them (``20.00 MiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.2f} {unit}" if unit != "B" else f"{n} bytes"
        value /= 1024
    return f"{n} bytes"


class DeviceLedger:
    """Running figures for one device within the current span (between two optimizer steps).

    With the CPU allocator probe the figures (bytes held, the peak, each phase's peak, the breakdown at the peak)
    are the probe's, kept natively at every allocation; the storages counted here then only name the largest
    tensors at a peak (and count what was alive before the probe, which the allocator never reported)."""

    __slots__ = ("current", "cats", "span_peak", "span_peak_seq", "span_peak_cats", "span_peak_phase",
                 "phase_peaks", "died_after_peak", "run_peak", "probe", "unseen", "before_probe")

    def __init__(self, probe: Any = None) -> None:
        self.current = 0  # bytes of the live storages it counts (with a probe: the tensors; the total is the probe's)
        self.cats = [0] * len(CATEGORIES)
        self.run_peak = -1  # the largest span peak listed so far (its top tensors were sent then)
        self.probe = probe  # the CPU allocator's figures (AllocatorProbe), or None: the storages are the figures
        # storages alive before the probe was attached (in process: the pytest plugin) and their bytes: the
        # allocator never reported them, and does not report their frees
        self.before_probe: dict[int, StorageEntry] = {}
        self.unseen = 0
        self.reset_span("other", 0)

    def total(self) -> int:
        """The bytes held now: the allocator's, or the counted storages'."""
        return self.unseen + self.probe.current() if self.probe is not None else self.current

    def height(self) -> int:
        """With the probe: the most the allocator held since the peak was last reset."""
        return self.unseen + self.probe.peak()

    @staticmethod
    def breakdown(cats: list[int]) -> dict[str, int]:
        return dict(zip(CATEGORIES, cats))

    def _with_unseen(self, cats: list[int]) -> list[int]:
        """The probe's categories plus those of the storages alive before it."""
        out = list(cats[:len(CATEGORIES)])
        for entry in self.before_probe.values():
            out[entry.cat] += entry.nbytes
        return out

    def add_unseen(self, entry: StorageEntry) -> None:
        """A storage alive before the probe: the allocator never reported it, nor will it report its free."""
        entry.ledger = self
        self.before_probe[entry.ptr] = entry
        self.unseen += entry.nbytes

    def cats_now(self) -> list[int]:
        """The bytes held now by category."""
        if self.probe is None:
            return list(self.cats)
        return self._with_unseen(self.probe.read()["categories"])

    def reset_span(self, phase: str, seq: int) -> None:
        total = self.unseen + self.probe.reset_peak() if self.probe is not None else self.current
        self.span_peak = total
        self.span_peak_seq = seq
        self.span_peak_cats = list(self.cats)
        self.span_peak_phase = phase
        self.phase_peaks = {phase: total}
        self.died_after_peak: list[StorageEntry] = []  # storages alive at the span's peak that died since

    def allocator_peak(self, seq: int) -> None:
        """With the probe, after an op: whether the allocator reached a new peak of the span since the last look
        (which storages were alive at the peak, for the largest tensors listed there)."""
        peak = self.height()
        if peak > self.span_peak:
            self.span_peak = peak
            self.span_peak_seq = seq
            if self.died_after_peak:
                self.died_after_peak = []

    def figures(self) -> dict[str, Any]:
        if self.probe is None:
            return {"tensor_bytes": self.current, "tensor_peak": self.span_peak, "peak_phase": self.span_peak_phase,
                    "phase_peaks": dict(self.phase_peaks), "breakdown": self.breakdown(self.span_peak_cats)}
        read = self.probe.read()
        unseen = self.unseen
        self.span_peak = max(self.span_peak, unseen + read["peak"])
        return {"tensor_bytes": unseen + read["current"], "tensor_peak": unseen + read["peak"],
                "peak_phase": read["peak_phase"],
                "phase_peaks": {phase: unseen + bytes_ for phase, bytes_ in read["phase_peaks"].items()},
                "breakdown": self.breakdown(self._with_unseen(read["peak_categories"]))}


class StorageEntry:
    __slots__ = ("ptr", "nbytes", "ledger", "cat", "seq", "shape", "dtype", "phase", "module")

    def __init__(self, ptr: int, nbytes: int, ledger: DeviceLedger, cat: int, seq: int, shape: Any, dtype: Any,
                 phase: str, module: str | None) -> None:
        self.ptr = ptr
        self.nbytes = nbytes
        self.ledger = ledger
        self.cat = cat
        self.seq = seq
        self.shape = shape
        self.dtype = dtype
        self.phase = phase
        self.module = module

    def describe(self, name: str | None) -> dict[str, Any]:
        return {"bytes": self.nbytes, "shape": list(self.shape), "dtype": str(self.dtype).replace("torch.", ""),
                "category": CATEGORIES[self.cat], "phase": self.phase, "module": self.module, "name": name}

"""What a fake run holds, by category: the figures of one memory (the host, or the modelled GPU)."""

from __future__ import annotations

from typing import Any

from torchdoctor.events import CATEGORIES


class Ledger:
    """Bytes held by category, the peak of a span (an optimizer step), each phase's peak and the breakdown at the
    peak. A storage re-classified after the peak but born before it was alive at the peak: it moves in the
    peak's breakdown too, so the breakdown adds up to the peak."""

    def __init__(self, names: tuple[str, ...] = CATEGORIES) -> None:
        self.names = names
        self.current = 0
        self.cats = [0] * len(names)
        self.peak, self.peak_seq, self.peak_phase = 0, 0, "other"
        self.peak_cats = list(self.cats)
        self.phase_peaks: dict[str, int] = {}

    def grow(self, cat: int, delta: int, seq: int, phase: str) -> None:
        self.current += delta
        self.cats[cat] += delta
        if delta > 0 and self.current > self.peak:
            self.peak, self.peak_seq, self.peak_phase = self.current, seq, phase
            self.peak_cats = list(self.cats)
        if self.current > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase] = self.current

    def move(self, nbytes: int, old: int, new: int, seq: int) -> None:
        self.cats[old] -= nbytes
        self.cats[new] += nbytes
        if seq <= self.peak_seq:  # alive since before the peak, so alive at it
            self.peak_cats[old] -= nbytes
            self.peak_cats[new] += nbytes

    def enter(self, phase: str) -> None:
        if self.current > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase] = self.current

    def reset_span(self, seq: int, phase: str) -> None:
        self.peak, self.peak_seq, self.peak_phase = self.current, seq, phase
        self.peak_cats = list(self.cats)
        self.phase_peaks = {phase: self.current}

    def figures(self) -> dict[str, Any]:
        return {"peak_bytes": self.peak, "peak_phase": self.peak_phase, "held_bytes": self.current,
                "by_phase": dict(self.phase_peaks), "by_kind": dict(zip(self.names, self.peak_cats))}

"""TD119, memory growth: the tensor memory alive at the start of passes over the training DataLoader after
training began. Rising at each of GROWTH_PASSES consecutive measurements (by more than MIN_GROWTH each) is growth
without bound; per-epoch buffers freed at the end of their epoch stay flat there.

The figure is the bytes of every live tensor's storage (a scan of the garbage collector's objects: tens of
milliseconds in a large process), plus the CUDA allocator's allocated bytes where CUDA is in use. The process's
resident memory (plus CUDA's allocated bytes), read at every training pass start (microseconds), decides when to
scan: after it rose by RSS_GROWTH at each of the last three pass starts (memory that keeps rising is what this check
is for), or when the training time since the last scan (or the first pass) is SCAN_BUDGET× that scan's duration. So
a run whose memory is flat pays a scan every few minutes at most, however short its epochs. The finding names what
grew: the largest group of new tensors by shape, and the variable holding them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import holder_of, storage_key
from torchdoctor.agent.doctor.locations import code_location
from torchdoctor.agent.memory.live import live_tensors
from torchdoctor.sizes import format_bytes

GROWTH_PASSES = 3  # consecutive rises
MIN_GROWTH = 64 * 1024
SCAN_BUDGET = 500  # a scan when due by time: after 500× its duration (0.2% of training time)
FIRST_SCAN_AFTER = 60.0  # seconds of training before a first scan is due by time
RSS_GROWTH = 1 << 20  # resident memory rising this much at each of RSS_RISES pass starts: a scan at every pass
RSS_RISES = 3  # (two rises happen while allocators warm up)


def _cuda_allocated() -> int:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))
    return 0


def _cheap_figure(rss: int | None) -> int | None:
    """Resident memory plus CUDA allocated bytes: read at every pass start to tell when a scan is worth it."""
    return None if rss is None else rss + _cuda_allocated()


class MemoryChecks:
    def __init__(self, doctor: Any) -> None:
        self.doctor = doctor
        self._figures: list[tuple[int, int]] = []  # (pass number, bytes)
        self._storages: set[int] = set()
        self._rss: list[int | None] = []  # at each training pass start
        self._last_scan: float | None = None  # when the last scan ended (or the first pass started)
        self._scan_seconds = FIRST_SCAN_AFTER / SCAN_BUDGET

    def _due(self) -> bool:
        now = time.perf_counter()
        self._rss = (self._rss + [_cheap_figure(self.doctor.session.resident_bytes())])[-(RSS_RISES + 1):]
        if self._last_scan is None:
            self._last_scan = now
        since = now - self._last_scan
        if since >= SCAN_BUDGET * self._scan_seconds:
            return True
        rss = self._rss
        rising = len(rss) == RSS_RISES + 1 and all(a is not None and b is not None and b - a >= RSS_GROWTH
                                       for a, b in zip(rss, rss[1:]))
        return rising

    def pass_opened(self, record: Any, training: bool) -> None:
        if not training or "TD119" in self.doctor.reported or not self._due() or not self.doctor.session.step:
            return
        began = time.perf_counter()
        try:
            self._measure(record)
        finally:
            self._last_scan = time.perf_counter()
            self._scan_seconds = self._last_scan - began

    def _measure(self, record: Any) -> None:
        storages = {key[0]: (key[1], t) for t in live_tensors() if (key := storage_key(t)) is not None}
        # CUDA tensors: the allocator's own count
        figure = sum(size for size, t in storages.values() if not t.is_cuda) + _cuda_allocated()
        new = {ptr: value for ptr, value in storages.items() if ptr not in self._storages}
        self._storages = set(storages)
        self._figures.append((record.number, figure))
        recent = self._figures[-(GROWTH_PASSES + 1):]
        if len(recent) <= GROWTH_PASSES or any(b - a < MIN_GROWTH for (_, a), (_, b) in zip(recent, recent[1:])):
            return
        groups: dict[tuple[tuple[int, ...], torch.dtype], list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for size, tensor in new.values():
            groups[(tuple(tensor.shape), tensor.dtype)].append((size, tensor))
        what = ""
        if groups:
            (shape, dtype), members = max(groups.items(), key=lambda item: sum(s for s, _ in item[1]))
            holder = holder_of(members[0][1])
            what = (f"; new since the measurement before: {len(members)} tensors of shape {shape} "
                    f"{str(dtype).split('.')[-1]} ({format_bytes(sum(s for s, _ in members))})"
                    + (f", held by {holder}" if holder else ""))
        figures = " → ".join(format_bytes(b) for _, b in recent)
        first, last = recent[0][0] + 1, recent[-1][0] + 1
        per_pass = format_bytes((recent[-1][1] - recent[0][1]) / max(1, last - first))
        self.doctor.report("TD119", code_location(), (
            f"tensor memory at the start of training passes {', '.join(str(n + 1) for n, _ in recent)}: {figures} "
            f"(+{per_pass} a pass, never released){what}"))

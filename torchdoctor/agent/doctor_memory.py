"""TD119, memory growth: the tensor memory alive at the start of each pass over the training DataLoader after
training began. Rising at every one of GROWTH_PASSES consecutive pass starts (by more than MIN_GROWTH each) is
growth without bound; per-epoch buffers freed at the end of their epoch stay flat there.

The figure is the CUDA allocator's allocated bytes where CUDA is in use, else the bytes of every live tensor's
storage (one scan of the garbage collector's objects per pass). The finding names what grew: the largest group of
new tensors by shape, and the variable holding them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from torchdoctor.agent.doctor_evidence import holder_of, live_tensors, storage_key
from torchdoctor.agent.locations import user_location
from torchdoctor.sizes import format_bytes

GROWTH_PASSES = 3  # consecutive rises
MIN_GROWTH = 64 * 1024


class MemoryChecks:
    def __init__(self, doctor: Any) -> None:
        self.doctor = doctor
        self._figures: list[tuple[int, int]] = []  # (pass number, bytes)
        self._storages: set[int] = set()

    def pass_opened(self, record: Any, training: bool) -> None:
        if not training or not self.doctor.session.step or "TD119" in self.doctor.reported:
            return
        tensors = live_tensors()
        storages = {key[0]: (key[1], t) for t in tensors if (key := storage_key(t)) is not None}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            figure = sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))
        else:
            figure = sum(size for size, _ in storages.values())
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
            what = (f"; new since the last pass: {len(members)} tensors of shape {shape} {str(dtype).split('.')[-1]}"
                    f" ({format_bytes(sum(s for s, _ in members))})" + (f", held by {holder}" if holder else ""))
        figures = " → ".join(format_bytes(b) for _, b in recent)
        first, last = recent[0][0] + 1, recent[-1][0] + 1
        self.doctor.report("TD119", user_location(), (
            f"tensor memory at the start of training passes {first}–{last}: {figures} (+{format_bytes((recent[-1][1] - recent[0][1]) / GROWTH_PASSES)} a pass, never "
            f"released){what}"))

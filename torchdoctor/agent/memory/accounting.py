"""Exact tensor-memory accounting on any device, CPU included.

A ``TorchDispatchMode`` sees every op's outputs; each new storage is counted once (keyed by its data
pointer) and uncounted when it dies (``weakref.finalize`` on the storage). Storages that existed before
accounting started are added by a census. On CPU this agrees with the allocator to the byte; it costs a few
microseconds per op, which is why the session turns it on only for chosen steps.

Each storage carries a category (parameters, gradients, optimizer state, activations/other) and the sequence
number of its birth. Re-classifying a storage later (a tensor becomes ``.grad``, or optimizer state) also
fixes the breakdown recorded at the span's peak if the storage was already alive then, so the breakdown
at the peak is exact without any work at allocation time.

Each storage also keeps the shape and dtype of the tensor that made it, the phase and the innermost module
running then: when a span beats the run's peak, the largest storages alive at that peak are listed. They are
found without any work at the peak itself: a storage was alive at the peak when it was born before it and is
still alive, or died after it (those are kept aside, and dropped when a later peak passes them by).
"""

from __future__ import annotations

import heapq
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

from torchdoctor.agent.memory.device_ledger import DeviceLedger, StorageEntry, oom_size

PARAMETERS, GRADIENTS, OPTIMIZER_STATE, ACTIVATIONS, OPTIMIZER_TEMPORARIES, INPUTS_DATA, ACTIVATIONS_SAVED = range(7)
# the category of a storage by the phase it was born in (until it is classified as something else)
BORN_AS = {"optimizer": OPTIMIZER_TEMPORARIES, "other": INPUTS_DATA}
TOP_TENSORS = 8  # the largest storages listed at a new peak


def born_as(phase: str) -> int:
    return BORN_AS.get(phase, ACTIVATIONS)


def _cpu_storages(tensors: Iterable[torch.Tensor]) -> list[int]:
    """The storages (``StorageImpl`` pointers) behind ``tensors`` (the probe leaves alone any it did not allocate)."""
    try:
        return [tensor.untyped_storage()._cdata for tensor in tensors]
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):  # sparse, nested or odd tensors
        out = []
        for tensor in tensors:
            try:
                out.append(tensor.untyped_storage()._cdata)
            except (RuntimeError, NotImplementedError, TypeError, AttributeError):
                continue
        return out


class TensorAccountant(TorchDispatchMode):
    """Counts live tensor storages per device while it is entered (``open()``/``close()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ledgers: dict[str, DeviceLedger] = {}
        self._live: dict[int, StorageEntry] = {}
        self._seq = 0
        self.phase = "other"
        self.budget: tuple[str, int] | None = None  # (device, bytes): allocations beyond it raise an OOM
        self._overdraft = 0  # bytes the last failed op left alive (with the allocator probe), and what was held
        self._overdraft_floor = 0  # before it: once memory is back there, the overdraft is gone
        self.on_budget_exceeded: Any = None  # called with the OOM's figures just before it is raised
        self.is_open = False
        self._span_ops = False  # whether this span's ops were seen (the largest tensors at its peak can be named)
        self._cpu: DeviceLedger | None = None  # the CPU's ledger when it has the allocator probe
        self._on_stack = False  # stays True when another mode was pushed above ours and we could not pop
        self.module_stack: list[str] = []  # names of the modules running now, innermost last (the phase tracker's)
        # () -> {(storage pointer, bytes): name} for parameters, gradients and optimizer state, as they are now: a
        # storage listed at an earlier peak whose memory a named one reuses since has other bytes, or is not named
        self.namer: Any = None

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        # Without this, torch.compile skips (for good) every frame first called while accounting is on:
        # the mode steps aside while Dynamo compiles and comes back for the compiled code's run.
        return True

    # -- the dispatch hot path -------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        cpu = self._cpu if self.is_open else None
        guarded = cpu is not None and self.budget is not None and self.budget[0] == "cpu"
        before = cpu.total() if guarded else 0
        out = func(*args, **(kwargs or {}))
        if self.is_open:
            if guarded:
                self._judge_op(cpu, before)
            if isinstance(out, torch.Tensor):
                self.track(out, None)
            elif isinstance(out, (tuple, list)):
                for item in out:
                    if isinstance(item, torch.Tensor):
                        self.track(item, None)
            if cpu is not None:
                cpu.allocator_peak(self._seq)
        return out

    def _judge_op(self, cpu: DeviceLedger, before: int) -> None:
        """The budget with the allocator probe: what the op held at its height, its own buffers included. An op
        fails after it ran (its buffers came and went inside it), and one that asked for nothing more does not.
        Until what a failed op left alive is freed (memory back at what it was before that op), memory stands
        above what a real allocator would have left: that overdraft is not held against the ops that unwind."""
        assert self.budget is not None
        if self._overdraft and before <= self._overdraft_floor:
            self._overdraft = 0
            cpu.probe.forget_height(before - cpu.unseen)  # nor do the heights the overdraft reached
            cpu.span_peak = min(cpu.span_peak, cpu.height())
        peak = cpu.height()
        if peak > self.budget[1] + self._overdraft and peak > before:
            # a real allocator fails the allocation: that height never was
            cpu.probe.forget_height(max(cpu.span_peak, before) - cpu.unseen)
            self._overdraft, self._overdraft_floor = max(0, cpu.total() - before), before
            self._raise_budget_oom("cpu", peak - before, cpu, in_use=before)

    @property
    def probe(self) -> Any:
        """The CPU allocator's figures (agent/allocator_probe.py), when the CPU's ledger has them."""
        return self._cpu.probe if self._cpu is not None else None

    def attach_probe(self, probe: Any) -> None:
        """The CPU's figures from now on are the allocator's (``AllocatorProbe``); tensors give the breakdown.
        Storages counted before (a census) stay counted until they die: the allocator never saw them."""
        ledger = DeviceLedger(probe)
        old = self.ledgers.get("cpu")
        if old is not None:
            ledger.current, ledger.cats = old.current, list(old.cats)
            for entry in self._live.values():
                if entry.ledger is old:
                    ledger.add_unseen(entry)
        self._cpu = self.ledgers["cpu"] = ledger
        probe.set_phase(self.phase, born_as(self.phase))
        ledger.reset_span(self.phase, self._seq)

    def count_unseen(self, tensors: Iterable[torch.Tensor], cat: int) -> None:
        """With the probe: count the CPU storages it did not allocate (made before it was in place), which the
        allocator's figures miss, as ``cat``; the rest it counts already."""
        cpu = self._cpu
        if cpu is None:
            return
        tensors = [t for t in tensors if t.device.type == "cpu"]
        owned = cpu.probe.owned(_cpu_storages(tensors))
        if len(owned) != len(tensors):
            owned = [False] * len(tensors)  # an odd tensor among them: count them all as unseen
        for tensor, theirs in zip(tensors, owned):
            if theirs:
                continue
            try:
                ptr = tensor.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError, TypeError):
                continue
            if ptr in self._live:
                continue
            self.track(tensor, cat)
            entry = self._live.get(ptr)
            if entry is not None and entry.ledger is cpu:
                entry.seq = 0
                cpu.add_unseen(entry)

    def allocator_figures(self) -> dict[str, dict[str, Any]]:
        """The CPU allocator's figures for a span the accountant did not measure (no breakdown, no phases)."""
        if self._cpu is None:
            return {}
        return {"cpu": {"tensor_bytes": self._cpu.total(), "tensor_peak": self._cpu.height()}}

    def track(self, tensor: torch.Tensor, cat: int | None) -> None:
        """Count ``tensor``'s storage if it is new; ``cat=None`` classifies it by the current phase."""
        try:
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
        except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, fake or meta tensors
            return
        if ptr == 0 or ptr in self._live:
            return
        device = storage.device
        if device.type == "meta":
            return
        key = str(device)
        ledger = self.ledgers.get(key)
        if ledger is None:
            ledger = self.ledgers[key] = DeviceLedger()  # the CPU's comes with the probe, when it has one
            ledger.reset_span(self.phase, self._seq)
        nbytes = storage.nbytes()
        if cat is None:  # a new allocation (not a census)
            if (self.budget is not None and key == self.budget[0] and ledger.probe is None
                    and ledger.current + nbytes > self.budget[1]):
                self._raise_budget_oom(key, nbytes, ledger)
            cat = born_as(self.phase)
        self._seq += 1
        stack = self.module_stack
        entry = StorageEntry(ptr, nbytes, ledger, cat, self._seq, tensor.shape, tensor.dtype, self.phase,
                       stack[-1] if stack else None)
        self._live[ptr] = entry
        ledger.current += nbytes
        ledger.cats[cat] += nbytes
        if ledger.probe is not None:  # the allocator says when the peak is (after the op)
            weakref.finalize(storage, self._release, ptr, entry)
            return
        current = ledger.current
        peaks = ledger.phase_peaks
        if current > peaks.get(self.phase, 0):
            peaks[self.phase] = current
        if current > ledger.span_peak:
            ledger.span_peak = current
            ledger.span_peak_seq = self._seq
            ledger.span_peak_cats = list(ledger.cats)
            ledger.span_peak_phase = self.phase
            if ledger.died_after_peak:
                ledger.died_after_peak = []
        weakref.finalize(storage, self._release, ptr, entry)

    def _raise_budget_oom(self, device: str, nbytes: int, ledger: DeviceLedger, in_use: int | None = None) -> None:
        """Fail this allocation as a device of ``budget`` bytes would: a ``torch.OutOfMemoryError`` in the
        CUDA message format. The op's outputs die with the exception; the ledger never counted them. With the
        allocator probe the op has run: ``nbytes`` is what it held at its height beyond ``in_use``."""
        capacity = self.budget[1] if self.budget else 0
        in_use = ledger.current if in_use is None else in_use
        free = max(0, capacity - in_use)
        # The CUDA message's shape (" out of memory. Tried to allocate ..."), so tools that match it retry too.
        message = (f"{device.upper()} out of memory. Tried to allocate {oom_size(nbytes)}. Device {device} has a "
                   f"total capacity of {oom_size(capacity)} (torchdoctor memory budget) of which {oom_size(free)} is "
                   f"free. Of the allocated memory {oom_size(in_use)} is allocated by "
                   f"{'the CPU allocator' if ledger.probe is not None else 'tensors'}.")
        if self.on_budget_exceeded is not None:
            alive = heapq.nlargest(5, (e for e in self._live.values() if e.ledger is ledger), key=lambda e: e.nbytes)
            names = self.namer() if self.namer is not None and alive else {}
            breakdown = ledger.breakdown(ledger.cats_now())
            self.on_budget_exceeded({"device": device, "requested_bytes": nbytes, "in_use_bytes": in_use,
                                     "capacity_bytes": capacity, "phase": self.phase, "message": message,
                                     "breakdown": breakdown,
                                     "top_tensors": [e.describe(names.get((e.ptr, e.nbytes))) for e in alive]})
        raise torch.OutOfMemoryError(message)

    def _release(self, ptr: int, entry: StorageEntry) -> None:
        if self._live.get(ptr) is entry:
            del self._live[ptr]
            ledger = entry.ledger
            if ledger.before_probe and ledger.before_probe.pop(ptr, None) is entry:
                ledger.unseen -= entry.nbytes
            ledger.current -= entry.nbytes
            ledger.cats[entry.cat] -= entry.nbytes
            if entry.seq <= ledger.span_peak_seq:
                ledger.died_after_peak.append(entry)

    # -- classification --------------------------------------------------------------------------------
    def classify(self, tensors: Iterable[torch.Tensor], cat: int, census: bool = False,
                 only_from: int | None = None) -> None:
        """Mark storages as ``cat`` (in the CPU allocator probe's figures too); with ``only_from``, only those that
        are that category now. Ones it does not count yet are counted as born before everything in a ``census``
        or while the accountant is open."""
        tensors = list(tensors)
        probe = self.probe
        if probe is not None:  # the allocator's figures (storages it did not allocate are left alone)
            probe.classify(_cpu_storages(tensors), cat, -1 if only_from is None else only_from)
            if not (census or self.is_open or (self._cpu is not None and self._cpu.before_probe)):
                return  # no storage is counted here
        for tensor in tensors:
            try:
                ptr = tensor.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError, TypeError):
                continue
            entry = self._live.get(ptr)
            if entry is None and (only_from is not None or not (census or self.is_open)):
                continue
            if entry is None:
                self.track(tensor, cat)
                entry = self._live.get(ptr)
                if entry is None:
                    continue
                entry.seq = 0
                continue
            if entry.cat == cat or (only_from is not None and entry.cat != only_from):
                continue
            ledger = entry.ledger
            ledger.cats[entry.cat] -= entry.nbytes
            ledger.cats[cat] += entry.nbytes
            if entry.seq <= ledger.span_peak_seq:
                ledger.span_peak_cats[entry.cat] -= entry.nbytes
                ledger.span_peak_cats[cat] += entry.nbytes
            entry.cat = cat

    # -- phases and spans --------------------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        for ledger in self.ledgers.values():
            if ledger.probe is not None:
                ledger.allocator_peak(self._seq)  # the phase that ends may hold a peak not yet seen
                ledger.probe.set_phase(phase, born_as(phase))
                continue
            total = ledger.total()
            if total > ledger.phase_peaks.get(phase, -1):
                ledger.phase_peaks[phase] = total
        self.phase = phase

    def reset_span(self) -> None:
        self._span_ops = self.is_open
        for ledger in self.ledgers.values():
            ledger.reset_span(self.phase, self._seq)

    def figures(self) -> dict[str, dict[str, Any]]:
        """Each device's figures for the span; with ``top_tensors`` when its peak is the run's largest yet."""
        out = {}
        for key, ledger in self.ledgers.items():
            if ledger.probe is not None and self.is_open:
                ledger.allocator_peak(self._seq)
            figures = out[key] = ledger.figures()
            if ledger.span_peak > ledger.run_peak and (self._span_ops or ledger.probe is None):
                ledger.run_peak = ledger.span_peak
                figures["top_tensors"] = self.top_tensors(ledger)
        return out

    def top_tensors(self, ledger: DeviceLedger, count: int = TOP_TENSORS) -> list[dict[str, Any]]:
        """The largest storages alive at ``ledger``'s span peak, largest first."""
        peak_seq = ledger.span_peak_seq
        alive = [e for e in self._live.values() if e.ledger is ledger and e.seq <= peak_seq]
        top = heapq.nlargest(count, alive + ledger.died_after_peak, key=lambda e: e.nbytes)
        names = self.namer() if self.namer is not None and top else {}
        return [e.describe(names.get((e.ptr, e.nbytes)) if self._live.get(e.ptr) is e else None) for e in top]

    # -- entering and leaving ----------------------------------------------------------------------------
    def open(self) -> None:
        self._span_ops = True
        if not self.is_open:
            if not self._on_stack:
                self.__enter__()
                self._on_stack = True
            self.is_open = True

    def close(self) -> bool:
        """Stop counting new storages (frees are still seen). False if another mode sits above ours."""
        if not self.is_open:
            return True
        self.is_open = False
        if _get_current_dispatch_mode() is self:
            self.__exit__(None, None, None)
            self._on_stack = False
            return True
        return False

    def detach_after_fork(self) -> None:
        """In a forked child (a DataLoader worker) the inherited mode only passes ops through."""
        self.is_open = False

"""The modelled GPU of ``torchdoctor estimate --gpu``: the storages the script put on the GPU, each given a block
of the modelled caching allocator (``caching_allocator``), counted by category at the block's size (what
``torch.cuda.memory_allocated()`` counts), with the allocator's reserved segments, and the cuBLAS workspaces torch
allocates through the same allocator the first time a thread runs a matrix product (the forward's thread and the
autograd engine's thread for the backward: one each)."""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.agent.estimate.caching_allocator import Block, CachingAllocatorModel
from torchdoctor.agent.estimate.ledger import Ledger
from torchdoctor.events import CATEGORIES
from torchdoctor.gpus import Gpu

WORKSPACE = "cublas_workspace"
KINDS = (*CATEGORIES, WORKSPACE)
_WORKSPACE_CAT = len(CATEGORIES)
_aten = torch.ops.aten
CUBLAS_OPS = frozenset(
    getattr(_aten, name).default for name in ("mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv",
                                              "_addmm_activation") if hasattr(_aten, name))


class Placed:
    """A storage on the modelled GPU: its allocator block (None while it holds 0 bytes) and the block's size."""

    __slots__ = ("block", "size")

    def __init__(self) -> None:
        self.block: Block | None = None
        self.size = 0


class GpuLedger:
    def __init__(self, gpu: Gpu) -> None:
        self.gpu = gpu
        self.allocator = CachingAllocatorModel()
        self.ledger = Ledger(KINDS)
        self._workspaces: set[str] = set()

    def new(self) -> Placed:
        return Placed()

    def resize(self, placed: Placed, nbytes: int, cat: int, seq: int, phase: str) -> Placed:
        """The storage now holds ``nbytes``: a new block (taken before the old one is given back, as a resize
        copies), counted at its size."""
        old, old_size = placed.block, placed.size
        placed.block = self.allocator.malloc(nbytes)
        placed.size = placed.block.size if placed.block is not None else 0
        self.ledger.grow(cat, placed.size, seq, phase)  # both held for a moment, as the allocator counts them
        self.allocator.free(old)
        self.ledger.grow(cat, -old_size, seq, phase)
        return placed

    def free(self, placed: Placed, cat: int, seq: int, phase: str) -> None:
        self.allocator.free(placed.block)
        self.ledger.grow(cat, -placed.size, seq, phase)
        placed.block, placed.size = None, 0

    def move(self, placed: Placed, old: int, new: int, seq: int) -> None:
        self.ledger.move(placed.size, old, new, seq)

    def before_op(self, func: Any, phase: str, seq: int) -> None:
        """A matrix product on the GPU: the first one of its thread gets that thread's cuBLAS workspace, kept for
        the life of the process."""
        if func in CUBLAS_OPS:
            thread = "autograd" if phase == "backward" else "main"
            if thread not in self._workspaces:
                self._workspaces.add(thread)
                block = self.allocator.malloc(self.gpu.cublas_workspace_bytes)
                self.ledger.grow(_WORKSPACE_CAT, block.size if block is not None else 0, seq, phase)

    def reset_span(self, seq: int, phase: str) -> None:
        self.ledger.reset_span(seq, phase)
        self.allocator.reset_peaks()

    def figures(self) -> dict[str, Any]:
        figures = self.ledger.figures()
        return {"allocated_peak_bytes": figures["peak_bytes"], "reserved_peak_bytes": self.allocator.peak_reserved,
                "peak_phase": figures["peak_phase"], "held_bytes": figures["held_bytes"],
                "by_phase": figures["by_phase"], "by_kind": figures["by_kind"], "segments": self.allocator.segments}

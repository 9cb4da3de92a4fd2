"""Activation checkpointing of an unmodified model's repeated blocks: a remedy that leaves the training loop alone.

The blocks are found in each root model the first time it trains: the children of a ``ModuleList`` or
``Sequential`` that repeat a class and hold submodules of their own (transformer blocks, residual blocks, conv
blocks), else, in a flat ``Sequential`` of single layers, consecutive segments of about √n layers, else its
recurrent layers (``nn.LSTM``, ``nn.LSTMCell``, ...: each call keeps its gates for backward). During a training
forward each block runs under ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved), so only its input is
kept and its activations are computed again in backward: the same values, the gradients bit for bit.

Nothing is changed on the model objects: ``nn.Module.__call__`` is wrapped for the session and looks the module up
in a weak set, so a deep copy (an EMA model), ``torch.save(model)`` and ``state_dict`` see the model as it was. A
BatchNorm layer inside a block would update its running statistics twice (forward and recomputation): they are put
back after the recomputation, so they are updated once, as without checkpointing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from torchdoctor.agent.hooks.patching import ClassPatches

MIN_FLAT_LAYERS = 4  # a flat Sequential needs this many layers with weights before segments help
CHECKED_CALLS = 32  # the first checkpointed calls whose recomputation is compared with their forward


def _unchecked(output: Any) -> Any:
    return output


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def find_blocks(root: nn.Module) -> tuple[list[nn.Module], list[tuple[nn.Sequential, list[tuple[int, int]]]]]:
    """The repeated blocks of ``root`` to checkpoint one by one, and the flat Sequentials to checkpoint in segments
    (each a list of [start, end) child ranges)."""
    blocks: list[nn.Module] = []
    segmented: list[tuple[nn.Sequential, list[tuple[int, int]]]] = []
    taken: set[int] = set()
    for module in root.modules():
        if id(module) in taken or not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(module.children())
        composite = [c for c in children if any(True for _ in c.children())]
        classes = Counter(type(c) for c in composite)
        repeated = [c for c in composite if classes[type(c)] >= 2]
        if repeated:
            blocks.extend(repeated)
            for block in repeated:
                taken.update(id(m) for m in block.modules())
            continue
        if isinstance(module, nn.Sequential) and not composite and module is not None:
            weighted = [i for i, c in enumerate(children) if _has_weights(c)]
            if len(weighted) >= MIN_FLAT_LAYERS:
                size = max(2, round(math.sqrt(len(children))))
                ranges = [(i, min(i + size, len(children))) for i in range(0, len(children), size)]
                segmented.append((module, ranges))
                taken.update(id(m) for m in module.modules())
    if not blocks and not segmented:
        # no repeated blocks: recurrent layers keep their gates for every time step; checkpointing each call keeps
        # only its inputs (an LSTM over a sequence, an LSTMCell unrolled in the script's own loop)
        blocks = [m for m in root.modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))]
    return blocks, segmented


@contextlib.contextmanager
def _running_stats_kept(modules: list[nn.Module]) -> Iterator[None]:
    """Put BatchNorm running statistics back as they were (a recomputation must not update them again)."""
    norms = [m for module in modules for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.detach().clone() if b is not None else None
              for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, values in zip(norms, saved):
                for buffer, value in zip((m.running_mean, m.running_var, m.num_batches_tracked), values):
                    if buffer is not None and value is not None:
                        buffer.copy_(value)


class ActivationCheckpointing:
    def __init__(self) -> None:
        self.blocks: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self.segments: weakref.WeakKeyDictionary[nn.Module, list[tuple[int, int]]] = weakref.WeakKeyDictionary()
        self._roots: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self.block_count = 0
        self.checkpointed_calls = 0
        self.recomputed_checked = 0  # recomputations whose output was compared with the forward's
        self.recomputed_differed = 0  # ... and was not bit for bit the same
        self._patches = ClassPatches()

    def adopt(self, root: nn.Module) -> None:
        """Find ``root``'s blocks (once per root model)."""
        if root in self._roots:
            return
        self._roots.add(root)
        blocks, segmented = find_blocks(root)
        for block in blocks:
            self.blocks.add(block)
        for sequential, ranges in segmented:
            self.segments[sequential] = ranges
        self.block_count += len(blocks) + sum(len(r) for _, r in segmented)

    def install(self) -> None:
        remedy = self

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def __call__(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
                if not (module.training and torch.is_grad_enabled()) or torch.compiler.is_compiling():
                    return original(module, *args, **kwargs)
                if module in remedy.blocks:
                    return remedy._checkpointed(original, module, args, kwargs)
                ranges = remedy.segments.get(module)
                if ranges is not None and len(args) == 1 and not kwargs:
                    sequential = module
                    assert isinstance(sequential, nn.Sequential)  # segments holds the Sequentials find_blocks found
                    module.forward = functools.partial(remedy._segmented_forward, sequential, ranges)
                    try:
                        return original(module, *args)
                    finally:
                        del module.forward
                return original(module, *args, **kwargs)
            return __call__

        self._patches.wrap(nn.Module, "__call__", wrap)

    def remove(self) -> None:
        self._patches.restore()

    def _checkpointed(self, call: Any, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        self.checkpointed_calls += 1
        calls = [0]
        check = self._check()

        def run(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                return check(call(module, *a, **k))  # the forward: with the module's hooks, as without the remedy
            with _running_stats_kept([module]):  # the recomputation in backward
                return check(module.forward(*a, **k))

        return checkpoint(run, *args, use_reentrant=False, early_stop=check is _unchecked, **kwargs)

    def _check(self) -> Any:
        """For the first calls: a function that fingerprints the forward's output and compares the
        recomputation's with it (the remedy's exactness, measured)."""
        if self.checkpointed_calls > CHECKED_CALLS:
            return _unchecked
        seen: list[float] = []

        def check(output: Any) -> Any:
            tensor = output if isinstance(output, torch.Tensor) else next(
                (o for o in (output if isinstance(output, (tuple, list)) else ()) if isinstance(o, torch.Tensor)), None)
            if tensor is None:
                return output
            value = float(tensor.detach().to(torch.float64).sum())
            if seen:
                self.recomputed_checked += 1
                self.recomputed_differed += value != seen[0] and not (value != value and seen[0] != seen[0])
            else:
                seen.append(value)
            return output

        return check

    def _segmented_forward(self, sequential: nn.Sequential, ranges: list[tuple[int, int]], value: Any) -> Any:
        children = list(sequential)
        for start, end in ranges:
            part = children[start:end]
            self.checkpointed_calls += 1
            calls = [0]
            check = self._check()

            def run(x: Any, part: list[nn.Module] = part, calls: list[int] = calls, check: Any = check) -> Any:
                calls[0] += 1
                keep = _running_stats_kept(part) if calls[0] > 1 else contextlib.nullcontext()
                with keep:
                    for child in part:
                        x = child(x) if calls[0] == 1 else child.forward(x)
                return check(x)

            value = checkpoint(run, value, use_reentrant=False, early_stop=check is _unchecked)
        return value

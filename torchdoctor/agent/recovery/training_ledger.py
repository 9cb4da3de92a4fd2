"""What the training loop did, measured while it ran: the figures that say whether a recovered run trained as asked.

Per optimizer (creation order), or per manual parameter update for a script without a ``torch.optim`` optimizer:
the steps taken, and for each step the samples and (where the loss shows them) the tokens that fed it, its
backward passes and loop iterations; for the first steps also the loss as the gradient saw it (each backward's
loss times the scale torchdoctor gave it) and a fingerprint of the data (a float64 sum of the inputs). Besides:
the loss reductions read from each backward's graph, the passes over the training DataLoaders and how each ended
(its data ran out, or the script left it), whether an optimizer step took a closure (LBFGS), and the smallest batch
a BatchNorm layer normalised over in training. The session emits them once, when the attempt ends (an OOM's attempt
too: its unfinished step is ``pending``).

Samples come from the batches the training DataLoader delivered since the previous backward pass, else from the
first training forward of a root module since then (seen on measured steps, where the module hooks are on).
"""

from __future__ import annotations

import weakref
from collections import Counter, deque
from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import Reduction, first_tensor, loss_reduction
from torchdoctor.agent.recovery.activation_checkpointing import find_blocks
from torchdoctor.agent.recovery.training_counts import (
    FIRST_STEPS,
    MANUAL,
    MAX_PARTS,
    Counts,
    ManualUpdates,
    Updater,
    batch_samples,
    describe_optimizer,
    fingerprint,
    guarded,
    storage_of,
)
from torchdoctor.agent.resume.training_state import root_modules
from torchdoctor.events import TrainingFigures


class TrainingLedger:
    def __init__(self) -> None:
        self.now = Counts()
        self._updaters: weakref.WeakKeyDictionary[torch.optim.Optimizer, Updater] = weakref.WeakKeyDictionary()
        self._order: list[Updater] = []  # every optimizer's record, in the order of their first steps
        self._manual: Updater | None = None
        self._probe = ManualUpdates()
        # manual updates seen so far (the session ends a step on each). A count, not a callback: the ledger's hooks
        # sit on the script's modules, which deepcopy and pickle walk, and must not reach the session (open files)
        self.manual_updates = 0
        # batches delivered, not yet seen fed to a training forward: (loader, samples, fingerprint, storage, elements)
        self._queue: deque[tuple[int | None, int, float | None, int | None, int]] = deque(maxlen=64)
        self._matched = False  # a training forward's input was found among the delivered batches
        # batches consumed since the last backward: (loader, samples, fingerprint or None, elements)
        self._drawn: list[tuple[int | None, int, float | None, int]] = []
        self._forward: tuple[int, float | None, int] | None = None  # the first training root forward's batch since
        self.parts: list[list[float | None]] = []  # [samples, fingerprint] of each batch of the first steps, in order
        self.loader_fed = False  # a DataLoader fed a backward pass: loop iterations are its batches
        self.broken: str | None = None  # why the ledger stopped measuring (an error in it), if it did
        self.reductions: Counter = Counter()
        self.last_reduction: Reduction | None = None
        self.closure = False
        self.bn_layers = 0
        self.bn_smallest: int | None = None
        self.bn_largest: int | None = None
        self.bn_forwards = 0
        self._bn_handles: list[Any] = []
        self._bn_tracked: list[tuple[weakref.ref[Any], int]] = []  # (layer, num_batches_tracked when first seen)
        self.in_backward: Any = lambda: False  # the session tells whether backward is running
        self.in_step: Any = lambda: False  # ... and whether an optimizer step is (its closure runs the passes)
        self._step_drew = False  # this optimizer step's closure has counted its batch
        self._bn_seen: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self.blocks = 0  # repeated blocks in the models that trained (what checkpointing would wrap)
        self.device: str | None = None
        self.loop: dict[str, Any] | None = None  # the training loop as read from the source (loop_reading)
        self.resumed: dict[str, Any] | None = None  # resumed from a checkpoint: its step, what was verified

    @property
    def steps_read(self) -> int:
        first = self._first_updater()
        return first.steps if first is not None else 0

    def _first_updater(self) -> Updater | None:
        return self._order[0] if self._order else self._manual

    def _reading(self) -> bool:
        """Whether this step's loss and data are read (the first steps only: a sync each on a GPU)."""
        first = self._first_updater()
        return first is None or first.steps < FIRST_STEPS

    # -- what the loop does ------------------------------------------------------------------------------
    @guarded
    def delivered(self, loader: int | None, data: Any) -> None:
        """A DataLoader handed the script a batch (or micro-batch). It counts for the backward pass that follows the
        training forward it is fed to, found by its storage (a loader wrapper that fetches ahead, as accelerate's
        and Lightning's do, delivers before the batch is used); until one such match is seen, the batches of the
        loader that delivered last before a backward pass count for it."""
        samples, tensor = batch_samples(data)
        if samples is None:
            return
        if not self._matched and self._queue and self._queue[-1][0] != loader:
            self._queue.clear()  # an evaluation pass in between: its batches feed no backward
        self._queue.append((loader, samples, fingerprint(tensor) if self._reading() else None, storage_of(tensor),
                            tensor.numel()))

    def _consume(self, value: Any) -> None:
        """A training forward's input: the delivered batch it is (or is a view of) is consumed."""
        if not self._queue:
            return
        _, tensor = batch_samples(value)
        ptr = storage_of(tensor) if tensor is not None else None
        if ptr is None:
            return
        # newest first: a freed batch's memory is reused by later ones, so an older entry may share the address
        for index in range(len(self._queue) - 1, -1, -1):
            if self._queue[index][3] == ptr:
                self._matched = True
                entry = self._queue[index]
                self._drawn.append((entry[0], entry[1], entry[2], entry[4]))
                for _ in range(index + 1):
                    self._queue.popleft()
                return

    @guarded
    def root_forward(self, module: torch.nn.Module, args: Any) -> None:
        """The outermost module call (measured steps only); a training one may say what the batch was."""
        if module.training and torch.is_grad_enabled():
            if self._forward is None:
                samples, tensor = batch_samples(args)
                if samples is not None:
                    self._forward = (samples, fingerprint(tensor) if self._reading() else None, tensor.numel())
            self._consume(args)
            self._watch_model(module)
            self.device = next((p.device.type for p in module.parameters()), self.device)

    @guarded
    def _root_pre(self, module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        """Every call of a model that trained (a hook on the model itself: keyword inputs, unmeasured steps)."""
        if module.training and torch.is_grad_enabled() and not self.in_backward():
            self._consume(args if first_tensor(args) is not None else kwargs)

    def reduction_of(self, loss: torch.Tensor | None) -> Reduction:
        """How ``loss`` reduces over the batch that feeds it (read before its backward pass)."""
        try:
            return self._reduction_of(loss)
        except Exception:  # noqa: BLE001 - unreadable: counted as unknown
            return Reduction("unknown")

    def _reduction_of(self, loss: torch.Tensor | None) -> Reduction:
        if loss is None or loss.grad_fn is None:
            return Reduction("unknown")
        pending: list[tuple[Any, ...]] = self._drawn or ([] if self._matched else list(self._queue))
        samples: int | None
        if pending:
            samples = pending[-1][1]
        else:
            samples = self._forward[0] if self._forward is not None else None
        return loss_reduction(loss, samples)

    @guarded
    def normalise_loss(self, divisor: float) -> None:
        """The window's gradients were divided by ``divisor`` (token-mean accumulation): so is its loss."""
        first = self._first_updater()
        base = first.since.loss if first is not None else 0.0
        self.now.loss = base + (self.now.loss - base) / divisor

    @guarded
    def backward(self, loss: torch.Tensor | None, scale: float, reduction: Reduction | None = None) -> None:
        """A backward pass from ``loss`` whose gradient torchdoctor scales by ``scale``."""
        now = self.now
        if not self._order and self._probe.changed(loss):
            self._manual_update()
        reading = self._reading()
        if not self._matched:  # no batch seen fed to a forward yet: those the loader delivered since count
            self._drawn = [(e[0], e[1], e[2], e[4]) for e in self._queue]
            self._queue.clear()
        drawn: list[tuple[int, float | None, int]] = [(n, p, k) for _, n, p, k in self._drawn]
        if drawn:
            self.loader_fed = True
            now.iterations += len(drawn)
        elif self._forward is not None and not self.loader_fed:  # with a training DataLoader, only its batches
            drawn = [self._forward]
        if self.in_step():  # an optimizer's closure (LBFGS) evaluates its step's batch again and again: once
            if self._step_drew:
                drawn = []
            self._step_drew = self._step_drew or bool(drawn)
        if not self.loader_fed and (drawn or not self.in_step()):
            now.iterations += 1  # no training DataLoader: each backward pass is a loop iteration
        if drawn:
            now.samples += sum(n for n, _, _ in drawn)
            now.items += sum(k for _, _, k in drawn)
            now.drew += 1
            prints = [p for _, p, _ in drawn]
            if reading and all(p is not None for p in prints):
                now.print_sum += sum(prints)  # type: ignore[arg-type]
                now.print_read += 1
                self._list_parts(drawn)
        self._drawn = []
        self._forward = None
        now.backwards += 1
        if loss is None or loss.grad_fn is None:
            self.reductions["unknown"] += 1
            return
        if reduction is None:
            reduction = loss_reduction(loss, drawn[-1][0] if drawn else None)
        self.last_reduction = reduction
        self.reductions[reduction.kind] += 1
        if reduction.tokens is not None:
            now.tokens += reduction.tokens
            now.token_backwards += 1
        if reading and loss.numel() == 1:
            now.loss += float(loss.detach()) * scale
            now.loss_read += 1

    def _list_parts(self, drawn: list[tuple[int, float | None, int]]) -> None:
        if len(self.parts) < MAX_PARTS:
            self.parts.extend([n, p] for n, p, _ in drawn)
            self.now.parts = len(self.parts)

    @guarded
    def stepped(self, optimizer: torch.optim.Optimizer) -> None:
        self._step_drew = False
        updater = self._updaters.get(optimizer)
        if updater is None:
            updater = self._updaters[optimizer] = Updater(f"{type(optimizer).__name__} #{len(self._order)}")
            self._order.append(updater)
        updater.stepped(self.now, self.parts)

    def _manual_update(self) -> None:
        if self._manual is None:
            self._manual = Updater(MANUAL)
        self._manual.stepped(self.now, self.parts)
        self.manual_updates += 1

    def check_manual_update(self) -> None:
        """Between a backward and the next (the script zeroes its gradients): was there a manual update?"""
        if not self._order and self.now.backwards and self._probe.changed(None):
            self._manual_update()

    @guarded
    def optimizer_made(self, optimizer: torch.optim.Optimizer) -> None:
        """The models an optimizer trains are watched from now on, before their first forward (a scan of live
        modules, once per optimizer)."""
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for root in root_modules():
            if any(id(p) in params for p in root.parameters()):
                self._watch_model(root)

    # -- BatchNorm ---------------------------------------------------------------------------------------
    def _watch_model(self, root: torch.nn.Module) -> None:
        """A model seen training for the first time: its blocks, its device, its BatchNorm layers."""
        if root in self._bn_seen:
            return
        self._bn_seen.add(root)
        self._bn_handles.append(root.register_forward_pre_hook(self._root_pre, with_kwargs=True))
        blocks, segmented = find_blocks(root)
        self.blocks += len(blocks) + sum(len(ranges) for _, ranges in segmented)
        if self.device is None:
            self.device = next((p.device.type for p in root.parameters()), None)
        for module in root.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module not in self._bn_seen:
                self._bn_seen.add(module)
                self.bn_layers += 1
                self._bn_handles.append(module.register_forward_pre_hook(self._bn_pre))
                if module.num_batches_tracked is not None:
                    self._bn_tracked.append((weakref.ref(module), int(module.num_batches_tracked)))

    @guarded
    def _bn_pre(self, module: torch.nn.Module, args: Any) -> None:
        if self.in_backward():  # a checkpointed block's recomputation, not a training forward
            return
        if module.training and args and isinstance(args[0], torch.Tensor) and args[0].dim() > 1:
            self.bn_forwards += 1
            n = int(args[0].shape[0])
            self.bn_smallest = n if self.bn_smallest is None else min(self.bn_smallest, n)
            self.bn_largest = n if self.bn_largest is None else max(self.bn_largest, n)

    # -- the end -------------------------------------------------------------------------------------------
    def _fold_unconsumed(self) -> None:
        """The batch the script had drawn (or was running forward) when it ended, no backward pass yet: an OOM in
        the forward leaves the step it began with that batch."""
        pending = self._drawn or ([(e[0], e[1], e[2], e[4]) for e in self._queue] if not self._matched else [])
        drawn: list[tuple[int, float | None, int]] = [(n, p, k) for _, n, p, k in pending]
        if not drawn and self._forward is not None and not self.loader_fed:
            drawn = [self._forward]
        if drawn:
            self.now.samples += sum(n for n, _, _ in drawn)
            self.now.items += sum(k for _, _, k in drawn)
            self.now.drew += 1
            if all(p is not None for _, p, _ in drawn):
                self.now.print_sum += sum(p for _, p, _ in drawn)  # type: ignore[misc]
                self.now.print_read += 1
                self._list_parts(drawn)
        self._drawn, self._forward = [], None
        self._queue.clear()

    def finish(self, passes: list[dict[str, Any]], step_calls: int, settings: dict[str, Any],
               remedies: dict[str, int], optimizers: list[torch.optim.Optimizer]) -> TrainingFigures:
        for handle in self._bn_handles:
            handle.remove()
        self._bn_handles = []
        if not self._order and self._probe.changed(None):
            self._manual_update()
        self._fold_unconsumed()
        updaters = self._order or ([self._manual] if self._manual else [])
        if not updaters and self.now.samples:  # no step yet: what the first one had gathered when it ended
            name = f"{type(optimizers[0]).__name__} #0" if optimizers else MANUAL
            updaters = [Updater(name)]
        batchnorm = None
        if self.bn_layers:
            batchnorm = {"layers": self.bn_layers, "forwards": self.bn_forwards, "smallest_batch": self.bn_smallest,
                         "largest_batch": self.bn_largest}
            layers = [(m, n) for ref, n in self._bn_tracked if (m := ref()) is not None]
            if layers and len(layers) == len(self._bn_tracked):
                batchnorm["updates"] = sum(int(m.num_batches_tracked) - n for m, n in layers)
        if self.broken is not None:
            return TrainingFigures(updates=[], step_calls=step_calls, backwards=0, iterations=0, reductions={},
                                   passes=[], batchnorm=None, closure=False, settings=settings, remedies=remedies,
                                   broken=self.broken)
        return TrainingFigures(
            updates=[u.to_dict(self.now, self.parts) for u in updaters],
            step_calls=step_calls, backwards=self.now.backwards, iterations=self.now.iterations,
            reductions=dict(self.reductions), passes=passes, batchnorm=batchnorm, closure=self.closure,
            settings=settings, remedies=remedies, optimizers=[describe_optimizer(o) for o in optimizers],
            blocks=self.blocks, device=self.device, loop=self.loop, resumed=self.resumed)

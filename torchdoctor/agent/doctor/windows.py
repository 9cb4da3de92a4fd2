"""Accumulation-window checks: what happens between two optimizer steps.

- TD104: a step over an accumulation window of k ≥ 2 backward passes, each a mean-reduced loss that was not
  multiplied or divided afterwards: the step applies the sum of k mean gradients (k times too large). A window is
  read from the call protocol alone (however the micro-batches are made: a DataLoader, slices, chunks, a collate
  function): k backward passes between two optimizer steps (not inside one: a closure), from the same line of
  the script, through the same parameters (the graph's leaves), none keeping its graph. Losses of different parts of
  one objective (a GAN's real and fake terms on two lines, task heads in a loop) differ in line or parameters and stay
  silent.
- TD105: the same windows with token-mean cross-entropy losses over padded targets whose counted tokens differ
  more than twofold between micro-batches: each micro-batch's tokens weigh differently.
- TD106: a training pass starts while backward passes of the previous pass are not yet stepped, and the next step
  comes with no reset in between: the short last window leaked into the next pass's first step.
- TD107: a scheduler's ``last_epoch`` advanced once per backward pass (k ≥ 2) between two steps of its optimizer
  (read at watched steps, against the step before: a schedule that goes wrong late is seen at the next one).
- TD108: at its optimizer's first step a scheduler had already been stepped once by the script, and the next step
  does not show it stepped per micro-batch (that is TD107, which also steps it before the first step).
Both point at the scheduler's ``step()`` line. Windows are read on watched steps only, and not while torchdoctor's
own micro-batching accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import LossShape, graph_nodes, loss_shape
from torchdoctor.agent.doctor.locations import code_location

TOKEN_RATIO = 2.0  # counted tokens differing more than this between micro-batches of one window (TD105)


@dataclass
class _Backward:
    batch: int  # DataLoader batches delivered before it
    shape: LossShape
    where: str | None
    leaves: frozenset[int]  # the tensors its graph accumulates gradients into (by id; alive: the optimizer's)


def _leaves(loss: torch.Tensor) -> frozenset[int]:
    node = loss.grad_fn
    if node is None:
        return frozenset()
    return frozenset(id(n.variable) for n in graph_nodes(node) if n.name() == "torch::autograd::AccumulateGrad")


class WindowChecks:
    def __init__(self, doctor: Any) -> None:
        self.doctor = doctor
        self._window: list[_Backward] = []
        self._retained = False
        self._leftover: tuple[int, int, str | None] | None = None  # (backward passes, pass number, where)
        # scheduler id -> (last_epoch, backwards_total, its optimizer's steps) at that optimizer's last watched step
        self._sched_seen: dict[int, tuple[int, int, int]] = {}
        self._early: dict[int, tuple[str | None, str]] = {}  # scheduler id -> TD108 waiting for the next step

    @property
    def _own_accumulation(self) -> bool:
        return self.doctor.session.recovery.gates is not None

    def before_backward(self, loss: torch.Tensor | None, retain_graph: bool, watched: bool) -> None:
        session = self.doctor.session
        if not watched or loss is None or session.phases.in_step:  # in step(): an optimizer's closure (LBFGS)
            return
        self._retained = self._retained or retain_graph
        shape = loss_shape(loss, exact_tokens=True)
        self._window.append(_Backward(session.recovery.loaders.batches_delivered, shape, code_location(),
                                      _leaves(loss) if shape.mean else frozenset()))

    def zero_grad(self, params: Any, called: bool) -> None:
        if called:
            self._leftover = None

    def pass_opened(self, record: Any, training: bool) -> None:
        session = self.doctor.session
        if training and session.step and session.backwards_since_step and not self._own_accumulation:
            self._leftover = (session.backwards_since_step, record.number, code_location())

    def before_step(self, optimizer: torch.optim.Optimizer, step: int, watched: bool) -> None:
        window, self._window = self._window, []
        retained, self._retained = self._retained, False
        if self._leftover is not None:
            self._check_leftover(step)
        steps = self.doctor.session.constructions.optimizers.record(optimizer).steps
        # a watched step compares with the step before it: that one is read too
        if watched or steps <= 2 or self.doctor.watched(step + 1):
            self._check_schedulers(optimizer, step, steps)
        if watched and len(window) >= 2 and not retained and not self._own_accumulation:
            first = window[0]
            if first.leaves and all(b.where == first.where and b.leaves == first.leaves for b in window[1:]):
                self._check_window(window, step)

    def finish(self) -> None:
        for where, evidence in self._early.values():
            self.doctor.report("TD108", where, evidence)
        self._early.clear()

    # -- the checks ------------------------------------------------------------------------------------
    def _check_window(self, window: list[_Backward], step: int) -> None:
        k = len(window)
        shapes = [b.shape for b in window]
        batches = [b.batch for b in window]
        source = ("DataLoader batches" if all(a < b for a, b in zip(batches, batches[1:])) else "micro-batches")
        if all(s.mean and not s.scaled for s in shapes):
            self.doctor.report("TD104", window[0].where, (
                f"step {step}: {k} backward passes at this line over {k} {source}, each from a mean-reduced loss "
                f"({shapes[0].node}) that was not divided by {k}, fed one optimizer step: it applied the sum of "
                f"{k} mean gradients, {k}× the gradient of the mean over the window"))
        tokens = [s.tokens for s in shapes]
        if all(s.mean and s.tokens for s in shapes) and any(s.padded for s in shapes):
            counted = [t for t in tokens if t]
            if max(counted) > TOKEN_RATIO * min(counted):
                self.doctor.report("TD105", window[0].where, (
                    f"step {step}: the {k} micro-batches of one accumulation window counted "
                    f"{', '.join(map(str, counted))}"
                    f" target tokens, each loss a mean over its own tokens: a token of the {min(counted)}-token "
                    f"micro-batch weighed {max(counted) / min(counted):.1f}× one of the {max(counted)}-token one"))

    def _check_leftover(self, step: int) -> None:
        leftover, self._leftover = self._leftover, None
        assert leftover is not None
        count, number, where = leftover
        total = self.doctor.session.backwards_since_step
        self.doctor.report("TD106", where, (
            f"step {step}: the last {count} backward pass{'es' if count > 1 else ''} of pass {number} over the "
            f"training DataLoader (its short last accumulation window) were neither stepped nor reset; their "
            f"gradients were added into the first step of pass {number + 1}, which summed {total} backward passes"))

    def _check_schedulers(self, optimizer: torch.optim.Optimizer, step: int, steps: int) -> None:
        session = self.doctor.session
        schedulers = [s for s in session.constructions.schedulers.alive() if getattr(s, "optimizer", None) is optimizer]
        inner = {id(child) for s in schedulers for child in getattr(s, "_schedulers", ())}
        for scheduler in schedulers:
            last = getattr(scheduler, "last_epoch", None)
            if not isinstance(last, int) or id(scheduler) in inner:
                continue
            name = type(scheduler).__name__
            where = session.constructions.scheduler_stepped_at.get(scheduler) or code_location()
            if steps == 1 and getattr(scheduler, "_step_count", 0) == 2:
                self._early[id(scheduler)] = (where, (
                    f"step {step}: {name}.step() was called before the first optimizer.step() of its optimizer; "
                    f"every step then runs with the learning rate of the schedule's next step (the first value, "
                    f"{name}'s starting learning rate, is skipped)"))
            seen = self._sched_seen.get(id(scheduler))
            self._sched_seen[id(scheduler)] = (last, session.backwards_total, steps)
            if seen is None or seen[2] != steps - 1:
                continue
            advanced, backwards = last - seen[0], session.backwards_total - seen[1]
            early = self._early.pop(id(scheduler), None)
            if backwards >= 2 and advanced == backwards:
                self.doctor.report("TD107", where, (
                    f"step {step}: {name} advanced {advanced} times between two optimizer steps, once per backward "
                    f"pass: the schedule runs {advanced}× faster than the optimizer steps (warmup and decay end "
                    f"{advanced}× too early)"))
            elif early is not None:
                self.doctor.report("TD108", *early)

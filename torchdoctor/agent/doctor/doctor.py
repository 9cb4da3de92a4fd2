"""The doctor: training-loop bugs proven from the call protocol, per-parameter gradient bookkeeping and the
autograd graph, reported as ``Finding`` events (stable id, severity, file:line, evidence, fix), each id once a run.

It hears every ``backward`` (before it runs, with the loss), every ``optimizer.step`` (before it runs), every
``zero_grad`` (which parameters, whether it ran), gradient clipping, ``GradScaler.scale``, optimizer creation and
the start of every pass over a DataLoader, and hands each to the checks that need it:

- ``GradientChecks``: TD101 gradients not reset, TD102 zero_grad between backward and step, TD103 a step every
  micro-batch with resets every k;
- ``WindowChecks``: TD104 unnormalised accumulation, TD105 token-count imbalance, TD106 a partial window leaking into
  the next pass, TD107 a scheduler per micro-batch, TD108 a scheduler before its optimizer;
- ``GraphChecks``: TD109 graphs kept across steps, TD113 a stale graph, TD118 NaN/inf;
- ``ModeChecks``: TD110 evaluation with autograd on, TD111 evaluation in train mode, TD112 training in eval mode;
- ``ParameterChecks``: TD114 gradients outside every optimizer, TD115 an optimizer that never gets gradients,
  TD116 parameters that never get one, TD117 clipping before ``unscale_``;
- ``MemoryChecks``: TD119 tensor memory growing pass after pass.

Steps 1–4 and every 50th are watched in full; other steps cost a few flag tests.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import SCALED_BY_SCALER, first_tensor, node_metadata
from torchdoctor.agent.doctor.gradients import GradientChecks
from torchdoctor.agent.doctor.graphs import GraphChecks
from torchdoctor.agent.doctor.memory import MemoryChecks
from torchdoctor.agent.doctor.modes import ModeChecks
from torchdoctor.agent.doctor.params import ParameterChecks
from torchdoctor.agent.doctor.windows import WindowChecks
from torchdoctor.agent.hooks.calls import optimizer_params
from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.agent.resume.training_state import root_modules
from torchdoctor.checks import CATALOG
from torchdoctor.events import Finding


class Doctor:
    WATCH_FIRST = 4  # steps watched in full from the start, then every WATCH_EVERY-th
    WATCH_EVERY = 50

    def __init__(self, session: Any) -> None:
        self.session = session
        self.reported: set[str] = set()
        self.gradients = GradientChecks(self)
        self.windows = WindowChecks(self)
        self.graphs = GraphChecks(self)
        self.modes = ModeChecks(self)
        self.params = ParameterChecks(self)
        self.memory = MemoryChecks(self)
        # per optimizer (by id): steps it took, and the session's step count right after its last one
        self._patches = ClassPatches()
        self._roots: list[weakref.ref[torch.nn.Module]] | None = None
        self._finished = False

    def watched(self, step: int) -> bool:
        return step <= self.WATCH_FIRST or step % self.WATCH_EVERY == 0

    def roots(self) -> list[torch.nn.Module]:
        """The script's models: those its forwards were seen on, else (once) a scan for root modules."""
        seen = self.session.root_modules
        if seen:
            return seen
        if self._roots is None:
            self._roots = [weakref.ref(m) for m in root_modules()]
        return [m for ref in self._roots if (m := ref()) is not None]

    # -- lifetime --------------------------------------------------------------------------------------------
    def install(self) -> None:
        session = self.session
        hooks = session.zero_grad_hooks
        hooks.before.append(self.gradients.before_reset)
        hooks.listeners.append(self.zero_grad)
        session.clip_hooks.listeners.append(self.params.clipping)
        session.recovery.loaders.pass_listeners.append(self.pass_opened)

        def mark_scaled(original: Any) -> Any:
            @functools.wraps(original)
            def scale(scaler: Any, outputs: Any) -> Any:
                scaled = original(scaler, outputs)
                if isinstance(scaled, torch.Tensor) and scaled.grad_fn is not None and scaler.is_enabled():
                    node_metadata(scaled.grad_fn)[SCALED_BY_SCALER] = True
                return scaled
            return scale

        self._patches.wrap(torch.amp.GradScaler, "scale", mark_scaled)
        self._patches.wrap(torch.nn.Module, "train", self.modes.wrap_train)

    def remove(self) -> None:
        session = self.session
        hooks = session.zero_grad_hooks
        for registry, fn in ((hooks.before, self.gradients.before_reset), (hooks.listeners, self.zero_grad),
                             (session.clip_hooks.listeners, self.params.clipping),
                             (session.recovery.loaders.pass_listeners, self.pass_opened)):
            if fn in registry:
                registry.remove(fn)
        self._patches.restore()
        self.modes.remove()

    def finish(self) -> None:
        """The end of the run: the checks that need the whole run say what they saw."""
        if self._finished:
            return
        self._finished = True
        self.gradients.finish()
        self.windows.finish()
        self.graphs.finish()
        self.modes.finish()
        self.params.finish()

    # -- what the session tells ------------------------------------------------------------------------------
    def zero_grad(self, params: Any, called: bool) -> None:
        self.gradients.zero_grad(params, called)
        self.windows.zero_grad(params, called)

    def before_backward(self, tensors: Any, retain_graph: bool) -> None:
        step = self.session.step + 1
        # with several optimizers each backward pass feeds as many steps: watched if one of them is
        optimizers = max(1, len(self.session.constructions.optimizers.stepped()))
        watched = any(self.watched(step + i) for i in range(optimizers))
        loss = first_tensor(tensors)
        self.gradients.before_backward()
        self.modes.before_backward()
        self.params.before_backward(loss)
        self.windows.before_backward(loss, retain_graph, watched)
        self.graphs.before_backward(loss, watched, retain_graph)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        step = self.session.step + 1
        watched = self.watched(step)
        listed: list[list[torch.Tensor]] = []

        def params() -> list[torch.Tensor]:  # listed once, and only by a check that needs them this step
            if not listed:
                listed.append(optimizer_params(optimizer))
            return listed[0]

        self.gradients.before_step(step, params, watched)
        notes = self.session.constructions.optimizers.record(optimizer).notes
        notes["backwards_at_step"] = self.session.backwards_total
        self.windows.before_step(optimizer, step, watched)
        self.graphs.before_step(optimizer, step, params, watched)
        self.modes.before_step(optimizer, step, watched)
        self.params.before_step(optimizer, step)

    def pass_opened(self, record: Any, training: bool) -> None:
        if not training:
            self.gradients.evaluation_started()
        self.windows.pass_opened(record, training)
        self.modes.pass_opened(record, training)
        self.memory.pass_opened(record, training)
        self.params.pass_opened(training)

    # -- findings --------------------------------------------------------------------------------------------
    def report(self, check_id: str, where: str | None, evidence: str) -> None:
        if check_id in self.reported:
            return
        self.reported.add(check_id)
        check = CATALOG[check_id]
        self.session.emit(Finding(id=check.id, severity=check.severity, title=check.title, location=where,
                                  evidence=evidence, fix=check.fix))

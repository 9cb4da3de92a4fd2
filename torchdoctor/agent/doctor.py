"""The doctor: training-loop bugs proven from the call protocol and per-parameter gradient bookkeeping.

It sees every ``backward`` (before it runs), every ``optimizer.step`` (before it runs), every ``zero_grad`` (which
parameters it covered, and whether it ran) and follows each parameter's gradient between them:

- TD101, gradients not reset: at a watched step, each gradient the step uses is remembered (the tensor object).
  When the next backward pass starts, a remembered gradient that is still the same tensor, not zero and not reset
  since, is stale; if an optimizer holding that parameter then steps with it still un-reset, the step applied an
  old gradient again. Intentional accumulation never gets there: its gradients are used by one step and reset.
- TD102, zero_grad() between backward() and step(): a zero_grad after the last backward pass destroyed non-zero
  gradients of parameters that an optimizer then steps, and all that optimizer's gradients are None or zero.

Each finding is emitted once per run, with the user's file:line and what was observed.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from torchdoctor.agent.call_hooks import optimizer_params
from torchdoctor.agent.locations import user_location
from torchdoctor.agent.training_state import root_modules
from torchdoctor.doctor_catalog import CATALOG
from torchdoctor.events import Finding

WATCH_FIRST = 4  # steps watched in full from the start, then every WATCH_EVERY-th
WATCH_EVERY = 50
MAX_NAMES = 3


def _names(params: list[torch.Tensor]) -> list[str]:
    wanted = {id(p) for p in params}
    found: dict[int, str] = {}
    for root in root_modules():
        for name, p in root.named_parameters():
            if id(p) in wanted and id(p) not in found:
                found[id(p)] = name
    return [found.get(id(p), f"<tensor {tuple(p.shape)}>") for p in params]


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f", … ({len(names)} in all)" if len(names) > MAX_NAMES else "")


class Doctor:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.reported: set[str] = set()
        # parameter id -> (the parameter, the gradient tensor a step used, that step)
        self._used: dict[int, tuple[weakref.ref[torch.Tensor], weakref.ref[torch.Tensor], int]] = {}
        self._stale: dict[int, tuple[weakref.ref[torch.Tensor], int, str | None]] = {}  # id -> (param, step, where)
        self._destroyed: dict[int, str | None] = {}  # non-zero gradients a zero_grad after backward reset
        self._norms: list[tuple[int, float]] = []

    def install(self) -> None:
        hooks = self.session.zero_grad_hooks
        hooks.before.append(self.before_reset)
        hooks.listeners.append(self.zero_grad)

    def remove(self) -> None:
        hooks = self.session.zero_grad_hooks
        for registry, fn in ((hooks.before, self.before_reset), (hooks.listeners, self.zero_grad)):
            if fn in registry:
                registry.remove(fn)

    # -- what the session tells ------------------------------------------------------------------------
    def zero_grad(self, params: Any, called: bool) -> None:
        """After a zero_grad call: the parameters it covered are reset (if the call ran)."""
        if not called or not (self._used or self._stale):
            return
        for p in params():
            self._used.pop(id(p), None)
            self._stale.pop(id(p), None)

    def before_reset(self, params: Any) -> None:
        """Called before a zero_grad runs: note the non-zero gradients it is about to destroy after a backward."""
        if self.session.backwards_since_step <= 0:
            return
        where = user_location()
        for p in params():
            if p.grad is not None and bool(p.grad.any()):
                self._destroyed[id(p)] = where

    def before_backward(self) -> None:
        self._destroyed.clear()
        if not self._used:
            return
        used, self._used = self._used, {}
        where = None
        for key, (param_ref, grad_ref, step) in used.items():
            param = param_ref()
            if param is None or param.grad is None or param.grad is not grad_ref():
                continue
            if bool(param.grad.any()):
                if where is None:
                    where = user_location()
                self._stale[key] = (param_ref, step, where)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        step = self.session.step + 1
        params = optimizer_params(optimizer)
        watched = step <= WATCH_FIRST or step % WATCH_EVERY == 0
        if watched and step <= WATCH_FIRST:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                self._norms.append((step, float(torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])))))
        if self._destroyed:
            self._check_reset_before_step(step, params)
        if self._stale:
            self._check_stale(step, params)
        if watched:
            for p in params:
                if p.grad is not None:
                    self._used[id(p)] = (weakref.ref(p), weakref.ref(p.grad), step)

    # -- the checks ----------------------------------------------------------------------------------
    def _check_stale(self, step: int, params: list[torch.Tensor]) -> None:
        stale = [p for p in params if id(p) in self._stale and p.grad is not None]
        if not stale:
            return
        _, used_at, where = self._stale[id(stale[0])]
        for p in stale:
            self._stale.pop(id(p), None)
        names = _names(stale)
        norms = " → ".join(f"{n:.3g}" for _, n in self._norms)
        evidence = (f"step {step}: the gradients of {len(stale)} of {len(params)} parameter tensors ({_listed(names)}) "
                    f"that step {used_at} used were not reset before the next backward pass, and step {step} "
                    f"applied them again")
        if len(self._norms) > 1:
            evidence += f"; gradient norm at steps {self._norms[0][0]}–{self._norms[-1][0]}: {norms}"
        if len(stale) < len(params):
            evidence += " (only some parameters were reset: does a second module or optimizer miss its zero_grad?)"
        self._report("TD101", where, evidence)

    def _check_reset_before_step(self, step: int, params: list[torch.Tensor]) -> None:
        hit = [p for p in params if id(p) in self._destroyed]
        if not hit or any(p.grad is not None and bool(p.grad.any()) for p in params):
            return
        where = self._destroyed[id(hit[0])]
        self._destroyed.clear()
        self._report("TD102", where, f"step {step}: zero_grad() at {where or '?'} reset the gradients of "
                                     f"{len(hit)} parameter tensors ({_listed(_names(hit))}) after the backward pass, "
                                     f"and optimizer.step() found every gradient None or zero")

    def _report(self, check_id: str, where: str | None, evidence: str) -> None:
        if check_id in self.reported:
            return
        self.reported.add(check_id)
        check = CATALOG[check_id]
        self.session.emit(Finding(id=check.id, severity=check.severity, title=check.title, location=where,
                                  evidence=evidence, fix=check.fix))

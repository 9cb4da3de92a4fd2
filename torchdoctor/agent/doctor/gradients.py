"""The gradient bookkeeping checks: TD101 (gradients not reset between steps), TD102 (zero_grad between backward and
step), TD103 (a step every micro-batch while gradients are reset only every k micro-batches).

- A watched step remembers each gradient it used (the tensor object). When the next backward pass starts, a
  remembered gradient that is still the same tensor, not zero and not reset since, is stale; if an optimizer
  holding that parameter then steps with it still un-reset, the step applied an old gradient again. Whether that is
  TD101 or TD103 is known later: a reset of those parameters within a few steps means resets do happen, only less
  often than steps (TD103); none means gradients are not reset (TD101). A reset counts once the next backward pass
  comes: one followed by an evaluation first (Lightning releases the gradients before its validation loop, whatever
  the script does) is evaluation's housekeeping, not the script's resets. Intentional accumulation never gets here:
  its gradients are used by one step and reset.
- A zero_grad after the last backward pass that destroyed non-zero gradients of parameters an optimizer then steps,
  with all that optimizer's gradients None or zero, is TD102. "After the last backward pass" is per optimizer: with
  two optimizers, the second one's zero_grad after the first one's step still comes between its backward and step.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import listed, param_names
from torchdoctor.agent.doctor.locations import code_location

RESET_WAIT = 8  # steps a stale gradient may wait for a reset before it counts as never reset (TD101)


@dataclass
class _Stale:
    step: int  # the step that applied old gradients again
    used_at: int  # the step that had used them
    where: str | None
    evidence: str
    params: list[weakref.ref[torch.Tensor]]


class GradientChecks:
    def __init__(self, doctor: Any) -> None:
        self.doctor = doctor
        # parameter id -> (the parameter, the gradient tensor a step used, that step)
        self._used: dict[int, tuple[weakref.ref[torch.Tensor], weakref.ref[torch.Tensor], int]] = {}
        self._stale: dict[int, tuple[weakref.ref[torch.Tensor], int, str | None]] = {}  # id -> (param, step, where)
        self._destroyed: dict[int, str | None] = {}  # non-zero gradients a zero_grad after backward reset
        self._norms: list[tuple[int, float]] = []
        self._applied_again: _Stale | None = None  # waiting to learn whether resets happen at all
        self._reset_seen: str | None = None  # ... a reset came: TD103's evidence, said at the next backward pass
        self._last_reset = 0  # the session's step count at the last zero_grad that ran

    def zero_grad(self, params: Any, called: bool) -> None:
        if not called:
            return
        session = self.doctor.session
        pending = self._applied_again
        if pending is not None:
            ids = {id(p) for p in params()}
            if any((p := ref()) is not None and id(p) in ids for ref in pending.params):
                every = session.step - self._last_reset
                self._reset_seen = pending.evidence + (
                    f"; gradients are reset only every {every} steps (zero_grad at steps {self._last_reset} and "
                    f"{session.step}), while the optimizer steps after every backward pass")
        self._last_reset = session.step
        if not (self._used or self._stale):
            return
        for p in params():
            self._used.pop(id(p), None)
            self._stale.pop(id(p), None)

    def before_reset(self, params: Any) -> None:
        session = self.doctor.session
        if session.backwards_since_step <= 0 and not self._unstepped_backward(params):
            return
        where = code_location()
        for p in params():
            if p.grad is not None and bool(p.grad.any()):
                self._destroyed[id(p)] = where

    def _unstepped_backward(self, params: Any) -> bool:
        """Whether a backward pass came since the last step of an optimizer holding the first of ``params`` (another
        optimizer stepped since: a step ends the session's step, not this optimizer's window)."""
        session = self.doctor.session
        optimizers = session.constructions.optimizers
        stepped = optimizers.stepped()
        if len(stepped) < 2 or not session.backwards_total:
            return False
        listed = params()
        if not listed:
            return False
        first = id(listed[0])
        for optimizer in stepped:
            notes = optimizers.record(optimizer).notes
            groups, held = notes.get("param_ids", (0, frozenset()))
            if groups != len(optimizer.param_groups):  # listed again after add_param_group
                held = frozenset(id(p) for group in optimizer.param_groups for p in group["params"])
                notes["param_ids"] = (len(optimizer.param_groups), held)
            if first in held and notes.get("backwards_at_step", 0) < session.backwards_total:
                return True
        return False

    def evaluation_started(self) -> None:
        """An evaluation begins: a reset just before it was not one of the training loop's (Lightning resets
        gradients before each validation loop; a manual loop that never resets them read as TD103, "reset every
        k steps", before this). The price: a loop that resets every k steps *and* evaluates right after each of
        those resets has its resets forgotten, and reads as TD101 (not reset) rather than TD103; still an error
        at the same line, with the wrong "k"."""
        self._reset_seen = None

    def before_backward(self) -> None:
        self._destroyed.clear()
        if self._reset_seen is not None:
            self._report_resets()
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
                    where = code_location()
                self._stale[key] = (param_ref, step, where)

    def before_step(self, step: int, params_of: Any, watched: bool) -> None:
        if not (watched or self._destroyed or self._stale or self._applied_again):
            return
        params = params_of()
        if watched and step <= self.doctor.WATCH_FIRST:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                self._norms.append((step, float(torch.nn.utils.get_total_norm(grads))))
        if self._destroyed:
            self._check_reset_before_step(step, params)
        if self._stale:
            self._check_stale(step, params)
        pending = self._applied_again
        if pending is not None and step - pending.step >= RESET_WAIT:
            self.finish()
        if watched:
            for p in params:
                if p.grad is not None:
                    self._used[id(p)] = (weakref.ref(p), weakref.ref(p.grad), step)

    def finish(self) -> None:
        """No reset came after gradients were applied again: they are not reset at all (TD101)."""
        if self._reset_seen is not None:
            self._report_resets()
        pending, self._applied_again = self._applied_again, None
        if pending is not None:
            self.doctor.report("TD101", pending.where, pending.evidence)

    def _report_resets(self) -> None:
        pending, evidence = self._applied_again, self._reset_seen
        self._applied_again = self._reset_seen = None
        if pending is not None and evidence is not None:
            self.doctor.report("TD103", pending.where, evidence)

    def _check_stale(self, step: int, params: list[torch.Tensor]) -> None:
        stale = [p for p in params if id(p) in self._stale and p.grad is not None]
        if not stale:
            return
        _, used_at, where = self._stale[id(stale[0])]
        for p in stale:
            self._stale.pop(id(p), None)
        if self._applied_again is not None:
            return
        names = param_names(stale)
        norms = " → ".join(f"{n:.3g}" for _, n in self._norms)
        evidence = (f"step {step}: the gradients of {len(stale)} of {len(params)} parameter tensors ({listed(names)}) "
                    f"that step {used_at} used were not reset before the next backward pass, and step {step} "
                    f"applied them again")
        if len(self._norms) > 1:
            evidence += f"; gradient norm at steps {self._norms[0][0]}–{self._norms[-1][0]}: {norms}"
        if len(stale) < len(params):
            evidence += " (only some parameters were reset: does a second module or optimizer miss its zero_grad?)"
        self._applied_again = _Stale(step, used_at, where, evidence, [weakref.ref(p) for p in stale])

    def _check_reset_before_step(self, step: int, params: list[torch.Tensor]) -> None:
        hit = [p for p in params if id(p) in self._destroyed]
        if not hit or any(p.grad is not None and bool(p.grad.any()) for p in params):
            return
        where = self._destroyed[id(hit[0])]
        self._destroyed.clear()
        self.doctor.report("TD102", where, f"step {step}: zero_grad() at {where or '?'} reset the gradients of "
                                           f"{len(hit)} parameter tensors ({listed(param_names(hit))}) after the "
                                           f"backward pass, and optimizer.step() found every gradient None or zero")

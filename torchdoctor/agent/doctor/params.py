"""Which parameters get gradients and which optimizers hold them; gradients clipped while still scaled.

- TD114: trainable parameters of the trained models, or parameters a watched backward pass reached (a module made
  later, or unfrozen: its parameters are leaves of the loss's graph), have gradients but are in no optimizer; read at
  the second step and again at every watched step and training pass start, so a state that changes late (a
  backbone unfrozen after an epoch, a head added after the warm-up) is seen. The finding points at the line that
  made their module.
- TD115: an optimizer none of whose parameters ever got a gradient: at the second step when the trained
  parameters outside every optimizer have the same shapes (it holds another copy of the model), otherwise at the
  end of a run of at least three steps (with the backward pass that started from a leaf tensor, if one did).
- TD116: at the end, some parameters of an optimizer never got a gradient in the whole run while others did (a
  bypassed block). A module used only on some steps got one on those steps and stays silent.
- TD117: ``clip_grad_norm_``/``clip_grad_value_`` on the parameters of an optimizer whose enabled GradScaler has
  not unscaled its gradients since the last backward pass.
Every step costs a look at the parameters that never had a gradient yet (none, once training is under way).
"""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import listed, param_names
from torchdoctor.agent.doctor.locations import code_location
from torchdoctor.agent.hooks.calls import optimizer_params
from torchdoctor.agent.hooks.constructions import OptimizerRecord

MIN_STEPS = 3  # steps an optimizer must take before "never got a gradient" is said


class _Tracked:
    def __init__(self, optimizer: torch.optim.Optimizer, record: OptimizerRecord) -> None:
        # the trainable parameters that have not had a gradient at any step yet
        self.never = [weakref.ref(p) for p in optimizer_params(optimizer) if p.requires_grad]
        self.size = len(self.never)
        self.where = record.created_at
        self.name = type(optimizer).__name__
        self.record = record  # its steps (the record, not the optimizer: a finding may outlive it)


class ParameterChecks:
    def __init__(self, doctor: Any) -> None:
        self.doctor = doctor
        self._tracked: list[_Tracked] = []  # every optimizer that stepped, in the order of their first steps
        self._leaf_backward: str | None = None
        self._checked_outside = False
        self._leaves: dict[int, torch.Tensor] = {}  # parameters this step's watched backward passes reached
        self._recheck = False

    def before_backward(self, loss: torch.Tensor | None) -> None:
        if loss is not None and loss.grad_fn is None and loss.requires_grad and self._leaf_backward is None:
            self._leaf_backward = code_location()

    def before_step(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        record = self.doctor.session.constructions.optimizers.record(optimizer)
        tracked = record.notes.get("parameters")
        if tracked is None:
            tracked = record.notes["parameters"] = _Tracked(optimizer, record)
            self._tracked.append(tracked)
        if tracked.never:
            tracked.never = [ref for ref in tracked.never if (p := ref()) is not None and p.grad is None]
        due = not self._checked_outside or self._recheck or self.doctor.watched(step) or len(self._leaves) > 0
        if step >= 2 and due and not ({"TD114", "TD115"} & self.doctor.reported):
            leaves, self._leaves = self._leaves, {}
            self._checked_outside = True
            self._recheck = False
            self._check_outside(step, leaves)

    def pass_opened(self, training: bool) -> None:
        """A training pass starts (a new epoch: where a backbone is unfrozen, a head added): read again."""
        if training:
            self._recheck = True

    def saw_leaves(self, leaves: list[torch.Tensor]) -> None:
        """The parameters a watched backward pass accumulates gradients into."""
        if "TD114" not in self.doctor.reported:
            self._leaves.update((id(p), p) for p in leaves)

    def clipping(self, params: list[torch.Tensor], called: bool) -> None:
        doctor = self.doctor
        session = doctor.session
        if not called or "TD117" in doctor.reported or not session.backwards_since_step:
            return
        if not doctor.watched(session.step + 1):
            return
        scalers = [s for s in session.constructions.scalers.alive()
                   if s.is_enabled() and getattr(s, "_scale", None) is not None]
        if not scalers:
            return
        from torch.amp.grad_scaler import OptState

        ids = {id(p) for p in params}
        for optimizer in session.constructions.optimizers.alive():
            if not any(id(p) in ids for p in optimizer_params(optimizer)):
                continue
            for scaler in scalers:
                state = scaler._per_optimizer_states.get(id(optimizer))
                if state is None or state["stage"] is OptState.READY:
                    doctor.report("TD117", code_location(), (
                        f"step {session.step + 1}: gradients were clipped while still multiplied by the GradScaler's "
                        f"scale ({float(scaler.get_scale()):g}): scaler.unscale_(optimizer) had not run since the "
                        f"backward pass, so the clipping threshold was applied to scaled gradients"))
                    return

    def finish(self) -> None:
        if "TD102" in self.doctor.reported:
            return  # the gradients were there and a zero_grad before the step removed them: that is the finding
        for tracked in self._tracked:
            never = [p for ref in tracked.never if (p := ref()) is not None and p.requires_grad and p.grad is None]
            steps = tracked.record.steps
            if steps < MIN_STEPS or not never:
                continue
            if len(never) == tracked.size:
                if self._leaf_backward is not None:
                    evidence = (f"none of the {tracked.size} parameter tensors of {tracked.name} got a gradient in "
                                f"{steps} steps: backward() at {self._leaf_backward} started from a leaf "
                                f"tensor (the loss was made anew, e.g. torch.tensor(loss.item(), requires_grad=True),"
                                f" which cuts it from the model's graph)")
                    self.doctor.report("TD115", self._leaf_backward, evidence)
                else:
                    self.doctor.report("TD115", tracked.where, (
                        f"none of the {tracked.size} parameter tensors of {tracked.name} got a gradient in "
                        f"{steps} steps: the optimizer holds parameters the loss does not depend on"))
            elif "TD115" not in self.doctor.reported:
                self.doctor.report("TD116", tracked.where, (
                    f"{len(never)} of {tracked.size} parameter tensors of {tracked.name} never got a gradient in "
                    f"{steps} steps ({listed(param_names(never))}): their module is not on the path from "
                    f"the loss (a bypassed block, or an output that is not used)"))

    def _check_outside(self, step: int, leaves: dict[int, torch.Tensor]) -> None:
        session = self.doctor.session
        optimizers = session.constructions.optimizers.alive()
        if not optimizers:
            return  # manual updates without an optimizer: nothing to compare against
        held = {id(p) for opt in optimizers for p in optimizer_params(opt)}
        roots = self.doctor.roots()
        outside: dict[int, torch.Tensor] = {}
        for root in roots:
            for p in root.parameters():
                if p.requires_grad and p.grad is not None and id(p) not in held:
                    outside[id(p)] = p
        for key, p in leaves.items():
            if p.requires_grad and p.grad is not None and key not in held:
                outside[key] = p
        if not outside:
            return
        shapes = Counter(tuple(p.shape) for p in outside.values())
        for optimizer in optimizers:
            tracked = self.doctor.session.constructions.optimizers.record(optimizer).notes.get("parameters")
            if tracked is None or len(tracked.never) != tracked.size or not tracked.size:
                continue
            wanted = Counter(tuple(p.shape) for ref in tracked.never if (p := ref()) is not None)
            if not wanted - shapes:
                self.doctor.report("TD115", tracked.where, (
                    f"step {step}: none of the {tracked.size} parameter tensors of {tracked.name} has a gradient, "
                    f"while {len(outside)} trained parameter tensors of the same shapes "
                    f"({listed(param_names(list(outside.values()), roots))}) are in no optimizer: the optimizer "
                    f"holds another copy of the model (made before the model was re-created or copied)"))
                return
        names = param_names(list(outside.values()), roots + self._owners(outside))
        where = (self._made_at(outside) or next((t.where for t in self._tracked if t.where), None)
                 or code_location())
        self.doctor.report("TD114", where, (
            f"step {step}: {len(outside)} trainable parameter tensors have gradients but are in no optimizer "
            f"({listed(names)}): they are never updated"))

    def _owners(self, params: dict[int, torch.Tensor]) -> list[torch.nn.Module]:
        """The modules made in the script that hold any of ``params`` directly."""
        made = self.doctor.session.constructions.module_made_at
        return [m for m in list(made.keys()) if any(id(p) in params for p in m._parameters.values() if p is not None)]

    def _made_at(self, params: dict[int, torch.Tensor]) -> str | None:
        """The user's line that made the module holding the first of ``params``."""
        made = self.doctor.session.constructions.module_made_at
        first = next(iter(params))
        for module in list(made.keys()):
            if any(p is not None and id(p) == first for p in module._parameters.values()):
                return made.get(module)
        return None

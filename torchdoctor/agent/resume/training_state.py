"""The training state of an unmodified script, found without its help, saved and put back.

The optimizers, LR schedulers and GradScalers come from the constructor registry (creation order). The models
are found by a scan of live objects for root modules (modules that are nobody's child) and named so that the
same module gets the same name in a relaunch of the same script:

- a module holding parameters of an optimizer is ``opt{i}.{k}`` (optimizer ``i``, its ``k``-th parameter is the
  module's first one there), which tells a generator from its discriminator and a model from a loss module with
  weights;
- any other module with state (an EMA or teacher copy, a metric, a frozen part) is named by its structure (class,
  state keys, shapes, dtypes); two such modules of the same structure cannot be told apart and make the state
  ambiguous, which callers must treat as "cannot resume".

Parameters an optimizer holds outside any module are saved by position. Gradients are not saved: a resume point
is taken where no backward pass has run since the last optimizer step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchdoctor.agent.memory.live import live_instances


def root_modules() -> list[nn.Module]:
    """Every live module that is no other live module's child (one scan of the garbage collector's objects)."""
    # by exact type: a weakref proxy (Lightning holds its module through one) is not a module
    modules: list[nn.Module] = live_instances(nn.Module)
    children = {id(child) for module in modules for child in module.children()}
    return [m for m in modules if id(m) not in children]


def _structure(module: nn.Module, state: dict[str, Any]) -> str:
    text = type(module).__qualname__ + ";" + ";".join(
        f"{k}:{tuple(v.shape)}:{v.dtype}" if isinstance(v, torch.Tensor) else k for k, v in state.items())
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class TrainingObjects:
    modules: dict[str, nn.Module] = field(default_factory=dict)
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    schedulers: list[Any] = field(default_factory=list)
    scalers: list[Any] = field(default_factory=list)
    loose: dict[str, torch.Tensor] = field(default_factory=dict)  # "i.k": an optimizer's parameter in no module
    ambiguous: str | None = None  # why the modules cannot be named safely

    @classmethod
    def find(cls, constructions: Any, roots: list[nn.Module] | None = None) -> TrainingObjects:
        """The script's training objects; ``roots`` (the root modules) are found by a scan when not given."""
        found = cls(optimizers=constructions.optimizers.alive(), schedulers=constructions.schedulers.alive(),
                    scalers=constructions.scalers.alive())
        where: dict[int, tuple[int, int]] = {}
        for i, optimizer in enumerate(found.optimizers):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            for k, p in enumerate(params):
                where.setdefault(id(p), (i, k))
        owned: set[int] = set()
        duplicates: list[str] = []
        for module in root_modules() if roots is None else roots:
            positions = [where[id(p)] for p in module.parameters() if id(p) in where]
            if positions:
                i, k = min(positions)
                found.modules[f"opt{i}.{k}"] = module
                owned.update(id(p) for p in module.parameters())
                continue
            state = module.state_dict()
            if not state:
                continue
            key = f"free.{type(module).__name__}.{_structure(module, state)}"
            if key in found.modules:
                duplicates.append(type(module).__name__)
            found.modules[key] = module
        for i, optimizer in enumerate(found.optimizers):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            for k, p in enumerate(params):
                if id(p) not in owned:
                    found.loose[f"{i}.{k}"] = p
        if duplicates:
            found.ambiguous = (f"two {duplicates[0]} modules of the same shape outside any optimizer (EMA or teacher "
                               f"copies?): torchdoctor cannot tell which is which in a relaunch")
        return found

    @property
    def principal(self) -> str | None:
        """The module the checkpoint's ``model_state_dict`` holds: the one owning optimizer 0's first parameter."""
        owners = sorted(k for k in self.modules if k.startswith("opt"))
        return owners[0] if owners else None

    def describe(self) -> dict[str, Any]:
        """What a relaunch must find again for the state to fit (names, counts, shapes)."""
        return {
            "modules": {k: {n: list(v.shape) for n, v in m.state_dict().items() if isinstance(v, torch.Tensor)}
                        for k, m in self.modules.items()},
            "optimizers": [type(o).__name__ for o in self.optimizers],
            "schedulers": [type(s).__name__ for s in self.schedulers],
            "scalers": len(self.scalers),
            "loose": {k: list(p.shape) for k, p in self.loose.items()},
        }

    def state(self) -> dict[str, Any]:
        """Everything but the principal model's and the first optimizer's, scheduler's and scaler's state (those go
        under the usual checkpoint keys)."""
        principal = self.principal
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items() if k != principal},
            "optimizers": [o.state_dict() for o in self.optimizers[1:]],
            "schedulers": [s.state_dict() for s in self.schedulers[1:]],
            "scalers": [s.state_dict() for s in self.scalers[1:]],
            "loose": {k: p.detach().clone() for k, p in self.loose.items()},
            "shape": self.describe(),
        }

    def mismatch(self, saved: dict[str, Any]) -> str | None:
        """Why ``saved`` (a checkpoint's ``describe()``) does not fit these objects, or None."""
        now = self.describe()
        if set(now["modules"]) != set(saved["modules"]):
            return (f"the modules differ (checkpoint: {sorted(saved['modules'])}, now: {sorted(now['modules'])})")
        for key, shapes in saved["modules"].items():
            if now["modules"][key] != shapes:
                return f"module {key} does not have the checkpoint's parameter names or shapes"
        for name in ("optimizers", "schedulers", "scalers", "loose"):
            if now[name] != saved[name]:
                return f"the {name} differ (checkpoint: {saved[name]}, now: {now[name]})"
        return None

    def load(self, data: dict[str, Any]) -> None:
        """Put a checkpoint's state back into the objects (call ``mismatch`` first)."""
        run = data["extra"]["run_state"]
        principal = self.principal
        for key, module in self.modules.items():
            module.load_state_dict(data["model_state_dict"] if key == principal else run["modules"][key])
        for i, optimizer in enumerate(self.optimizers):
            optimizer.load_state_dict(data["optimizer_state_dict"] if i == 0 else run["optimizers"][i - 1])
        for i, scheduler in enumerate(self.schedulers):
            scheduler.load_state_dict(data["scheduler_state_dict"] if i == 0 else run["schedulers"][i - 1])
        for i, scaler in enumerate(self.scalers):
            scaler.load_state_dict(data["scaler_state_dict"] if i == 0 else run["scalers"][i - 1])
        with torch.no_grad():
            for key, param in self.loose.items():
                param.copy_(run["loose"][key])

"""One wrapper per session around ``Optimizer.zero_grad`` and ``Module.zero_grad``, shared by everything that
needs them: gates (gradient accumulation lets a reset through only at a batch boundary) and listeners (the doctor
notes which parameters were reset). Two separate wrappers on one method would make the order of removal matter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.agent.patching import ClassPatches

# listener(params, called): the parameters a zero_grad call covers, and whether the gates let it through
Listener = Callable[[list[torch.Tensor], bool], None]


def _optimizer_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


class ZeroGradHooks:
    def __init__(self) -> None:
        self.gates: list[Callable[[], bool]] = []
        self.before: list[Callable[[list[torch.Tensor]], None]] = []  # before a call that the gates let through
        self.listeners: list[Listener] = []
        self._patches = ClassPatches()

    def install(self) -> None:
        hooks = self

        def wrap(params_of: Callable[[Any], list[torch.Tensor]]) -> Callable[[Any], Any]:
            def make(original: Any) -> Any:
                @functools.wraps(original)
                def zero_grad(obj: Any, *args: Any, **kwargs: Any) -> Any:
                    allowed = all(gate() for gate in hooks.gates)
                    params = params_of(obj) if hooks.listeners or hooks.before else []
                    if allowed:
                        for before in hooks.before:
                            before(params)
                    result = original(obj, *args, **kwargs) if allowed else None
                    for listener in hooks.listeners:
                        listener(params, allowed)
                    return result
                return zero_grad
            return make

        self._patches.wrap(torch.optim.Optimizer, "zero_grad", wrap(_optimizer_params))
        self._patches.wrap(torch.nn.Module, "zero_grad", wrap(lambda module: list(module.parameters())))

    def remove(self) -> None:
        self._patches.restore()

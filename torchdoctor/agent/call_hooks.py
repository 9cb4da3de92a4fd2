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

# listener(params, called): the parameters a zero_grad call covers (a function that lists them, so a listener
# with nothing to check pays nothing on this once-per-step path), and whether the gates let the call through
Params = Callable[[], list[torch.Tensor]]
Listener = Callable[[Params, bool], None]


def optimizer_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


class ZeroGradHooks:
    def __init__(self) -> None:
        self.gates: list[Callable[[], bool]] = []
        self.before: list[Callable[[Params], None]] = []  # before a call that the gates let through
        self.listeners: list[Listener] = []
        self._patches = ClassPatches()

    def install(self) -> None:
        hooks = self

        def wrap(params_of: Callable[[Any], list[torch.Tensor]]) -> Callable[[Any], Any]:
            def make(original: Any) -> Any:
                @functools.wraps(original)
                def zero_grad(obj: Any, *args: Any, **kwargs: Any) -> Any:
                    allowed = all(gate() for gate in hooks.gates)
                    listed: list[list[torch.Tensor]] = []

                    def params() -> list[torch.Tensor]:
                        if not listed:
                            listed.append(params_of(obj))
                        return listed[0]

                    if allowed:
                        for before in hooks.before:
                            before(params)
                    result = original(obj, *args, **kwargs) if allowed else None
                    for listener in hooks.listeners:
                        listener(params, allowed)
                    return result
                return zero_grad
            return make

        self._patches.wrap(torch.optim.Optimizer, "zero_grad", wrap(optimizer_params))
        self._patches.wrap(torch.nn.Module, "zero_grad", wrap(lambda module: list(module.parameters())))

    def remove(self) -> None:
        self._patches.restore()

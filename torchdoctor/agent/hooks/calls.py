"""One wrapper per session around the calls several parts of the agent need to gate or hear, shared by all of them:
``Optimizer.zero_grad`` and ``Module.zero_grad`` (gradient accumulation lets a reset through only at a batch
boundary; the doctor notes which parameters were reset) and the gradient-clipping functions (accumulation clips
only at a boundary; the doctor checks the gradients are unscaled). Two separate wrappers on one function would
make the order of removal matter, and the second would be skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.agent.hooks.patching import ClassPatches

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


# clip listener(parameters, called): the parameters argument as given (a tensor or an iterable, listed once)
ClipListener = Callable[[list[torch.Tensor], bool], None]


class ClipHooks:
    """``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_`` (both module paths): gates and listeners.

    A gated ``clip_grad_norm_`` returns ``norm_when_gated(parameters)`` instead (the caller may log the norm)."""

    def __init__(self) -> None:
        self.gates: list[Callable[[], bool]] = []
        self.listeners: list[ClipListener] = []
        self.norm_when_gated: Callable[[list[torch.Tensor]], Any] | None = None
        self._patches = ClassPatches()

    def install(self) -> None:
        hooks = self

        def wrap(is_norm: bool) -> Callable[[Any], Any]:
            def make(original: Any) -> Any:
                @functools.wraps(original)
                def clip(parameters: Any, *args: Any, **kwargs: Any) -> Any:
                    if hooks.gates or hooks.listeners:
                        parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
                    allowed = all(gate() for gate in hooks.gates)
                    for listener in hooks.listeners:
                        listener(parameters, allowed)
                    if allowed:
                        return original(parameters, *args, **kwargs)
                    if is_norm and hooks.norm_when_gated is not None:
                        return hooks.norm_when_gated(parameters)
                    return None
                return clip
            return make

        for module in (torch.nn.utils, torch.nn.utils.clip_grad):
            self._patches.wrap(module, "clip_grad_norm_", wrap(True))
            self._patches.wrap(module, "clip_grad_value_", wrap(False))

    def remove(self) -> None:
        self._patches.restore()

"""Which phase the training loop is in: forward, backward, optimizer, evaluation or other.

Forward and evaluation come from the outermost module call, seen through the process's one global forward hook
pair (``hooks/forward.py``; evaluation = a forward in eval mode or under ``no_grad``); backward from layers over
``torch.autograd.backward`` and ``torch.autograd.grad``; optimizer from the global optimizer step hooks (installed
by the session). Global module hooks disable the module fast path, so the session subscribes only while it measures.
While they are on, ``module_stack`` holds the names of the modules running (``layers.0.fc1 (Linear)``),
innermost last: the accountant labels each new storage with it.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.agent.hooks.forward import FORWARD_CALLS, Subscription
from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.events import Phase


class PhaseTracker:
    """Keeps ``phase`` and tells ``on_change(phase)`` when it changes."""

    def __init__(self, on_change: Callable[[Phase], None], on_root_module: Callable[[torch.nn.Module], None]) -> None:
        self.phase: Phase = "other"
        self._on_change = on_change
        self._on_root_module = on_root_module
        self._subscription: Subscription | None = None
        self.module_stack: list[str] = []
        self.names_wanted = True  # keep module_stack (the accountant names a storage's module); off: phases only
        self._names: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self._patches = ClassPatches()
        self.failed_in: str | None = None  # the phase an exception left (backward, optimizer), for OOM reports
        # Set by the session while micro-batching: change backward's arguments, and hear that it ran.
        self.transform_backward: Callable[[tuple, dict], tuple[tuple, dict]] | None = None
        self.after_backward: Callable[[], None] | None = None
        # Told each outermost module call with its arguments (the training ledger reads the batch from it).
        self.root_forward: Callable[[torch.nn.Module, Any], None] | None = None
        # Inside optimizer.step (set by the session): an optimizer's closure (LBFGS) runs forward and backward
        # passes there, which are forward and backward, not the optimizer's own work.
        self.in_step = False
        self.root_grad: bool | None = None  # whether the last outermost module call had autograd on

    def set(self, phase: Phase) -> None:
        if phase != self.phase:
            self.phase = phase
            self._on_change(phase)

    # -- module hooks (only while measuring) ----------------------------------------------------------
    def install_module_hooks(self) -> None:
        if self._subscription is None:
            self._subscription = FORWARD_CALLS.subscribe(self._forward_pre, self._forward_post)

    def remove_module_hooks(self) -> None:
        if self._subscription is not None:
            self._subscription.remove()
            self._subscription = None
        self.module_stack.clear()

    def _forward_pre(self, module: torch.nn.Module, args: Any, depth: int) -> None:
        # A forward inside backward is a checkpointed block's recomputation: no root model, no phase change.
        if depth == 1 and self.phase != "backward":
            self._on_root_module(module)
            if self.root_forward is not None:
                self.root_forward(module, args)
            self.root_grad = torch.is_grad_enabled()
            training = module.training and self.root_grad
            self.set("forward" if training else "evaluation")
        # Module names are for eager code: Dynamo must not trace the weak dictionary (an internal assertion in
        # torch 2.13); a compiled region's storages are labelled with the module that called it.
        if self.names_wanted and not torch.compiler.is_compiling():
            name = self._names.get(module)
            if name is None and depth == 1:
                self._name_modules(module)
                name = self._names.get(module)
            self.module_stack.append(name or type(module).__name__)

    def _forward_post(self, module: torch.nn.Module, depth: int) -> None:
        if self.module_stack and not torch.compiler.is_compiling():
            self.module_stack.pop()

    def _name_modules(self, root: torch.nn.Module) -> None:
        """Name ``root``'s submodules by their path in it, once per root model."""
        for path, module in root.named_modules(remove_duplicate=False):
            if module not in self._names:
                self._names[module] = f"{path} ({type(module).__name__})" if path else type(module).__name__

    # -- autograd wrappers (for the whole run) ----------------------------------------------------------
    def install_autograd_wrappers(self) -> None:
        """Layers over ``torch.autograd.backward`` and ``grad``: they stack over or under another session's (a
        ``watch()`` in a script under ``torchdoctor run``, the pytest plugin around either)."""
        self._patches.wrap(torch.autograd, "backward", lambda original: self._wrap_backward(original, True))
        self._patches.wrap(torch.autograd, "grad", lambda original: self._wrap_backward(original, False))

    def remove_autograd_wrappers(self) -> None:
        self._patches.restore()

    def _wrap_backward(self, original: Callable[..., Any], is_backward: bool) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.set("backward")
            if is_backward and self.transform_backward is not None:
                args, kwargs = self.transform_backward(args, kwargs)
            try:
                result = original(*args, **kwargs)
                if is_backward and self.after_backward is not None:
                    self.after_backward()
                return result
            except BaseException:
                self.failed_in = "backward"
                raise
            finally:
                # Inside an optimizer closure (LBFGS) the step goes on; elsewhere backward ends the pass.
                self.set("optimizer" if self.in_step else "other")

        return wrapper

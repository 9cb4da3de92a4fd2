"""What every measuring client does with its accountant, in one place: the agent's session (``torchdoctor run``,
``watch()``) and the pytest plugin. Storages are classified as parameters when their model's outermost call is
seen, as gradients and parameters when an optimizer steps, as optimizer state after it; a census counts what was
made while the accountant was closed; storages are named for the tensors listed at a peak.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch

from torchdoctor.agent.hooks.calls import optimizer_params
from torchdoctor.agent.memory.accounting import GRADIENTS, OPTIMIZER_STATE, PARAMETERS
from torchdoctor.agent.memory.live import live_tensors


def state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors of an optimizer's state (Adam's ``exp_avg``, ...)."""
    return [value for state in optimizer.state.values() for value in state.values()
            if isinstance(value, torch.Tensor)]


class Counter(Protocol):
    """What classifies storages: the accountant (real tensors), or the estimate's counter (fake tensors)."""

    def classify(self, tensors: Iterable[Any], cat: int, census: bool = False,
                 only_from: int | None = None) -> None: ...

    def track(self, tensor: torch.Tensor, cat: int) -> None: ...


class MeasuredModels:
    """The root modules seen and the classification of their storages in ``accountant``."""

    def __init__(self, accountant: Counter, measuring: Callable[[], bool] = lambda: True) -> None:
        self.accountant = accountant
        self.modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # weak: a dropped model frees memory
        self._measuring = measuring  # whether storages are classified now
        # parameters with a gradient hook, by id (a WeakSet of tensors would compare two of them with ``==``,
        # elementwise, when an optimizer is made again over the same parameters)
        self._grad_watched: dict[int, weakref.ref[torch.Tensor]] = {}
        self._grad_hooks: list[Any] = []

    def watch_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """A gradient is a gradient as soon as autograd puts it in ``.grad`` (mid-backward peaks, accumulation),
        not only when the optimizer steps: one hook per parameter, which counts only while measuring."""
        for param in optimizer_params(optimizer):
            known = self._grad_watched.get(id(param))
            if param.requires_grad and (known is None or known() is not param):
                self._grad_watched[id(param)] = weakref.ref(param)
                self._grad_hooks.append(param.register_post_accumulate_grad_hook(self._gradient_made))

    def _gradient_made(self, param: torch.Tensor) -> None:
        if param.grad is not None and self._measuring():
            self.accountant.classify((param.grad,), GRADIENTS)

    def remove_gradient_hooks(self) -> None:
        for handle in self._grad_hooks:
            handle.remove()
        self._grad_hooks = []

    def root_module(self, module: torch.nn.Module) -> None:
        """A model's outermost call (or a model named by the caller): its parameters and buffers."""
        if module not in self.modules:
            self.modules.add(module)
            self.accountant.classify(list(module.parameters()) + list(module.buffers()), PARAMETERS)

    def step_began(self, optimizer: torch.optim.Optimizer) -> None:
        params = optimizer_params(optimizer)
        self.accountant.classify(params, PARAMETERS)
        self.accountant.classify([p.grad for p in params if p.grad is not None], GRADIENTS)

    def step_ended(self, optimizer: torch.optim.Optimizer) -> None:
        self.accountant.classify(state_tensors(optimizer), OPTIMIZER_STATE)

    def gradients(self) -> None:
        """The gradients the models' parameters hold now."""
        grads = [p.grad for m in list(self.modules) for p in m.parameters() if p.grad is not None]
        self.accountant.classify(grads, GRADIENTS)

    def census(self, optimizers: Iterable[torch.optim.Optimizer], rest: int) -> None:
        """Count the tensors alive now that the accountant has not seen (made while it was closed): the models'
        and optimizers' by kind, every other ``nn.Parameter`` as parameters, the rest as ``rest``."""
        acct = self.accountant
        tensors = [t for t in live_tensors() if t.device.type != "meta"]
        for module in list(self.modules):
            acct.classify(list(module.parameters()) + list(module.buffers()), PARAMETERS, census=True)
        for optimizer in list(optimizers):
            params = optimizer_params(optimizer)
            acct.classify(params, PARAMETERS, census=True)
            acct.classify([p.grad for p in params if p.grad is not None], GRADIENTS, census=True)
            acct.classify(state_tensors(optimizer), OPTIMIZER_STATE, census=True)
        found = [t for t in tensors if isinstance(t, torch.nn.Parameter)]
        acct.classify(found, PARAMETERS, census=True)
        acct.classify([p.grad for p in found if p.grad is not None], GRADIENTS, census=True)
        for tensor in tensors:
            acct.track(tensor, rest)  # new storages only: known ones keep their kind

    def storage_names(self, optimizers: Iterable[torch.optim.Optimizer]) -> dict[tuple[int, int], str]:
        """What the models' storages are (``fc1.weight``, ``fc1.weight.grad``, ``fc1.weight exp_avg (AdamW)``),
        by storage (pointer, bytes): built only when the tensors at a new peak are listed."""
        names: dict[tuple[int, int], str] = {}
        by_param: dict[int, str] = {}

        def add(tensor: Any, name: str) -> None:
            if isinstance(tensor, torch.Tensor):
                try:
                    storage = tensor.untyped_storage()
                    names.setdefault((storage.data_ptr(), storage.nbytes()), name)
                except (RuntimeError, NotImplementedError, TypeError):
                    pass

        for module in list(self.modules):
            for name, param in module.named_parameters(remove_duplicate=True):
                by_param[id(param)] = name
                add(param, name)
                add(param.grad, f"{name}.grad")
            for name, buffer in module.named_buffers():
                add(buffer, name)
        for optimizer in list(optimizers):
            kind = type(optimizer).__name__
            for held, state in list(optimizer.state.items()):
                label = by_param.get(id(held), "parameter")
                for key, value in state.items():
                    add(value, f"{label} {key} ({kind})")
        return names

    def namer(self, optimizers: Callable[[], Iterable[Any]]) -> Callable[[], dict[tuple[int, int], str]]:
        """``storage_names`` for the optimizers ``optimizers()`` gives when called."""
        return lambda: self.storage_names(optimizers())

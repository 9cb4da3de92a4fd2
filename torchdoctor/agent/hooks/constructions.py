"""The optimizers, LR schedulers and GradScalers a script creates, in creation order.

One wrapper per constructor for the whole session, shared by everything that needs to know about these objects
(run checkpoints save and restore them, gradient accumulation gates each optimizer's ``step``): wrapping the same
constructor twice from two places would make the order of removal matter.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.agent.hooks.patching import ClassPatches


class _Registry:
    """Weakly held objects in the order they were created; an object is registered once."""

    def __init__(self) -> None:
        self._refs: list[weakref.ref[Any]] = []
        self._seen: weakref.WeakSet[Any] = weakref.WeakSet()

    def add(self, obj: Any) -> bool:
        if obj in self._seen:
            return False
        self._seen.add(obj)
        self._refs.append(weakref.ref(obj))
        return True

    def alive(self) -> list[Any]:
        return [obj for ref in self._refs if (obj := ref()) is not None]


class Constructions:
    def __init__(self) -> None:
        self.optimizers = _Registry()
        self.schedulers = _Registry()
        self.scalers = _Registry()
        self.on_optimizer: list[Callable[[torch.optim.Optimizer], None]] = []
        self._patches = ClassPatches()

    def install(self) -> None:
        def remember(registry: _Registry, listeners: list[Callable[[Any], None]] | None = None) -> Any:
            def wrap(original: Any) -> Any:
                @functools.wraps(original)
                def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
                    original(obj, *args, **kwargs)
                    if registry.add(obj):
                        for listener in listeners or ():
                            listener(obj)
                return __init__
            return wrap

        lr = torch.optim.lr_scheduler
        self._patches.wrap(torch.optim.Optimizer, "__init__", remember(self.optimizers, self.on_optimizer))
        self._patches.wrap(lr.LRScheduler, "__init__", remember(self.schedulers))
        for cls in (lr.ReduceLROnPlateau, lr.SequentialLR, lr.ChainedScheduler):  # no super().__init__ call
            self._patches.wrap(cls, "__init__", remember(self.schedulers))
        self._patches.wrap(torch.amp.GradScaler, "__init__", remember(self.scalers))

    def remove(self) -> None:
        self._patches.restore()

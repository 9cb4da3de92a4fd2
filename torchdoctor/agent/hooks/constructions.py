"""The optimizers, LR schedulers and GradScalers a script creates, in creation order (and the user's line of each
scheduler's latest ``step()``, for the doctor's findings about schedulers).

One wrapper per constructor for the whole session, shared by everything that needs to know about these objects
(run checkpoints save and restore them, gradient accumulation gates each optimizer's ``step``): wrapping the same
constructor twice from two places would make the order of removal matter.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch

from torchdoctor.agent.hooks.locations import is_user_file, shown_path, user_location
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


@dataclass
class OptimizerRecord:
    """What the agent knows of one optimizer: one record per optimizer object (never keyed by ``id()``, which a
    re-created optimizer can reuse), kept by the registry while the optimizer lives and by whoever holds it after."""

    created_at: str | None = None  # the user's line that made it (None: made before the session started)
    steps: int = 0  # its step() calls seen
    last_step: int = 0  # the session's step number at its latest step()
    notes: dict[str, Any] = field(default_factory=dict)  # what other parts of the agent keep per optimizer


class _Optimizers(_Registry):
    """The optimizer registry, with one record per optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self._records: weakref.WeakKeyDictionary[Any, OptimizerRecord] = weakref.WeakKeyDictionary()

    def add(self, obj: Any) -> bool:
        added = super().add(obj)
        if added:
            self._records[obj] = OptimizerRecord()
        return added

    def record(self, optimizer: Any) -> OptimizerRecord:
        """``optimizer``'s record (registered now if it was made before the session started)."""
        self.add(optimizer)
        return self._records[optimizer]

    def stepped(self) -> list[Any]:
        """The live optimizers that have stepped, in creation order."""
        return [o for o in self.alive() if self._records[o].steps]


def _maker(module: Any) -> str | None:
    """The user's line that called ``module``'s class: the innermost user frame not in the module's own __init__."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if is_user_file(frame.f_code.co_filename) and frame.f_locals.get("self") is not module:
            return f"{shown_path(frame.f_code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class Constructions:
    def __init__(self) -> None:
        self.optimizers = _Optimizers()
        self.schedulers = _Registry()
        self.scalers = _Registry()
        # scheduler -> the user's line of its latest step() call
        self.scheduler_stepped_at: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
        # module -> the user's line that made it (the call of its class, not its own __init__'s super() call)
        self.module_made_at: weakref.WeakKeyDictionary[torch.nn.Module, str | None] = weakref.WeakKeyDictionary()
        self.on_optimizer: list[Callable[[torch.optim.Optimizer], None]] = []
        self._patches = ClassPatches()

    def install(self) -> None:
        def remember(registry: _Registry, listeners: list[Callable[[Any], None]] | None = None) -> Any:
            def wrap(original: Any) -> Any:
                @functools.wraps(original)
                def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
                    original(obj, *args, **kwargs)
                    if registry.add(obj):
                        if isinstance(registry, _Optimizers):
                            registry.record(obj).created_at = user_location()
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
        stepped_at = self.scheduler_stepped_at

        def where_stepped(original: Any) -> Any:
            @functools.wraps(original)
            def step(scheduler: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    stepped_at[scheduler] = user_location()
                except Exception:  # noqa: BLE001 - an unhashable scheduler, or its own __hash__ failing: no line
                    pass
                return original(scheduler, *args, **kwargs)
            return step

        made_at = self.module_made_at

        def where_made(original: Any) -> Any:
            @functools.wraps(original)
            def __init__(module: Any, *args: Any, **kwargs: Any) -> None:
                original(module, *args, **kwargs)
                try:
                    made_at[module] = _maker(module)
                except Exception:  # noqa: BLE001 - an unhashable module (a dataclass with eq=True), or one whose own
                    pass  # __hash__ fails while its subclass's __init__ has not finished (torchmetrics' Metric)
            return __init__

        self._patches.wrap(torch.nn.Module, "__init__", where_made)
        stepping: tuple[type, ...] = (lr.LRScheduler, lr.ReduceLROnPlateau, lr.SequentialLR, lr.ChainedScheduler,
                                      lr.CosineAnnealingWarmRestarts)  # the classes with their own step()
        for owner in stepping:
            self._patches.wrap(owner, "step", where_stepped)

    def remove(self) -> None:
        self._patches.restore()

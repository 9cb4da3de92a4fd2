"""`torchdoctor run --checkpoint-every N`: torchdoctor's own checkpoints of an unmodified script's training state.

The objects are found through the hooks: root modules (forward hooks on measured steps), optimizers (step hooks),
LR schedulers and GradScalers (their constructors). Every N optimizer steps, when the script has exactly one
model and one optimizer, their state (with scheduler, scaler, RNG and step) is saved atomically into the run
directory, never into the user's folders. A checkpoint of step k is written just before step k+1, so iteration k
is complete (its scheduler and scaler steps included); the RNG state in it is that of iteration k+1 so far, so it
is not an exact-resume point. Resuming an unmodified script from them is not done yet: the
supervisor restarts from the beginning and says that a checkpoint exists.
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import Any

import torch

from torchdoctor.agent.patching import ClassPatches
from torchdoctor.checkpoint import CheckpointError, save_checkpoint
from torchdoctor.events import Note


class RunCheckpoints:
    def __init__(self, directory: str, every: int, session: Any) -> None:
        self.directory = directory
        self.every = every
        self.session = session
        self.saved = 0
        self._schedulers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._scalers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._patches = ClassPatches()
        self._warned = False
        self._last = 0

    def install(self) -> None:
        def remember(registry: weakref.WeakSet[Any]) -> Any:
            def wrap(original: Any) -> Any:
                @functools.wraps(original)
                def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
                    original(obj, *args, **kwargs)
                    registry.add(obj)
                return __init__
            return wrap

        self._patches.wrap(torch.optim.lr_scheduler.LRScheduler, "__init__", remember(self._schedulers))
        self._patches.wrap(torch.amp.GradScaler, "__init__", remember(self._scalers))

    def remove(self) -> None:
        self._patches.restore()

    def after_step(self, step: int, optimizers: list[Any]) -> None:
        """Save the state after optimizer step ``step`` (called before step ``step + 1``, once per step)."""
        if step % self.every or step == self._last:
            return
        self._last = step
        models = self.session.root_modules
        if len(models) != 1 or len(optimizers) != 1:
            if not self._warned:
                self._warned = True
                self.session.emit(Note(level="warning", step=step, message=(
                    f"--checkpoint-every: not saving ({len(models)} models and {len(optimizers)} optimizers seen; "
                    f"torchdoctor checkpoints one model with one optimizer)")))
            return
        schedulers = [s for s in self._schedulers if getattr(s, "optimizer", None) is optimizers[0]]
        scalers = list(self._scalers)
        try:
            path = save_checkpoint(self.directory, model=models[0], optimizer=optimizers[0],
                                   scheduler=schedulers[0] if len(schedulers) == 1 else None,
                                   scaler=scalers[0] if len(scalers) == 1 else None, step=step,
                                   plan=self.session.recovery.plan.to_dict())
        except CheckpointError as exc:
            self.session.emit(Note(level="error", step=step, message=f"checkpoint not saved: {exc}"))
            return
        self.saved += 1
        self.session.emit(Note(level="info", step=step, message=f"checkpoint of step {step}: "
                                                                f"{os.path.basename(path)}"))

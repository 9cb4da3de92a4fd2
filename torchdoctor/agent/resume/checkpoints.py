"""`torchdoctor run --checkpoint-every N`: torchdoctor's own checkpoints of an unmodified script's training state.

A checkpoint is taken at the top of the script's training loop: when it asks its training DataLoader for the next
batch, at least N optimizer steps after the previous checkpoint, with no backward pass since the last optimizer
step (so no gradient is half accumulated). What it holds:

- every model, optimizer, LR scheduler and GradScaler (``training_state.TrainingObjects``), every RNG;
- where the script is: the training loader, which pass over it, how many batches into the pass, the RNG at the
  start of that pass (the shuffle and the worker seeds come from it), and which of the loader's earlier passes
  trained;
- whether a relaunch can resume from it, and if not why (evaluation after training began, modules that cannot
  be told apart, workers that persist across passes, the script's own saves to open files);
- after the next optimizer step, a small ``.next.json`` beside it: the learning rates, backward passes and losses
  of that step, which a resumed run compares with its own first step.

Scripts whose batches do not come from a DataLoader get checkpoints taken before an optimizer step, marked as not
resumable (torchdoctor cannot tell where such a script is); they are kept for the user to load.

Under torch's launcher global rank 0 writes the checkpoint, and every other rank its own part of it
(``rank_parts``); each marker holds the world size and a fingerprint of the rank's training state.
"""

from __future__ import annotations

import functools
import json
import math
import os
from contextlib import nullcontext
from typing import Any

import torch

from torchdoctor.agent.checkpoint import CheckpointError, save_checkpoint
from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.agent.resume.rank_parts import fingerprint, save_part
from torchdoctor.agent.resume.training_state import TrainingObjects
from torchdoctor.config import Rank
from torchdoctor.events import Note
from torchdoctor.files import write_atomic

MAX_LOSSES = 4


def learning_rates(optimizers: list[Any]) -> list[list[float]]:
    return [[float(group["lr"]) for group in opt.param_groups] for opt in optimizers]


def loss_value(tensors: Any) -> float | None:
    """The value of the loss a backward pass starts from (its first root tensor), if it is one finite number."""
    root = tensors[0] if isinstance(tensors, (list, tuple)) and tensors else tensors
    if isinstance(root, torch.Tensor) and root.numel() == 1:
        value = float(root.detach())
        return value if math.isfinite(value) else None
    return None


class RunCheckpoints:
    def __init__(self, directory: str, every: int, session: Any) -> None:
        self.directory = directory
        self.every = every
        self.session = session
        self.saved = 0
        self.last_step = 0  # the step of the newest checkpoint (a resumed run starts from its checkpoint's)
        self._patches = ClassPatches()
        self._next: dict[str, Any] | None = None  # the step after a checkpoint, being recorded
        self._unsaved_reason: str | None = None
        self.rank = Rank.from_env()  # under torch's launcher: rank 0 writes the checkpoint, the others their parts

    def install(self) -> None:
        session = self.session
        position = session.recovery.loaders.position
        params_of = self._optimizer_param_ids
        busy = [False]

        def train_wrapper(original: Any) -> Any:
            @functools.wraps(original)
            def train(module: torch.nn.Module, mode: bool = True) -> Any:
                if busy[0]:
                    return original(module, mode)
                busy[0] = True
                try:
                    if not mode and position.steps and any(id(p) in params_of() for p in module.parameters()):
                        position.eval_mode_after_training += 1
                    return original(module, mode)
                finally:
                    busy[0] = False
            return train

        self._patches.wrap(torch.nn.Module, "train", train_wrapper)
        session.recovery.loaders.before_next = self.loop_top

    def remove(self) -> None:
        self._patches.restore()

    def _optimizer_param_ids(self) -> set[int]:
        return {id(p) for opt in self.session.constructions.optimizers.alive()
                for group in opt.param_groups for p in group["params"]}

    # -- when -----------------------------------------------------------------------------------------
    def loop_top(self, iterator: Any) -> None:
        """Before a batch is fetched: a checkpoint if one is due and this is a clean point of the training loop."""
        session = self.session
        loaders = session.recovery.loaders
        record = getattr(iterator, "_torchdoctor_pass", None)
        if (record is None or session.step - self.last_step < self.every or session.backwards_since_step
                or record.loader not in loaders.training_loaders or not loaders.accumulator.at_boundary):
            return
        self._save(resume=record)

    def before_step(self) -> None:
        """Before an optimizer step: record the step after a checkpoint; save here if no DataLoader trains."""
        session = self.session
        if self._next is not None:
            self._write_next()
        if (session.step and session.step - self.last_step >= self.every
                and not session.recovery.loaders.training_loaders):
            self._save(resume=None)

    def saw_backward(self, tensors: Any) -> None:
        if self._next is None:
            return
        self._next["backwards"] += 1
        if len(self._next["losses"]) < MAX_LOSSES:
            self._next["losses"].append(loss_value(tensors))

    # -- what -----------------------------------------------------------------------------------------
    def _why_not_resumable(self, record: Any, objects: TrainingObjects) -> str | None:
        session = self.session
        if record is None:
            return ("the script's batches do not come from a DataLoader, so torchdoctor cannot tell where in its "
                    "loop it is")
        if record.persistent and record.number > 0:
            return ("the training DataLoader keeps its workers across passes (persistent_workers=True), so their "
                    "random state cannot be replayed")
        saves = session.atomic_save
        if saves is not None and saves.to_open_files:
            return ("the script saves with torch.save to an open file; a replay would reopen (truncate) it before "
                    "torchdoctor could stop the save")
        return objects.ambiguous or session.recovery.loaders.position.evaluation_after_training()

    def _save(self, resume: Any) -> None:
        session = self.session
        step = session.step
        self.last_step = step
        objects = TrainingObjects.find(session.constructions)
        why = self._why_not_resumable(resume, objects)
        principal = objects.principal
        params = [p for opt in objects.optimizers for group in opt.param_groups for p in group["params"]]
        resume_info: dict[str, Any] = {"resumable": why is None, "why": why, "step": step}
        generators = None
        if resume is not None:
            position = session.recovery.loaders.position
            resume_info.update(loader=resume.loader, passes=resume.number, batches=resume.batches,
                               trained_passes=position.history(resume.loader, resume.number),
                               grads_present=any(p.grad is not None for p in params))
            generators = resume.generators
        marker: dict[str, Any] = {"resume": resume_info}
        if self.rank is not None:
            marker.update(world_size=self.rank.world_size, fingerprint=fingerprint(objects))
        own = session.atomic_save.torchdoctors_own() if session.atomic_save is not None else nullcontext()
        try:
            with own:
                if self.rank is not None and self.rank.rank != 0:  # the rank's own part; rank 0 writes the rest
                    path = save_part(self.directory, self.rank.rank, self.rank.world_size, step, marker,
                                     epoch_rng=resume.rng if resume is not None else None,
                                     pass_generators=generators)
                else:
                    extra: dict[str, Any] = {"run_state": objects.state(), "resume": resume_info}
                    if resume is not None:
                        extra["pass_generators"] = generators
                    path = save_checkpoint(
                        self.directory, model=objects.modules.get(principal) if principal else None,
                        optimizer=objects.optimizers[0] if objects.optimizers else None,
                        scheduler=objects.schedulers[0] if objects.schedulers else None,
                        scaler=objects.scalers[0] if objects.scalers else None, step=step,
                        epoch=resume.number if resume is not None else None,
                        epoch_rng=resume.rng if resume is not None else None,
                        batch_index=resume.batches - 1 if resume is not None else None,
                        plan=session.recovery.plan.to_dict(), marker=marker, **extra)
        except CheckpointError as exc:
            session.emit(Note(level="error", step=step, message=f"checkpoint not saved: {exc}"))
            return
        except (OSError, RuntimeError) as exc:  # a rank's part (a full disk: torch's RuntimeError)
            session.emit(Note(level="error", step=step, message=f"rank {self.rank.rank if self.rank else 0}'s "
                                                               f"part of the checkpoint not saved: {exc}"))
            return
        self.saved += 1
        where = f" (pass {resume.number}, batch {resume.batches})" if resume is not None else ""
        message = f"checkpoint of step {step}{where}: {os.path.basename(path)}"
        if why and why != self._unsaved_reason:
            self._unsaved_reason = why
            message += f"; a relaunch cannot resume from it: {why}"
        session.emit(Note(level="info", step=step, message=message))
        self._next = {"path": path, "backwards": 0, "losses": []} if resume is not None else None

    def _write_next(self) -> None:
        record, self._next = self._next, None
        assert record is not None
        optimizers = self.session.constructions.optimizers.alive()
        body = {"step": self.session.step + 1, "lrs": learning_rates(optimizers), "backwards": record["backwards"],
                "losses": record["losses"], "plan": self.session.recovery.plan.to_dict()}
        try:
            write_atomic(f"{record['path']}.next.json", lambda handle: handle.write(json.dumps(body).encode()))
        except OSError:
            pass  # only a resumed run's extra check is lost

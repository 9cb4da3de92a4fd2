"""A relaunched, unmodified script resumed from torchdoctor's newest run checkpoint.

The script starts from the beginning (there is no other way into an unmodified script) and is replayed up to
the checkpoint's position without training:

- the passes over the training DataLoader that trained before the checkpoint yield no batches, so the script's
  loop body does not run for them (passes that did not train, such as a peek at one batch, run as before);
- the checkpoint's pass is opened with the RNG as it was at its start (same shuffle, same worker seeds), and
  the batches it had already delivered are loaded and dropped (workers draw augmentation from their own RNG, so
  they must see the same indices in the same order);
- then every model, optimizer, scheduler, scaler and RNG gets the checkpoint's state, and training goes on
  from the next batch.

While replaying, the script's ``torch.save`` to a path is not written (the file holds what the first run wrote
at the same point). A resume that cannot be faithful is abandoned: before anything was skipped the run simply
goes on from the beginning; after, it ends with ``ResumeAbandoned`` and the supervisor relaunches it from the
beginning. Checks: the checkpoint is marked resumable; an optimizer step while replaying (training outside the
loop torchdoctor positions); the models, optimizers, schedulers and scalers found again must match the saved
ones; the first resumed step must use the learning rates, backward count and (under the same plan) losses of
the step the first run took there; gradients the checkpoint did not hold (the script had not reset them at the
top of its loop) are poisoned with NaN, and a backward pass that would add to them abandons the resume.

Under torch's launcher every rank loads the checkpoint the supervisor chose (rank 0's) and, in ranks other than 0,
its own part of it on top (its RNG, its loader pass's generators, its first step's record: ``rank_parts``). A rank
must never start from the beginning while the others resume: where one cannot resume, it ends the attempt at its
first batch or optimizer step (a resume abandoned), and the next attempt starts every rank from the beginning.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch

from torchdoctor.agent.checkpoint import CheckpointError, load_checkpoint, restore_rng
from torchdoctor.agent.doctor.evidence import first_tensor, graph_nodes
from torchdoctor.agent.hooks.loop_position import restore_generators
from torchdoctor.agent.resume.checkpoints import MAX_LOSSES, learning_rates, loss_value
from torchdoctor.agent.resume.rank_parts import load_part
from torchdoctor.agent.resume.training_state import TrainingObjects
from torchdoctor.config import Rank
from torchdoctor.errors import ResumeAbandoned
from torchdoctor.events import Note, Resume
from torchdoctor.files import rank_part_path

LOSS_TOLERANCE = 1e-5  # relative: the same batch on the same weights, up to nondeterministic GPU kernels


class RunResume:
    def __init__(self, directory: str, session: Any) -> None:
        self.session = session
        self.replaying = False
        self.skipped_passes = 0
        self._began = time.monotonic()
        self._data: dict[str, Any] | None = None
        self._info: dict[str, Any] = {}
        self._path = ""
        self._verify: dict[str, Any] | None = None  # the first run's step after the checkpoint
        self._poisoned: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._resumed = False
        self._first_step_checked = False
        self._seen: dict[str, Any] = {"backwards": 0, "losses": []}  # this run's first step after the resume
        self.rank = Rank.from_env()
        self._refused: str | None = None  # why this rank cannot resume while the others may (see _give_up)
        try:
            found = load_checkpoint(directory, restore_rng_state=False, plan=session.recovery.plan.to_dict())
        except CheckpointError as exc:
            self._give_up(f"no usable checkpoint: {exc}")
            return
        self._path = found.path
        self._data = found.data
        self._info = (found.data.get("extra") or {}).get("resume") or {}
        if not self._info.get("resumable") or "loader" not in self._info:
            self._give_up(f"{os.path.basename(found.path)} is not a resume point: "
                          f"{self._info.get('why') or 'it was not written by torchdoctor run'}")
            return
        verify = f"{found.path}.next.json"
        if self.rank is not None and self.rank.rank != 0:
            directory = os.path.dirname(found.path)
            try:
                part = load_part(directory, self.rank.rank, int(self._info["step"]))
            except (OSError, ValueError) as exc:
                self._give_up(str(exc))
                return
            found.data["rng"], found.data["epoch_rng"] = part["rng"], part["epoch_rng"]
            found.data.setdefault("extra", {})["pass_generators"] = part["pass_generators"]
            verify = rank_part_path(directory, self.rank.rank, int(self._info["step"])) + ".next.json"
        self.replaying = True
        try:
            with open(verify, encoding="utf-8") as handle:
                self._verify = json.load(handle)
        except (OSError, ValueError):
            self._verify = None

    # -- wiring ----------------------------------------------------------------------------------------
    def install(self) -> None:
        if self._refused is not None:
            self.session.recovery.loaders.open_pass = self._refuse
            return
        if not self.replaying:
            return
        self.session.recovery.loaders.open_pass = self.open_pass
        if self.session.atomic_save is not None:
            self.session.atomic_save.suppress = lambda: self.replaying

    def finish(self) -> None:
        if self._refused is not None:  # the script ended before it trained: nothing went out of step
            self.session.emit(Resume(status="abandoned", message=f"not resuming: {self._refused}"))
        if self.replaying:
            self._abandon("the script ended before it reached the checkpoint's position (pass "
                          f"{self._info['passes']} of DataLoader #{self._info['loader']})", raise_it=False)

    # -- the replay --------------------------------------------------------------------------------------
    def open_pass(self, loader: Any, record: Any, make_iterator: Any) -> Any:
        info = self._info
        if not self.replaying or record.loader != info["loader"]:
            return make_iterator()
        if record.number < info["passes"]:
            if info["trained_passes"][record.number]:
                self.skipped_passes += 1
                return iter(())
            return make_iterator()
        data = self._data
        assert data is not None
        if data.get("epoch_rng"):
            restore_rng(data["epoch_rng"])
        restore_generators(loader, (data.get("extra") or {}).get("pass_generators") or [])
        iterator = make_iterator()
        self.session.recovery.loaders.skip(iterator, record, info["batches"])
        self._restore()
        return iterator

    def _restore(self) -> None:
        session = self.session
        data = self._data
        assert data is not None
        objects = TrainingObjects.find(session.constructions)
        saved_shape = data["extra"]["run_state"]["shape"]
        why = objects.mismatch(saved_shape)
        if why:
            self._abandon(f"the script's training objects do not match the checkpoint: {why}")
        objects.load(data)
        restore_rng(data["rng"])
        params = [p for opt in objects.optimizers for group in opt.param_groups for p in group["params"]]
        for param in params:
            param.grad = None
        if self._info.get("grads_present"):
            # The first run had gradients here that the checkpoint does not hold; a script that resets them
            # before its next backward does not care, one that adds to them would train differently.
            for param in params:
                param.grad = torch.full_like(param, math.nan)
                self._poisoned.append((param, param.grad))
        step = int(self._info["step"])
        session.step = step
        position = session.recovery.loaders.position
        position.steps = step
        for record in position.passes:
            if record.loader == self._info["loader"] and record.number < self._info["passes"]:
                record.steps = max(record.steps, int(self._info["trained_passes"][record.number]))
        if session.checkpoints is not None:
            session.checkpoints.last_step = step
        self.replaying = False
        self._resumed = True
        self._data = None
        seconds = time.monotonic() - self._began
        saves = session.atomic_save.suppressed if session.atomic_save is not None else 0
        message = (f"resumed from the checkpoint of step {step} ({os.path.basename(self._path)}): "
                   f"{self.skipped_passes} pass(es) and {self._info['batches']} batch(es) skipped")
        if saves:
            message += f"; {saves} torch.save call(s) of the replay not written (the first run's files are kept)"
        session.emit(Resume(status="resumed", message=message, step=step, checkpoint=self._path,
                            seconds=round(seconds, 3)))

    # -- checks after the resume -------------------------------------------------------------------------
    def before_backward(self, tensors: Any) -> None:
        if not self._resumed:
            return
        if not self._first_step_checked:
            self._seen["backwards"] += 1
            if len(self._seen["losses"]) < MAX_LOSSES:
                self._seen["losses"].append(loss_value(tensors))
        if self._poisoned:
            self._check_poisoned(first_tensor(tensors))

    def _still_poisoned(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The gradients the checkpoint did not hold that the script has not reset yet."""
        return [(p, g) for p, g in self._poisoned if p.grad is g and bool(torch.isnan(g).any())]

    def _check_poisoned(self, loss: torch.Tensor | None) -> None:
        """A backward pass that would add to a gradient the checkpoint did not hold abandons the resume; one that
        does not reach it (a GAN's discriminator pass, before the generator's gradients are reset) does not."""
        reached = None
        if loss is not None and loss.grad_fn is not None:
            reached = {id(v) for node in graph_nodes(loss.grad_fn)
                       if isinstance(v := getattr(node, "variable", None), torch.Tensor)}
        self._poisoned = self._still_poisoned()
        if any(reached is None or id(param) in reached for param, _ in self._poisoned):
            self._abandon("the script adds the next gradients to ones it did not reset at the top of its loop, "
                          "and the checkpoint does not hold those")

    def before_step(self, optimizers: list[Any], stepping: Any = None) -> None:
        """Before an optimizer step (``stepping``; ``optimizers``: all of them, for the first step's checks)."""
        if self._refused is not None:
            self._refuse()
        if self.replaying:
            self._abandon("the script took an optimizer step before it reached the checkpoint's position (pass "
                          f"{self._info['passes']} of DataLoader #{self._info['loader']}): it trains outside the "
                          "loop torchdoctor can position")
        if not self._resumed:
            return
        if self._poisoned:
            self._poisoned = self._still_poisoned()
            stepped = {id(p) for opt in ([stepping] if stepping is not None else optimizers)
                       for group in opt.param_groups for p in group["params"]}
            if any(id(param) in stepped for param, _ in self._poisoned):
                self._abandon("the script steps with gradients it did not reset at the top of its loop, and the "
                              "checkpoint does not hold those")
        if self._first_step_checked:
            return
        self._first_step_checked = True
        expected = self._verify
        if expected is None:
            self.session.ledger.resumed = {"step": self.session.step, "checked": None}
            self.session.emit(Note(level="info", message="resumed step not verified: the first run died before "
                                                         "its next step was recorded"))
            return
        lrs = learning_rates(optimizers)
        if lrs != expected["lrs"]:
            self._abandon(f"the first resumed step uses learning rates {lrs} where the first run used "
                          f"{expected['lrs']} (does the script compute them from its own step counter?)")
        same_plan = expected.get("plan", {}).get("micro_batches") == self.session.recovery.plan.micro_batches \
            and expected.get("plan", {}).get("amp") == self.session.recovery.plan.amp
        seen = self._seen
        if same_plan:
            if seen["backwards"] != expected["backwards"]:
                self._abandon(f"the first resumed step ran {seen['backwards']} backward pass(es) where the first "
                              f"run ran {expected['backwards']}")
            for mine, theirs in zip(seen["losses"], expected["losses"]):
                if (mine is None) != (theirs is None) or (
                        mine is not None and not math.isclose(mine, theirs, rel_tol=LOSS_TOLERANCE)):
                    self._abandon(f"the first resumed step's loss is {mine} where the first run had {theirs}: "
                                  f"the data or the state differs")
        checked = "learning rates" + (", backward passes and losses" if same_plan else "")
        self.session.ledger.resumed = {"step": self.session.step, "checked": checked}
        self.session.emit(Note(level="info", message=f"resumed step verified against the first run ({checked})"))

    def _give_up(self, why: str) -> None:
        """Abandon before anything was skipped: this run just goes on from the beginning. Under torch's launcher
        not alone: its peers may be resuming (see ``_refuse``)."""
        self.replaying = False
        if self.rank is not None and self.rank.world_size > 1:
            self._refused = why
            return
        self.session.emit(Resume(status="abandoned", message=f"not resuming: {why}; running from the beginning"))

    def _refuse(self, *_: Any) -> Any:
        """A rank that cannot resume ends the attempt at its first batch or optimizer step, before it trains out of
        step with peers that resumed; the next attempt starts every rank from the beginning."""
        why, self._refused = self._refused, None
        assert self.rank is not None
        self._abandon(f"rank {self.rank.rank} cannot resume ({why}); every rank must start from the same point")

    def _abandon(self, why: str, raise_it: bool = True) -> None:
        self.replaying = False
        self.session.emit(Resume(status="abandoned", message=f"resume abandoned: {why}", restart=True,
                                 step=self._info.get("step"), checkpoint=self._path or None))
        if raise_it:
            raise ResumeAbandoned(why)

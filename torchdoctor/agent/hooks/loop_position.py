"""Where an unmodified script is in its data: which pass over which DataLoader, how many batches into it.

Every ``iter(loader)`` starts an ``Iteration`` (the loader's n-th pass); the batches it delivers and the optimizer
steps taken while it was the pass the script drew from last are counted. With ``keep_rng`` the RNG state at the
start of each pass is kept (the newest per loader): the sampler's shuffle and the worker seeds are drawn from it
when the iterator is created, so a relaunch that restores it gets the same pass again.

It also notes what would make a replay of the script's earlier passes unfaithful: evaluation after training
began (the model put in eval mode, or a pass over a loader that trained nothing), whose results the script may
keep (best model, early stopping) and which a replay would compute on other weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from torchdoctor.agent.checkpoint import capture_rng


def generator_states(loader: Any) -> list[torch.Tensor | None]:
    """States of the torch.Generators a DataLoader's pass draws from besides the global RNG (loader, samplers)."""
    found: list[Any] = []
    for owner in (loader, getattr(loader, "sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None)
        found.append(gen.get_state() if isinstance(gen, torch.Generator) and all(gen is not g for g in found)
                     else None)
    return found


def restore_generators(loader: Any, states: list[torch.Tensor | None]) -> None:
    batch_sampler = getattr(loader, "batch_sampler", None)
    owners = (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None))
    for owner, state in zip(owners, states):
        gen = getattr(owner, "generator", None)
        if state is not None and isinstance(gen, torch.Generator):
            gen.set_state(state)


@dataclass
class Iteration:
    loader: int  # the loader's creation index
    number: int  # this is the loader's number-th pass (0-based)
    after_step: int  # optimizer steps taken before it started
    rng: dict[str, Any] | None = None
    generators: list[torch.Tensor | None] | None = None
    batches: int = 0  # whole batches delivered (the micro-batches of one batch count once)
    steps: int = 0  # optimizer steps taken while this was the pass the script drew from last
    persistent: bool = False  # the loader keeps its workers (and their RNG) from pass to pass
    exhausted: bool = False  # the pass ran to the end of its data (the loader raised StopIteration)
    length: int | None = None  # whole batches in the pass, as the script asked for them (None: unknown)


class LoopPosition:
    def __init__(self, keep_rng: bool) -> None:
        self.keep_rng = keep_rng
        self.passes: list[Iteration] = []
        self.current: Iteration | None = None
        self._counts: dict[int, int] = {}
        self._latest: dict[int, Iteration] = {}
        self.eval_mode_after_training = 0  # model.eval() calls on a trained model after the first step
        self.steps = 0

    def started(self, index: int, loader: Any) -> Iteration:
        number = self._counts.get(index, 0)
        self._counts[index] = number + 1
        record = Iteration(index, number, self.steps,
                           persistent=bool(getattr(loader, "persistent_workers", False) and loader.num_workers))
        if self.keep_rng:
            record.rng = capture_rng()
            record.generators = generator_states(loader)
            older = self._latest.get(index)
            if older is not None:
                older.rng = older.generators = None  # only the newest pass of each loader can be resumed
        self._latest[index] = record
        self.passes.append(record)
        return record

    def delivered(self, record: Iteration | None, whole_batch: bool) -> None:
        self.current = record
        if record is not None and whole_batch:
            record.batches += 1

    def stepped(self) -> None:
        self.steps += 1
        if self.current is not None:
            self.current.steps += 1

    def history(self, index: int, before: int) -> list[bool]:
        """For loader ``index``'s passes before number ``before``: whether each one trained."""
        trained = [False] * before
        for record in self.passes:
            if record.loader == index and record.number < before:
                trained[record.number] = trained[record.number] or record.steps > 0
        return trained

    def evaluation_after_training(self) -> str | None:
        """Why replaying the passes so far would not be faithful (evaluation after the first step), or None."""
        if self.eval_mode_after_training:
            return ("the script evaluates (puts its model in eval mode) after training began; a replay would "
                    "evaluate other weights and the script may keep what it found (best model, early stopping)")
        first_step = next((r.after_step for r in self.passes if r.steps), None)
        for record in self.passes:
            if first_step is not None and record.after_step > first_step and not record.steps and record.batches:
                return (f"the script reads DataLoader #{record.loader} without training after training began "
                        f"(evaluation?); a replay would evaluate other weights and the script may keep what it "
                        f"found (best model, early stopping)")
        return None

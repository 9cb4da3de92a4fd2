"""Which checkpoint the next attempt resumes from, read without torch: the newest whose bytes match its commit
marker (a damaged one is named as skipped, as the agent would skip it) and that is a resume point. Every process
of the next attempt loads that file.

Under torch's launcher (``world_size`` ranks) the checkpoint is rank 0's and every other rank wrote its part of it
(``agent/resume/rank_parts.py``): a checkpoint is used only when it was written by as many ranks as the next
attempt runs, every rank's part of it is there and a resume point, and every rank's fingerprint of its training
state is rank 0's (the ranks held the same weights). A checkpoint a rank has no part of yet (killed between rank 0's
save and its own) is skipped for the one before it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from torchdoctor.files import committed, rank_part_path, verify_checkpoint


class _Skip(ValueError):
    """This checkpoint cannot be used, but an older one may be."""


def _check_ranks(directory: str, name: str, marker: dict[str, Any], world_size: int | None) -> str | None:
    """Why the ranks cannot resume from this checkpoint (None: they can); raises ``_Skip`` for a missing part."""
    written = int(marker.get("world_size") or 1)
    if world_size is not None and written != world_size:
        return f"{name} was written by {written} processes and this run has {world_size}"
    step = int((marker.get("resume") or {}).get("step") or marker.get("step") or 0)
    for rank in range(1, written):
        path = rank_part_path(directory, rank, step) + ".json"
        try:
            with open(path, encoding="utf-8") as handle:
                part = json.load(handle)
        except (OSError, ValueError):
            raise _Skip(f"rank {rank} has no part of it") from None
        resume = part.get("resume") or {}
        if not resume.get("resumable"):
            return f"rank {rank} cannot resume from {name}: {resume.get('why') or 'not a resume point'}"
        if part.get("fingerprint") != marker.get("fingerprint"):
            return (f"rank {rank}'s training state at step {step} is not rank 0's (a sharded model, FSDP, or ranks "
                    f"that train differently): rank 0's checkpoint cannot stand for every rank")
    return None


def resume_source(run_dir: str, checkpoint_every: int, blocked: str | None,
                  world_size: int | None = None) -> tuple[str | None, str]:
    """The checkpoint file the next attempt resumes from (or None), and what to tell the user. ``world_size``: the
    ranks of the attempt that ended, under torch's launcher (None: one process, or not known)."""
    if not checkpoint_every:
        return None, "restarting from the beginning; --checkpoint-every N would let it resume"
    directory = os.path.join(run_dir, "checkpoints")
    kept = committed(directory)
    if blocked:
        return None, f"restarting from the beginning: {blocked}"
    if not kept:
        return None, "restarting from the beginning: no checkpoint was written yet"
    skipped: list[str] = []  # damaged ones, or ones a rank has no part of: the message names the one loaded
    for candidate in kept:
        name = os.path.basename(candidate)
        also = f" ({'; '.join(skipped)})" if skipped else ""
        try:
            marker = verify_checkpoint(candidate)
        except (OSError, ValueError, KeyError) as exc:
            skipped.append(f"{name} skipped: {exc}")
            continue
        resume = marker.get("resume") or {}
        if not resume.get("resumable"):
            why = resume.get("why") or "it is not a resume point"
            return None, (f"restarting from the beginning, not from {name}: {why}; the checkpoint is kept for "
                          f"torchdoctor.load_checkpoint{also}")
        try:
            why = _check_ranks(directory, name, marker, world_size)
        except _Skip as exc:
            skipped.append(f"{name} skipped: {exc}")
            continue
        if why:
            return None, f"restarting from the beginning: {why}{also}"
        return os.path.abspath(candidate), f"resuming from the checkpoint of step {resume.get('step')}, {name}{also}"
    return None, "restarting from the beginning: no intact checkpoint (" + "; ".join(skipped) + ")"

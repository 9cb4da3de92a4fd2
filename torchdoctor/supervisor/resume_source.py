"""Which checkpoint the next attempt resumes from, read without torch: the newest whose bytes match its commit
marker (a damaged one is named as skipped, as the agent will skip it) and that is a resume point."""

from __future__ import annotations

import os
from typing import Any

from torchdoctor.files import committed, verify_checkpoint


def resume_source(run_dir: str, checkpoint_every: int, blocked: str | None) -> tuple[str | None, str]:
    """The checkpoint directory the next attempt resumes from (or None), and what to tell the user."""
    if not checkpoint_every:
        return None, "restarting from the beginning; --checkpoint-every N would let it resume"
    directory = os.path.join(run_dir, "checkpoints")
    kept = committed(directory)
    if blocked:
        return None, f"restarting from the beginning: {blocked}"
    if not kept:
        return None, "restarting from the beginning: no checkpoint was written yet"
    skipped = []  # damaged ones: the agent skips them too, so the message names the one it will load
    marker: dict[str, Any] = {}
    for candidate in kept:
        try:
            marker = verify_checkpoint(candidate)
            break
        except (OSError, ValueError, KeyError) as exc:
            skipped.append(f"{os.path.basename(candidate)} skipped: {exc}")
    else:
        return None, "restarting from the beginning: no intact checkpoint (" + "; ".join(skipped) + ")"
    name = os.path.basename(candidate)
    also = f" ({'; '.join(skipped)})" if skipped else ""
    resume = marker.get("resume") or {}
    if not resume.get("resumable"):
        why = resume.get("why") or "it is not a resume point"
        return None, (f"restarting from the beginning, not from {name}: {why}; the checkpoint is kept for "
                      f"torchdoctor.load_checkpoint{also}")
    return os.path.abspath(directory), f"resuming from the checkpoint of step {resume.get('step')}, {name}{also}"

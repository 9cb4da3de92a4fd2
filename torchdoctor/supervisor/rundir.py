"""The run directory: where a run's event stream, report and logs are kept."""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass

from torchdoctor.errors import UsageError

DEFAULT_ROOT = "torchdoctor-runs"


def _slug(target: str) -> str:
    base = os.path.basename(target.rstrip("/")) or target
    base = re.sub(r"\.pyw?$", "", base)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:60] or "run"


@dataclass(frozen=True)
class ClaimedRunDir:
    path: str
    events: str  # events.jsonl, created empty by the claim
    created: bool  # the directory itself was made by the claim

    def release(self) -> None:
        """Undo the claim when nothing ran (the set-up failed): a rerun may use the directory again."""
        for name in os.listdir(self.path) if os.path.isdir(self.path) else ():
            if name == "events.jsonl" or re.fullmatch(r"plan-\d+\.json", name):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.path, name))
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)  # only when empty


def claim_run_dir(target: str, run_dir: str | None) -> ClaimedRunDir:
    """Make the run directory (``./torchdoctor-runs/<timestamp>-<script>/`` by default) and claim it in one atomic
    step: its ``events.jsonl`` is created exclusively, so two runs can never share a directory.

    An explicit ``--run-dir`` may exist already but must not hold another run: nothing of an earlier run is
    overwritten.
    """
    created = False
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = os.path.join(DEFAULT_ROOT, f"{stamp}-{_slug(target)}")
        path, n = base, 1
        while True:
            try:
                os.makedirs(path)  # fails if it exists: made by this run, or the next name is tried
                created = True
                break
            except FileExistsError:
                n += 1
                path = f"{base}-{n}"
            except OSError as exc:
                raise UsageError(f"cannot write the run directory {path}: {exc.strerror or exc}") from None
    else:
        path = run_dir
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"run directory {path} exists and is not a directory")
        if os.path.exists(os.path.join(path, "report.json")):
            raise UsageError(f"run directory {path} already holds a run; choose another --run-dir")
        try:
            created = not os.path.isdir(path)
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot write the run directory {path}: {exc.strerror or exc}") from None
    events = os.path.join(path, "events.jsonl")
    try:
        os.close(os.open(events, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        raise UsageError(f"run directory {path} already holds a run; choose another --run-dir") from None
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise UsageError(f"cannot write the run directory {path}: {exc.strerror or exc}") from None
    return ClaimedRunDir(path, events, created)

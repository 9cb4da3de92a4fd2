"""The run directory: where a run's event stream, report and logs are kept."""

from __future__ import annotations

import os
import re
import tempfile
import time

from torchdoctor.errors import UsageError

DEFAULT_ROOT = "torchdoctor-runs"


def _slug(target: str) -> str:
    base = os.path.basename(target.rstrip("/")) or target
    base = re.sub(r"\.pyw?$", "", base)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:60] or "run"


def create_run_dir(target: str, run_dir: str | None) -> str:
    """Make the run directory (``./torchdoctor-runs/<timestamp>-<script>/`` by default).

    An explicit ``--run-dir`` may exist already but must not hold another run's report: nothing of an
    earlier run is overwritten.
    """
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = os.path.join(DEFAULT_ROOT, f"{stamp}-{_slug(target)}")
        path, n = base, 1
        while os.path.exists(path):
            n += 1
            path = f"{base}-{n}"
    else:
        path = run_dir
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"run directory {path} exists and is not a directory")
        if os.path.exists(os.path.join(path, "report.json")) or os.path.exists(os.path.join(path, "events.jsonl")):
            raise UsageError(f"run directory {path} already holds a run; choose another --run-dir")
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)  # noqa: SIM115
        probe.close()
    except OSError as exc:
        raise UsageError(f"cannot write the run directory {path}: {exc.strerror or exc}") from None
    return path

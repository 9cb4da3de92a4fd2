"""The launcher process of a run on several processes (``torchdoctor run --nproc-per-node N``): torch's own
launcher, ``torch.distributed.run`` (torchrun), started with the options given, never a launcher of torchdoctor's.

It adds one thing: when ranks fail, torch's ``ChildFailedError`` holds each one's exit (a negative code: the
signal it died of), which the supervisor cannot see (the ranks are torchrun's children, not its own). They go into
the run's event stream as one ``RanksFailed`` event, and the error goes on as torchrun's own (its summary on
stderr, exit 1).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from torchdoctor.agent.lifeline import die_with_parent
from torchdoctor.config import AgentSettings
from torchdoctor.events import RanksFailed


def failures_of(error: Any) -> list[dict[str, Any]]:
    """Each failed rank of a ``ChildFailedError``, in rank order."""
    found = []
    for rank, failure in sorted(error.failures.items()):
        signal = failure.signal_name() if failure.exitcode < 0 else None
        found.append({"rank": rank, "local_rank": failure.local_rank, "pid": failure.pid,
                      "exit_code": failure.exitcode, "signal": signal if signal != "<N/A>" else None,
                      "message": str(failure.message)[:500]})
    return found


def append_event(path: str, event: Any) -> None:
    """One event appended to the stream, on a line of its own (a rank killed mid-line leaves no newline)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        lead = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        os.write(fd, lead + (event.to_json() + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> None:
    settings = AgentSettings.from_env()
    if settings.events_path:  # started by a supervisor: never outlive it (the ranks die with this process)
        die_with_parent()
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(list(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as error:
        if settings.events_path:
            try:
                append_event(settings.events_path, RanksFailed(failures=failures_of(error)))
            except OSError as exc:
                print(f"[torchdoctor] could not record the failed ranks ({exc.strerror or exc})", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()

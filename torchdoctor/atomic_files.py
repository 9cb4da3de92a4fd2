"""Writing a file so that a crash or a full disk never leaves it half-written: one recipe for every file
torchdoctor writes (reports, plans, checkpoints, the script's own torch.save). No torch here.

A temporary file in the same directory (never /tmp: a rename across devices is not atomic), flushed and fsynced,
renamed over the target, then the directory fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where the filesystem does not support it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, write: Callable[[IO[bytes]], Any], mode: int | None = None) -> Any:
    """Call ``write(handle)`` on a temporary file beside ``path`` and rename it over ``path``; returns what
    ``write`` returned. On any failure the temporary is removed and ``path`` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return result


def write_json_atomic(path: str, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))

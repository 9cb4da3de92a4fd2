"""The files torchdoctor writes and reads back. No torch here.

Writing a file so that a crash or a full disk never leaves it half-written: one recipe for every file
torchdoctor writes (reports, plans, checkpoints, the script's own torch.save). And the checkpoints' layout on disk.

A temporary file in the same directory (never /tmp: a rename across devices is not atomic), flushed and fsynced,
renamed over the target, then the directory fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from typing import IO, Any

from torchdoctor.errors import UsageError


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
    ``write`` returned. On any failure the temporary is removed and ``path`` is left as it was.

    The user's files stay what they were: a symlink is written through (the file it names is replaced, the link
    stays a link), an existing file keeps its mode (and its owner where this process may set it; ``mode`` is for a
    new file, by default what the umask gives a plain ``open``), and anything that is not a regular file (a
    device, a FIFO) is written in place, never replaced."""
    target = os.path.realpath(path)
    try:
        existing: os.stat_result | None = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        with open(target, "wb") as handle:  # /dev/null, a FIFO, a terminal: as a plain write would
            return write(handle)
    if existing is not None:
        mode = stat.S_IMODE(existing.st_mode)
    elif mode is None:
        mode = _default_mode()  # as open(path, "w") would create it (a temporary file is 0600)
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if existing is not None and (existing.st_uid, existing.st_gid) != (os.getuid(), os.getgid()):
            try:
                os.chown(tmp, existing.st_uid, existing.st_gid)
            except OSError:
                pass  # not allowed: the file is the writer's now, as a copy-and-rename by hand would leave it
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return result


def write_text_atomic(path: str, text: str) -> None:
    """``text`` as UTF-8, written atomically."""
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json_atomic(path: str, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


# The on-disk layout of torchdoctor checkpoints (read here, without torch, so the supervisor can look).
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def committed(directory: str) -> list[str]:
    """Checkpoint files that have a commit marker, newest first (not yet verified)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [n for n in names if CHECKPOINT_NAME.match(n) and f"{n}.json" in names]
    return [os.path.join(directory, n) for n in sorted(found, reverse=True)]


# Under torch's launcher, global rank 0 writes the checkpoint and every other rank its own part of it (its RNG, its
# loader position's generators, its next step's record) in ``RANK_PARTS`` beside it, named by rank and step.
RANK_PARTS = "ranks"


def rank_part_path(directory: str, rank: int, step: int) -> str:
    """``checkpoints/ranks/rank1-step000000015.pt``: rank 1's part of the checkpoint of step 15."""
    return os.path.join(directory, RANK_PARTS, f"rank{rank}-step{step:09d}.pt")


class CheckpointDamaged(ValueError):
    """A checkpoint whose bytes do not match its commit marker (truncated or corrupt)."""


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(path: str) -> dict[str, Any]:
    """The commit marker of a checkpoint whose bytes match it (size, SHA-256); raises :class:`CheckpointDamaged`,
    or OSError/ValueError when the marker cannot be read. Read without torch, so the supervisor can tell which
    checkpoint a relaunch will resume from."""
    with open(f"{path}.json", encoding="utf-8") as handle:
        marker = json.load(handle)
    size = os.path.getsize(path)
    if size != marker["size"]:
        raise CheckpointDamaged(f"{path} is truncated ({size} of {marker['size']} bytes)")
    if sha256_of(path) != marker["sha256"]:
        raise CheckpointDamaged(f"{path} is corrupt (its SHA-256 does not match its commit marker)")
    return marker


def read_versioned_json(path: str, schema: str, version: int, say: dict[str, str]) -> dict[str, Any]:
    """A JSON document of ``schema`` at ``version`` (a report, a baseline), or :class:`UsageError` with the caller's
    line for what is wrong: ``say`` maps ``missing``, ``unreadable``, ``foreign`` and ``version`` to a message, in
    which ``{detail}`` is what was found (the error, or the version)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UsageError(say["missing"]) from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UsageError(say["unreadable"].format(detail=exc)) from None
    except RecursionError:
        raise UsageError(say["unreadable"].format(detail="nested too deeply to be one")) from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise UsageError(say["foreign"])
    if data.get("schema_version") != version:
        raise UsageError(say["version"].format(detail=repr(data.get("schema_version"))))
    return data

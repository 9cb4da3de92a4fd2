"""The script's own ``torch.save(obj, "path")`` made atomic, so a crash or a full disk mid-save never destroys
the file it replaces: write a temporary in the same directory, flush and fsync it, rename it over the target,
fsync the directory. File objects and buffers are passed through untouched."""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

import torch

from torchdoctor.agent.patching import ClassPatches


def _fsync_dir(directory: str) -> None:
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


class AtomicTorchSave:
    def __init__(self) -> None:
        self.saves = 0
        self._patches = ClassPatches()

    def install(self) -> None:
        owner = self

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
                if not isinstance(f, (str, os.PathLike)):
                    return original(obj, f, *args, **kwargs)
                path = os.fspath(f)
                directory = os.path.dirname(os.path.abspath(path))
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
                try:
                    with os.fdopen(fd, "wb") as handle:
                        result = original(obj, handle, *args, **kwargs)
                        handle.flush()
                        os.fsync(handle.fileno())
                    umask = os.umask(0)
                    os.umask(umask)
                    os.chmod(tmp, 0o666 & ~umask)  # the mode a plain torch.save would have given
                    os.replace(tmp, path)
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
                _fsync_dir(directory)
                owner.saves += 1
                return result
            return save

        self._patches.wrap(torch, "save", wrap)

    def remove(self) -> None:
        self._patches.restore()

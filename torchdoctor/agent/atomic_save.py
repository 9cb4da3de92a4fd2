"""The script's own ``torch.save(obj, "path")`` made atomic, so a crash or a full disk mid-save never destroys
the file it replaces: write a temporary in the same directory, flush and fsync it, rename it over the target,
fsync the directory. File objects and buffers are passed through untouched."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from torchdoctor.agent.patching import ClassPatches
from torchdoctor.atomic_files import write_atomic


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
                umask = os.umask(0)
                os.umask(umask)
                # 0o666 less the umask: the mode a plain torch.save would have given the file
                result = write_atomic(os.fspath(f), lambda handle: original(obj, handle, *args, **kwargs),
                                      mode=0o666 & ~umask)
                owner.saves += 1
                return result
            return save

        self._patches.wrap(torch, "save", wrap)

    def remove(self) -> None:
        self._patches.restore()

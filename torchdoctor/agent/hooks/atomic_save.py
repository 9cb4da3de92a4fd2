"""The script's own ``torch.save(obj, "path")`` made atomic, so a crash or a full disk mid-save never destroys
the file it replaces: write a temporary in the same directory, flush and fsync it, rename it over the target,
fsync the directory. File objects and buffers are passed through untouched."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import torch

from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.files import write_atomic


class AtomicTorchSave:
    def __init__(self) -> None:
        self.saves = 0
        self.to_open_files = 0  # saves into file objects the script opened: passed through as they are
        self.suppressed = 0
        # While it returns True (a resumed run replaying its way to the checkpoint), saves to a path are not
        # written: the files hold what the first run wrote at the same point.
        self.suppress: Any = None
        self._own = False  # torchdoctor's own checkpoint is being written: not the script's save
        self._patches = ClassPatches()

    @contextlib.contextmanager
    def torchdoctors_own(self) -> Iterator[None]:
        self._own, before = True, self._own
        try:
            yield
        finally:
            self._own = before

    def install(self) -> None:
        owner = self

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
                if owner._own:
                    return original(obj, f, *args, **kwargs)
                if not isinstance(f, (str, os.PathLike)):
                    owner.to_open_files += 1
                    return original(obj, f, *args, **kwargs)
                if owner.suppress is not None and owner.suppress():
                    owner.suppressed += 1
                    return None
                # a new file gets the mode a plain torch.save would have given it (write_atomic follows the umask)
                result = write_atomic(os.fspath(f), lambda handle: original(obj, handle, *args, **kwargs))
                owner.saves += 1
                return result
            return save

        self._patches.wrap(torch, "save", wrap)

    def remove(self) -> None:
        self._patches.restore()

"""Where in the user's code something happened: the innermost frame that is not torch's, torchdoctor's or
Python's own machinery, as ``file:line``."""

from __future__ import annotations

import os
import sys
import sysconfig

import torch

import torchdoctor

_SKIP = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (torch, torchdoctor))
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep


def user_location(skip: int = 1) -> str | None:
    frame = sys._getframe(skip)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (filename.startswith(_SKIP) or filename.startswith(_STDLIB) or filename.startswith("<")):
            try:
                shown = os.path.relpath(filename)
            except ValueError:  # another drive (Windows)
                shown = filename
            if shown.startswith(".." + os.sep + ".."):
                shown = filename
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return None

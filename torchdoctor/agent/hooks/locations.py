"""Where in the user's code something happened: the innermost frame that is not torch's, torchdoctor's or
Python's own machinery, as ``file:line``."""

from __future__ import annotations

import os
import sys
import sysconfig
from types import FrameType

import torch

import torchdoctor

_SKIP = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (torch.__file__, torchdoctor.__file__))
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep


def is_user_file(filename: str) -> bool:
    """Whether code in ``filename`` is the user's (not torch's, torchdoctor's or Python's own)."""
    return bool(filename) and not (filename.startswith(_SKIP) or filename.startswith(_STDLIB)
                                   or filename.startswith("<"))


def user_location(skip: int = 1) -> str | None:
    frame: FrameType | None = sys._getframe(skip)
    while frame is not None:
        filename = frame.f_code.co_filename
        if is_user_file(filename):
            return f"{shown_path(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def shown_path(filename: str) -> str:
    """A file's path as findings show it: relative to the working directory when it is near."""
    try:
        shown = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        return filename
    return filename if shown.startswith(".." + os.sep + "..") else shown

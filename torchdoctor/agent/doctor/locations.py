"""Where a finding points: the script's own line, also when a library trainer made the call. A backward pass made
by ``accelerator.backward`` or Lightning's ``manual_backward`` happens inside the installed library; the line that
matters (and tells two calls apart) is the script's line that called it. So the innermost frame outside installed
packages (site-packages, dist-packages) is preferred, else the innermost frame that is not torch's, torchdoctor's or
Python's own (a script installed as a package still gets its own line)."""

from __future__ import annotations

import os
import re
import sys
from types import FrameType

from torchdoctor.agent.hooks.locations import is_user_file, shown_path

_INSTALLED = tuple(os.sep + name + os.sep for name in ("site-packages", "dist-packages"))
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def is_installed(filename: str) -> bool:
    """Whether ``filename`` belongs to an installed package (a library trainer's code, say)."""
    return any(part in filename for part in _INSTALLED)


def _pick(frames: list[tuple[str, int]]) -> str | None:
    """``file:line`` of the first frame (innermost first) outside installed packages, else the first user frame."""
    user = [(filename, line) for filename, line in frames if is_user_file(filename)]
    for filename, line in user:
        if not is_installed(filename):
            return f"{shown_path(filename)}:{line}"
    return f"{shown_path(user[0][0])}:{user[0][1]}" if user else None


def code_location() -> str | None:
    """The line in the script's code that led to the call being heard (see the module's docstring)."""
    frames: list[tuple[str, int]] = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return _pick(frames)


def traceback_location(trace: list[str]) -> str | None:
    """The same, from a formatted traceback (outermost first, as anomaly mode records where a tensor was made)."""
    frames = [(m.group(1), int(m.group(2))) for entry in trace for m in _FRAME.finditer(entry)]
    return _pick(frames[::-1])

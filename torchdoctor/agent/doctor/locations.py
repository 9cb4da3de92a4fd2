"""Where a finding points: the script's own line, also when a library trainer made the call. A backward pass made
by ``accelerator.backward`` or Lightning's ``manual_backward`` happens inside the installed library; the line that
matters (and tells two calls apart) is the script's line that called it. So the innermost frame outside installed
packages (site-packages, dist-packages) is preferred, else the innermost frame that is not torch's, torchdoctor's or
Python's own (a script installed as a package still gets its own line)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from types import FrameType

from torchdoctor.agent.hooks.locations import is_user_file, shown_path

_INSTALLED = tuple(os.sep + name + os.sep for name in ("site-packages", "dist-packages"))
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def is_installed(filename: str) -> bool:
    """Whether ``filename`` belongs to an installed package (a library trainer's code, say)."""
    return any(part in filename for part in _INSTALLED)


def _pick(frames: Iterable[tuple[str, int]]) -> str | None:
    """``file:line`` of the first frame (innermost first) outside installed packages, else the first user frame;
    the frames are read only as far as the answer."""
    first: tuple[str, int] | None = None
    for filename, line in frames:
        if is_user_file(filename):
            if not is_installed(filename):
                return f"{shown_path(filename)}:{line}"
            first = first or (filename, line)
    return f"{shown_path(first[0])}:{first[1]}" if first else None


def _frames(frame: FrameType | None) -> Iterator[tuple[str, int]]:
    while frame is not None:
        yield frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back


def code_location() -> str | None:
    """The line in the script's code that led to the call being heard (see the module's docstring). Run on every
    watched backward pass: the stack is walked only up to the script's frame."""
    return _pick(_frames(sys._getframe(1)))


def traceback_location(trace: list[str]) -> str | None:
    """The same, from a formatted traceback (outermost first, as anomaly mode records where a tensor was made)."""
    frames = [(m.group(1), int(m.group(2))) for entry in trace for m in _FRAME.finditer(entry)]
    return _pick(frames[::-1])

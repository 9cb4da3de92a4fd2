"""The child's terminal when the live view is on: a pseudo-terminal whose output is shown above the panel."""

from __future__ import annotations

import codecs
import os
import threading
from collections.abc import Callable


def settle(line: str) -> str:
    """What a terminal shows for one line that contains carriage returns (progress bars redraw with ``\\r``).

    >>> settle("10%\\r20%\\r100%")
    '100%'
    >>> settle("done\\r\\n".rstrip("\\n"))
    'done'
    """
    if line.endswith("\r"):
        line = line[:-1]
    if "\r" not in line:
        return line
    screen = ""
    for segment in line.split("\r"):
        screen = segment + screen[len(segment):]
    return screen


class PtyForwarder:
    """Reads the child's output from the pty master; hands finished lines to ``write``.

    The line being drawn (no newline yet, e.g. a tqdm bar) is kept in ``partial`` for the live panel to show.
    """

    def __init__(self, master_fd: int, write: Callable[[str], None]) -> None:
        self.fd = master_fd
        self.partial = ""
        self._write = write
        self._thread = threading.Thread(target=self._run, name="torchdoctor-output", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: every writer closed its end
                chunk = b""
            if not chunk:
                break
            pending += decoder.decode(chunk)
            if "\n" in pending:
                *lines, pending = pending.split("\n")
                self._write("".join(settle(line) + "\n" for line in lines))
            self.partial = settle(pending)
        pending += decoder.decode(b"", final=True)
        self.partial = ""
        if pending:
            self._write(settle(pending) + "\n")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            os.close(self.fd)


def open_pty(columns: int, rows: int) -> tuple[int, int]:
    """A pty pair sized like our terminal, with output post-processing off ("\\n" stays "\\n")."""
    import pty
    import termios

    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    resize_pty(master, columns, rows)
    return master, slave


def resize_pty(fd: int, columns: int, rows: int) -> None:
    """Tell the pty (and so the child, by SIGWINCH) the terminal's new size."""
    import fcntl
    import struct
    import termios

    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    except OSError:
        pass

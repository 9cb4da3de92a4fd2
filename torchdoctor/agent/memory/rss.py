"""The process's resident memory, read from inside it."""

from __future__ import annotations

import os
from typing import Any


class RssReader:
    """The process's resident memory, read once per step: a pread of /proc/self/statm (a few µs) where Linux
    has it, psutil elsewhere; None when neither works."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._process: Any = None
        self._status: int | None = None  # /proc/self/status (VmHWM), -1 where it cannot be read or reset
        self._clear_refs = -1
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
            self._page = os.sysconf("SC_PAGE_SIZE")
        except (OSError, AttributeError, ValueError):
            try:
                import psutil

                self._process = psutil.Process()
            except Exception:  # noqa: BLE001 - RSS is optional; "n/a" in the report
                self._process = None

    def span_peak(self) -> int | None:
        """The most resident memory since the last call (Linux: VmHWM, then reset through clear_refs); None
        where that cannot be read or reset."""
        if self._status is None:
            try:
                self._status = os.open("/proc/self/status", os.O_RDONLY)
                self._clear_refs = os.open("/proc/self/clear_refs", os.O_WRONLY)
            except OSError:
                self._status = -1
                return None
        if self._status < 0:
            return None
        try:
            text = os.pread(self._status, 4096, 0)
            at = text.index(b"VmHWM:")
            peak = int(text[at + 6:text.index(b"kB", at)]) * 1024
            os.write(self._clear_refs, b"5")  # the high-water mark starts again from what is resident now
            return peak
        except (OSError, ValueError):
            self._status = -1
            return None

    def read(self) -> int | None:
        try:
            if self._fd is not None:
                return int(os.pread(self._fd, 128, 0).split()[1]) * self._page
            if self._process is not None:
                return int(self._process.memory_info().rss)
        except (OSError, ValueError, IndexError):
            return None
        except Exception:  # noqa: BLE001 - psutil errors
            return None
        return None

"""Byte sizes: parse what users type ("6GiB", "512MB") and format what reports show."""

from __future__ import annotations

import re

from torchdoctor.errors import UsageError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse a size such as ``"6GiB"``, ``"512 MB"`` or ``"1048576"`` into bytes.

    >>> parse_size("1.5GiB")
    1610612736
    """
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UsageError(f"not a size: {text!r} (try 6GiB, 512MiB or 800MB)")
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise UsageError(f"a size must be positive: {text!r}")
    if value < 1:  # "0.5" would be 0 bytes, which every caller reads as "no limit"
        raise UsageError(f"a size must be at least 1 byte: {text!r}")
    return int(value)


def format_bytes(n: float | int | None) -> str:
    """Format bytes with binary units; ``None`` (not measured) is ``"n/a"``, never ``0``."""
    if n is None:
        return "n/a"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")

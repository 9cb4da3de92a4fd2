"""Replacing torch attributes for the length of a run, idempotently, and putting them back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ClassPatches:
    """Replaces class or module attributes, idempotently, and puts the originals back."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name)
        if original is None or getattr(original, "__torchdoctor_wrapped__", False):
            return
        wrapper = make(original)
        wrapper.__torchdoctor_wrapped__ = True
        self._saved.append((owner, name, original))
        setattr(owner, name, wrapper)

    def restore(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved = []



"""Replacing torch attributes for the length of a run and putting them back: the only way the agent patches
anything.

Patches stack. Each ``wrap`` wraps whatever the attribute is now (another torchdoctor layer included: a
``torchdoctor.watch()`` or a ``ResilientStep`` inside ``torchdoctor run``, or the pytest plugin around either), and
each ``restore`` takes away only its own layers, in any order:

- a layer on top is taken off: the attribute becomes what it wrapped (skipping layers below that were already
  taken off);
- a layer with something above it (a later layer, or the script's own wrapper) cannot be taken out of the chain
  without dropping what is above, so it becomes a pass-through: it calls what it wrapped and does nothing else,
  and is taken off when the layer above it goes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

LAYER = "__torchdoctor_layer__"


class _Layer:
    __slots__ = ("original", "active", "removed", "function")

    def __init__(self, original: Any, active: Callable[..., Any]) -> None:
        self.original = original
        self.active = active
        self.removed = False
        self.function: Any = None  # the attribute's value while this layer is in place


def _layer_of(value: Any) -> _Layer | None:
    """The torchdoctor layer ``value`` is (not one it copied the attributes of, as ``functools.wraps`` does)."""
    layer = getattr(value, LAYER, None)
    return layer if isinstance(layer, _Layer) and layer.function is value else None


def _current(owner: Any, name: str) -> Any:
    return owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)


def _below_removed(value: Any) -> Any:
    """``value`` without the taken-off torchdoctor layers on its top."""
    layer = _layer_of(value)
    while layer is not None and layer.removed:
        value = layer.original
        layer = _layer_of(value)
    return value


class ClassPatches:
    """One owner's layers over class or module attributes (one layer per attribute), and their removal."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Callable[..., Any], _Layer]] = []

    def wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Wrap ``owner.name`` (a class's own attribute, or a module's) with ``make(current)``; nothing when it
        does not exist, or when this owner has wrapped it already."""
        original = _current(owner, name)
        if original is None or any(o is owner and n == name for o, n, _, _ in self._saved):
            return
        layer = _Layer(original, make(original))

        @functools.wraps(layer.active)
        def layered(*args: Any, **kwargs: Any) -> Any:
            return (layer.original if layer.removed else layer.active)(*args, **kwargs)

        setattr(layered, LAYER, layer)
        layer.function = layered
        self._saved.append((owner, name, layered, layer))
        setattr(owner, name, layered)

    def restore(self) -> None:
        for owner, name, layered, layer in reversed(self._saved):
            layer.removed = True
            if _current(owner, name) is layered:
                setattr(owner, name, _below_removed(layer.original))
        self._saved = []

    @property
    def installed(self) -> bool:
        return bool(self._saved)

"""A zygote child's ``sys.modules``: what the zygote imported beyond the bootstrap is hidden until the script
imports it, then the same module objects come back (in microseconds), so the child sees the modules a fresh
``python -c <boot>`` child would have (see ``zygote_server.py``)."""

from __future__ import annotations

import copy
import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from typing import Any

_RESTORE_ALL = frozenset({"torch"})  # importing one of these brings back everything the zygote loaded
_MISSING = object()
_IMPORT_ATTRS = ("__spec__", "__loader__", "__package__", "__path__", "__file__", "__cached__")


class _Restore(importlib.abc.Loader):
    """Loader of one hidden module: puts the zygote's module object back instead of executing anything."""

    def __init__(self, hidden: HiddenModules, name: str) -> None:
        self._hidden = hidden
        self._name = name
        self._attrs: dict[str, Any] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        module = self._hidden.restore(self._name)
        namespace = getattr(module, "__dict__", {})
        self._attrs = {name: namespace.get(name, _MISSING) for name in _IMPORT_ATTRS}
        return module

    def exec_module(self, module: Any) -> None:
        # The import system stamped our spec (and maybe our loader) on the module: give it back its own.
        namespace = getattr(module, "__dict__", None)
        if namespace is None:
            return
        for name, value in self._attrs.items():
            if value is _MISSING:
                namespace.pop(name, None)
            else:
                namespace[name] = value


class HiddenModules(importlib.abc.MetaPathFinder):
    """The modules the zygote loaded that a fresh process would not have yet, kept out of ``sys.modules``.

    Importing one puts it back with its submodules (the very objects: nothing runs again); importing torch puts
    everything back, as ``import torch`` in a fresh process loads nearly all of it, and re-adds the warning
    filters torch's import installed. It sits first in ``sys.meta_path`` so that no finder loads a second copy.
    """

    def __init__(self, stash: dict[str, Any], torch_filters: list[Any]) -> None:
        self._stash = stash
        self._torch_filters = torch_filters

    @classmethod
    def install(cls, baseline: frozenset[str], torch_filters: list[Any]) -> HiddenModules:
        stash = {name: sys.modules.pop(name) for name in list(sys.modules)
                 if name not in baseline and sys.modules[name] is not None}
        stash.pop("__mp_main__", None)  # multiprocessing's alias of __main__: made afresh when it comes back
        hidden = cls(stash, torch_filters)
        sys.meta_path.insert(0, hidden)
        return hidden

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._stash:
            return None
        original = getattr(self._stash[fullname], "__spec__", None)
        if isinstance(original, importlib.machinery.ModuleSpec):
            spec = copy.copy(original)  # origin, search locations and all, for whoever only looks (find_spec)
        else:
            spec = importlib.machinery.ModuleSpec(fullname, None)
        spec.loader = _Restore(self, fullname)  # a fresh one each time: the torch watcher wraps its exec_module
        return spec

    def restore(self, name: str) -> Any:
        """Put ``name`` back in sys.modules (with its submodules, or everything for torch); returns it."""
        everything = name.partition(".")[0] in _RESTORE_ALL
        names = list(self._stash) if everything else [n for n in self._stash if n == name or n.startswith(name + ".")]
        for restored in names:
            sys.modules.setdefault(restored, self._stash.pop(restored))
        if "multiprocessing" in names and "__main__" in sys.modules:
            sys.modules["__mp_main__"] = sys.modules["__main__"]  # what `import multiprocessing` does
        if everything and self._torch_filters:
            warnings.filters[:0] = self._torch_filters  # type: ignore[index]  # a list at run time; typeshed: Sequence
            warnings._filters_mutated()  # type: ignore[attr-defined]
            self._torch_filters = []
        if not self._stash and self in sys.meta_path:
            sys.meta_path.remove(self)
        return sys.modules[name]

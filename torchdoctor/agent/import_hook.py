"""Start the agent when the script imports torch, not before.

Importing torch ourselves would change what a script that never imports it sees (warnings on stderr, start-up
time). A post-import hook runs the callback right after ``torch`` finishes importing, inside the script's own
``import torch``, so the agent is in place before the script's first tensor.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


class TorchImportWatcher(importlib.abc.MetaPathFinder):
    def __init__(self, callback: Callable[[], None], name: str = "torch") -> None:
        self._callback = callback
        self._name = name
        self._searching = False

    def install(self) -> None:
        if self._name in sys.modules:
            self._callback()
            return
        sys.meta_path.insert(0, self)

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self._name or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)  # the real finders answer; we are skipped
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            self.remove()
            self._callback()

        loader.exec_module = exec_module  # type: ignore[method-assign]  # patched on this spec's own loader instance
        return spec

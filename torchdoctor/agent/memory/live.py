"""Freeing memory after an OOM, in process: what the library's retry helpers stand on.

An exception's traceback pins every frame of the failed attempt and so its tensors (pytorch#27600): cleaning
up inside ``except`` frees nothing. ``release(exc)`` is called after the ``except`` block: it clears the
traceback's frames, drops the exception, collects garbage and empties the CUDA cache, then measures whether
live tensor memory came back to the baseline taken before the attempt, and if not, names what still holds it.
"""

from __future__ import annotations

import gc
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch


def _subclasses(base: type) -> set[type]:
    found: set[type] = set()
    todo: list[type] = [base]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.add(cls)
            todo.extend(cls.__subclasses__())
    return found


def live_instances(base: type) -> list[Any]:
    """Every object alive in the process whose class is ``base`` or a subclass: the one scan of the garbage
    collector's objects, by exact type (an isinstance test per object costs three times as much, and lets weakref
    proxies through)."""
    types_ = _subclasses(base)
    return [obj for obj in gc.get_objects() if type(obj) in types_]


def live_tensors() -> list[torch.Tensor]:
    """Every tensor alive in the process."""
    return live_instances(torch.Tensor)


def live_tensor_bytes() -> dict[str, int]:
    """Bytes of distinct live tensor storages per device, found through the garbage collector."""
    seen: set[tuple[str, int]] = set()
    totals: dict[str, int] = {}
    for obj in live_tensors():
        try:
            storage = obj.untyped_storage()
            key = (str(storage.device), storage.data_ptr())
        except (RuntimeError, NotImplementedError, TypeError):
            continue
        if key[1] == 0 or key in seen or storage.device.type == "meta":
            continue
        seen.add(key)
        totals[key[0]] = totals.get(key[0], 0) + storage.nbytes()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            totals[f"cuda:{index}"] = torch.cuda.memory_allocated(index)
    return totals


@dataclass(frozen=True)
class Release:
    """What freeing after an OOM achieved."""

    baseline: dict[str, int]
    after: dict[str, int]
    holders: tuple[str, ...]  # who still holds the failed attempt's exception, in words

    @property
    def leaked_bytes(self) -> int:
        return sum(max(0, self.after.get(d, 0) - b) for d, b in self.baseline.items())


def _holders(exc: BaseException, ignore: tuple[Any, ...]) -> list[str]:
    """Who, besides ``ignore``, still references ``exc`` (and so the whole failed attempt)."""
    names = []
    for referrer in gc.get_referrers(exc):
        if any(referrer is i for i in ignore):
            continue
        if isinstance(referrer, dict):
            for module in list(sys.modules.values()):
                namespace: object = getattr(module, "__dict__", None)  # object: the 'is' below keeps referrer a dict
                if namespace is referrer:
                    for name, value in referrer.items():
                        if value is exc:
                            names.append(f"global {name!r} of module {module.__name__}")
        elif isinstance(referrer, types.FrameType):
            names.append(f"a local variable of {referrer.f_code.co_name}() in {referrer.f_code.co_filename}")
        elif isinstance(referrer, (list, tuple, set)):
            names.append(f"a {type(referrer).__name__} of {len(referrer)} items")
    if sys.__dict__.get("last_value") is exc or sys.__dict__.get("last_exc") is exc:
        names.append("sys.last_value (the interactive interpreter's last error)")
    return list(dict.fromkeys(names))


def release(box: list[BaseException], baseline: dict[str, int] | None = None) -> Release:
    """Free what a failed attempt left behind; call it after leaving the ``except`` block.

    ``box`` is a list holding the exception (and nothing else holds it on the caller's side); it is emptied.
    Frames that finished are cleared, so even an exception the user keeps (in a global, a log record) no
    longer pins the attempt's tensors; who keeps it is named in the result.
    """
    holders: tuple[str, ...] = ()
    if box:
        exc = box.pop()
        gc.collect()
        holders = tuple(_holders(exc, ignore=(sys._getframe(), box)))
        tb = exc.__traceback__
        while tb is not None:
            try:
                tb.tb_frame.clear()  # drop the finished frame's locals (its tensors)
            except RuntimeError:  # a frame still executing (ours, a caller's)
                pass
            tb = tb.tb_next
        del exc
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    after = live_tensor_bytes() if baseline is not None else {}
    return Release(baseline or {}, after, holders)

"""The per-layer table of ``torchdoctor estimate --layers`` (torchsummary's, measured): for each module of the
model, its own parameters' bytes, the bytes of its outputs, and the bytes autograd saves for backward while it is
the innermost module running, each saved storage charged once. What is saved outside any module (the loss, code
between modules) has its own row. Read from the first training forward, on fake tensors."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from torchdoctor.agent.estimate.fake_counter import FakeStorageCounter
from torchdoctor.agent.memory.accounting import ACTIVATIONS, ACTIVATIONS_SAVED

OUTSIDE = "(outside modules)"


def _storage_bytes(tensors: list[Any]) -> dict[int, int]:
    found = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            try:
                storage = tensor.untyped_storage()
                found[storage._cdata] = storage.nbytes()
            except (RuntimeError, NotImplementedError, TypeError, AttributeError):
                continue
    return found


class LayerTable:
    def __init__(self, counter: FakeStorageCounter) -> None:
        self.counter = counter
        self.rows: dict[str, dict[str, Any]] = {}
        self.recording = False
        self.done = False
        self._charged: set[int] = set()
        self._handles: list[Any] = []
        self._held_before = 0
        self.forward_growth = 0  # what the first training forward left alive (saved for backward, and the rest)

    def adopt(self, root: torch.nn.Module) -> None:
        """The first training forward of ``root`` starts: every module of it gets a row."""
        if self.done or self.recording:
            return
        self.recording = True
        self._held_before = self.counter.current
        for path, module in root.named_modules():
            name = f"{path} ({type(module).__name__})" if path else type(module).__name__
            own = _storage_bytes(list(module.parameters(recurse=False)))
            self.rows[name] = {"module": name, "params_bytes": sum(own.values()), "output_bytes": 0,
                               "saved_for_backward_bytes": 0}
            self._handles.append(module.register_forward_hook(
                lambda _module, _args, output, name=name: self._output(name, output)))

    def _output(self, name: str, output: Any) -> None:
        if self.recording:
            self.rows[name]["output_bytes"] += sum(_storage_bytes(tree_flatten(output)[0]).values())

    def saved(self, pairs: list[tuple[torch.Tensor, str | None]]) -> None:
        """Tensors autograd saved, with the innermost module running when it did."""
        if not self.recording:
            return
        for tensor, label in pairs:
            for key, nbytes in _storage_bytes([tensor]).items():
                if key in self._charged or self.counter.category(tensor) not in (ACTIVATIONS, ACTIVATIONS_SAVED):
                    continue  # parameters and the batch are not the forward's
                self._charged.add(key)
                row = self.rows.setdefault(label or OUTSIDE, {"module": label or OUTSIDE, "params_bytes": 0,
                                                              "output_bytes": 0, "saved_for_backward_bytes": 0})
                row["saved_for_backward_bytes"] += nbytes

    def stop(self) -> None:
        """The first training forward is over (its saved tensors are filed first)."""
        if self.recording:
            self.recording, self.done = False, True
            self.forward_growth = self.counter.current - self._held_before
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def to_list(self) -> list[dict[str, Any]]:
        return list(self.rows.values())

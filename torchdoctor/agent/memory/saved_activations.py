"""Which activations autograd saves for the backward (the rest of a forward's memory is temporaries).

While a training forward runs on a measured step, a pair of saved-tensor hooks (``torch.autograd.graph``'s default
hooks) sees every tensor autograd saves. The pack hook only keeps a weak reference (it returns the tensor itself,
so nothing about the graph changes); when the forward phase ends, the storages still alive and still filed as
activations are re-classified as ``activations_saved`` (in the breakdown at the peak too, when they were alive
then). Parameters and inputs autograd saves keep their own category.

The hooks are pushed only when no other saved-tensor hooks are active (a script's ``save_on_cpu`` or its own
hooks keep working as written; that forward's saved activations are then not told apart), and popped only when
they are on top of the stack: hooks a script pushes inside the forward nest above them and leave first.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch

_autograd = torch._C._autograd


class SavedActivations:
    """Tells autograd-saved activations from temporaries, one training forward at a time."""

    def __init__(self, classify: Callable[[list[torch.Tensor]], None],
                 label: Callable[[], str | None] | None = None,
                 labelled: Callable[[list[tuple[torch.Tensor, str | None]]], None] | None = None) -> None:
        self._classify = classify  # (tensors) -> None: file them as saved activations
        self._label = label  # what was running when a tensor was saved (the innermost module), for ``labelled``
        self._labelled = labelled  # (tensor, label) pairs, before they are classified
        self._saved: list[tuple[weakref.ref[torch.Tensor], str | None]] = []
        self._pushed = False

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            self._saved.append((weakref.ref(tensor), self._label() if self._label is not None else None))
        except TypeError:
            pass
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def _ours_on_top(self) -> bool:
        top = _autograd._top_saved_tensors_default_hooks(False)
        return top is not None and top[0] == self._pack

    def forward_began(self) -> None:
        """A training forward starts: watch what autograd saves, unless other hooks are active."""
        if self._pushed:
            self.forward_ended()
            if self._pushed:
                return
        if _autograd._top_saved_tensors_default_hooks(False) is not None:
            return
        _autograd._push_saved_tensors_default_hooks(self._pack, self._unpack)
        self._pushed = True

    def forward_ended(self) -> None:
        """The forward phase is over: file what it saved, and take the hooks off (once they are on top)."""
        if self._pushed and self._ours_on_top():
            _autograd._pop_saved_tensors_default_hooks()
            self._pushed = False
        saved, self._saved = self._saved, []
        pairs = [(tensor, label) for ref, label in saved if (tensor := ref()) is not None]
        if pairs and self._labelled is not None:
            self._labelled(pairs)
        if pairs:
            self._classify([tensor for tensor, _ in pairs])

    def remove(self) -> None:
        self.forward_ended()


"""Evaluation and training modes, read where evaluation starts: a pass over a DataLoader that never fed a backward
pass, opened after training began (a pass over the training DataLoader is never evaluation here, so BatchNorm
recalibration over training batches stays silent).

- TD110, evaluation with autograd on: the first forward of the evaluation pass made an output that requires grad,
  and no backward pass came before training went on (a backward pass over the evaluated batches themselves, as
  saliency maps do, means the graph was wanted). The figure is what that forward's graph keeps for backward.
- TD111, evaluation in train mode: the evaluated model is in training mode and has Dropout or BatchNorm layers.
- TD112, training in eval mode: a model that trained in training mode was evaluated, and its next optimizer step
  finds it still in eval mode with Dropout or BatchNorm layers (``model.train()`` not called again).
The hooks are a one-shot global forward pre-hook per evaluation pass (it finds the outermost module) and a
one-shot forward hook on that module; nothing runs on training steps but a flag test.

Evaluation over hand-sliced tensors has no DataLoader pass to start it: there it starts where ``model.eval()`` is
called (``nn.Module.train`` is wrapped) on a model an optimizer that stepped holds parameters of, after training
began. The first forward of that model after it made outputs that require grad, and a pre-hook on their graph
nodes says whether any backward pass (``backward()``, ``autograd.grad``: saliency maps, a model frozen in eval mode
on purpose that trains on) ever went through them. TD110 is said when the model goes back to training mode, at the
next optimizer step or at the end of the run, if none did.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchdoctor.agent.doctor.evidence import first_tensor, saved_bytes, storage_key
from torchdoctor.agent.doctor.locations import code_location
from torchdoctor.agent.hooks.forward import FORWARD_CALLS
from torchdoctor.sizes import format_bytes

_MODE_SENSITIVE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def mode_sensitive(module: nn.Module) -> list[str]:
    """Class names of the layers in ``module`` that act differently in training mode (Dropout, BatchNorm)."""
    return sorted({type(m).__name__ for m in module.modules() if isinstance(m, _MODE_SENSITIVE)})


def output_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a forward's output (a tensor, a sequence or a mapping: a ``ModelOutput`` is one), nested."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in output_tensors(item)]
    return []


@dataclass
class _EvalGraph:
    """The graph an evaluation forward in eval mode made, and whether a backward pass went through it."""

    where: str | None
    kept: int
    model: str
    step: int
    fed: list[bool] = field(default_factory=lambda: [False])


class ModeChecks:
    def __init__(self, doctor: Any) -> None:
        self.doctor = doctor
        self._pre_hook: Any = None
        self._out_hook: Any = None
        self._where: str | None = None
        self._backwards_at = 0
        self._eval_loader: int | None = None  # the DataLoader of the evaluation pass
        self._graph: tuple[str | None, int, int, str] | None = None  # (where, bytes, backwards at start, model)
        self._evaluated: list[weakref.ref[nn.Module]] = []
        self._trained_in_train_mode: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        # evaluation in eval mode without a DataLoader: the model put in eval mode, its one-shot forward hook, and
        # the graph its first forward made
        self._setting_mode = False
        self._eval_model: weakref.ref[nn.Module] | None = None
        self._eval_hook: Any = None
        self._eval_graph: _EvalGraph | None = None

    def remove(self) -> None:
        for handle in (self._pre_hook, self._out_hook, self._eval_hook):
            if handle is not None:
                handle.remove()
        self._pre_hook = self._out_hook = self._eval_hook = None

    # -- where evaluation starts and ends ---------------------------------------------------------------------
    def pass_opened(self, record: Any, training: bool) -> None:
        session = self.doctor.session
        if training:
            self._confirm_graph()
            return
        if not session.recovery.loaders.training_loaders or not session.step:
            return
        self._confirm_graph()
        self._eval_loader = record.loader
        self._where = code_location()
        self._backwards_at = session.backwards_total
        if self._pre_hook is None:
            self._pre_hook = FORWARD_CALLS.subscribe(pre=self._first_forward)

    def before_backward(self) -> None:
        loaders = self.doctor.session.recovery.loaders
        if self._graph is None:
            return
        if loaders.last_loader == self._eval_loader:
            self._graph = None  # a backward pass over the evaluated batches (saliency, input gradients): it was wanted
        elif loaders.last_loader in loaders.training_loaders:
            self._confirm_graph()

    def before_step(self, optimizer: torch.optim.Optimizer, step: int, watched: bool) -> None:
        if watched:
            ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
            for root in self.doctor.roots():
                if root.training and any(id(p) in ids for p in root.parameters()):
                    self._trained_in_train_mode.add(root)
        if self._evaluated:
            self._check_train_mode(optimizer, step)
        self._end_eval_mode()

    def finish(self) -> None:
        self._confirm_graph()
        self._end_eval_mode()
        self.remove()

    # -- evaluation in eval mode over hand-sliced tensors -------------------------------------------------------
    def wrap_train(self, original: Any) -> Any:
        """``nn.Module.train`` (``eval()`` calls it), telling the outermost call's mode change."""
        @functools.wraps(original)
        def train(module: nn.Module, mode: bool = True) -> Any:
            if self._setting_mode:  # the children of the module being set
                return original(module, mode)
            self._setting_mode = True
            try:
                result = original(module, mode)
            finally:
                self._setting_mode = False
            self._mode_set(module, bool(mode))
            return result
        return train

    def _mode_set(self, module: nn.Module, training: bool) -> None:
        current = self._eval_model() if self._eval_model is not None else None
        if training:
            if current is module:
                self._end_eval_mode()
            return
        if current is module or not self.doctor.session.step or not self._stepped_params(module):
            return
        self._end_eval_mode()
        self.doctor.gradients.evaluation_started()
        self._eval_model = weakref.ref(module)
        self._eval_hook = module.register_forward_hook(self._eval_mode_output)

    def _stepped_params(self, module: nn.Module) -> bool:
        """Whether an optimizer that stepped holds parameters of ``module`` (a model being trained)."""
        ids = {id(p) for o in self.doctor.session.constructions.optimizers.stepped()
               for group in o.param_groups for p in group["params"]}
        return any(id(p) in ids for p in module.parameters())

    def _eval_mode_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._eval_hook is not None:
            self._eval_hook.remove()
            self._eval_hook = None
        if not torch.is_grad_enabled() or "TD110" in self.doctor.reported:
            return
        nodes = {id(t.grad_fn): t.grad_fn for t in output_tensors(output) if t.grad_fn is not None}
        if not nodes:
            return
        own = {key[0] for t in [*module.parameters(), *module.buffers()] if (key := storage_key(t)) is not None}
        graph = _EvalGraph(code_location(), sum(saved_bytes(node, own) for node in nodes.values()),
                           type(module).__name__, self.doctor.session.step)
        fed = graph.fed

        def went_through(grad_outputs: Any) -> None:
            fed[0] = True

        for node in nodes.values():
            node.register_prehook(went_through)
        self._eval_graph = graph

    def _end_eval_mode(self) -> None:
        if self._eval_hook is not None:
            self._eval_hook.remove()
            self._eval_hook = None
        self._eval_model = None
        graph, self._eval_graph = self._eval_graph, None
        if graph is None or graph.fed[0]:
            return
        self.doctor.report("TD110", graph.where, (
            f"evaluation with autograd on: after {graph.model}.eval() at step {graph.step}, its forward made outputs "
            f"that required grad and no backward pass went through them; each evaluation forward kept "
            f"{format_bytes(graph.kept)} of activations for a backward pass that never came (under torch.no_grad() "
            f"it keeps none)"))

    # -- the first forward of an evaluation pass ---------------------------------------------------------------
    def _first_forward(self, module: nn.Module, args: Any, depth: int) -> None:
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None
        sensitive = mode_sensitive(module)
        name = type(module).__name__
        if module.training and sensitive:
            self.doctor.report("TD111", self._where, (
                f"evaluation over a DataLoader that never fed a backward pass, at step {self.doctor.session.step}: "
                f"{name} was in training mode, so its {', '.join(sensitive)} layers acted as in training "
                f"(dropout active, BatchNorm using and updating batch statistics)"))
        if module in self._trained_in_train_mode:
            self._evaluated.append(weakref.ref(module))
        if torch.is_grad_enabled() and "TD110" not in self.doctor.reported and self._out_hook is None:
            self._out_hook = module.register_forward_hook(self._evaluation_output)

    def _evaluation_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._out_hook is not None:
            self._out_hook.remove()
            self._out_hook = None
        tensor = first_tensor(output)
        if tensor is None or not tensor.requires_grad or tensor.grad_fn is None:
            return
        own = {key[0] for t in [*module.parameters(), *module.buffers()] if (key := storage_key(t)) is not None}
        self._graph = (self._where, saved_bytes(tensor.grad_fn, own), self._backwards_at, type(module).__name__)

    def _confirm_graph(self) -> None:
        graph, self._graph = self._graph, None
        if graph is None or self.doctor.session.backwards_total != graph[2]:
            return
        where, kept, _, name = graph
        self.doctor.report("TD110", where, (
            f"evaluation with autograd on: {name}'s outputs required grad and no backward pass followed; each "
            f"evaluation forward kept {format_bytes(kept)} of activations for a backward pass that never came "
            f"(under torch.no_grad() it keeps none)"))

    def _check_train_mode(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        evaluated, self._evaluated = self._evaluated, []
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for ref in evaluated:
            module = ref()
            if module is None or module.training or not any(id(p) in ids for p in module.parameters()):
                continue
            sensitive = mode_sensitive(module)
            if sensitive:
                self.doctor.report("TD112", code_location(), (
                    f"step {step}: {type(module).__name__} trained in training mode, was evaluated in eval mode, and "
                    f"is still in eval mode now that it trains again: its {', '.join(sensitive)} layers act as in "
                    f"evaluation (no dropout, frozen BatchNorm statistics)"))

"""What the doctor's findings say about tensors, parameters and autograd graphs: names, holders, shapes of losses,
graph walks. Read-only helpers shared by the checks; they change nothing in the script's objects except the
``metadata`` dict that autograd keeps on each graph node for tools like this one."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from torchdoctor.agent.hooks.locations import is_user_file
from torchdoctor.agent.resume.training_state import root_modules

MAX_NAMES = 3
GRAPH_LIMIT = 20_000  # nodes walked per graph at most
SCALED_BY_SCALER = "torchdoctor.scaled"  # metadata key on the node GradScaler.scale made

# Loss nodes whose ``_saved_reduction`` says how they reduce (1 = mean), and the plain mean nodes.
LOSS_NODES = {"MseLossBackward0", "NllLossBackward0", "NllLoss2DBackward0", "L1LossBackward0",
              "SmoothL1LossBackward0", "HuberLossBackward0", "BinaryCrossEntropyBackward0",
              "BinaryCrossEntropyWithLogitsBackward0", "KlDivBackward0", "SoftMarginLossBackward0",
              "MultiMarginLossBackward0", "MultilabelMarginLossBackward0"}
MEAN_NODES = {"MeanBackward0", "MeanBackward1"}
SCALE_NODES = {"DivBackward0", "DivBackward1", "MulBackward0", "MulBackward1"}
MEAN_REDUCTION = 1


def param_names(params: list[torch.Tensor], roots: list[torch.nn.Module] | None = None) -> list[str]:
    wanted = {id(p) for p in params}
    found: dict[int, str] = {}
    for root in roots if roots is not None else root_modules():
        for name, p in root.named_parameters():
            if id(p) in wanted and id(p) not in found:
                found[id(p)] = name
    return [found.get(id(p), f"<tensor {tuple(p.shape)}>") for p in params]


def listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f", … ({len(names)} in all)" if len(names) > MAX_NAMES else "")


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a forward's output or backward's argument (a tensor, sequence or mapping)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def graph_nodes(root: Any, limit: int = GRAPH_LIMIT) -> Iterator[Any]:
    """The nodes of an autograd graph below ``root`` (each once, AccumulateGrad leaves included)."""
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(child for child, _ in node.next_functions if child is not None)


@dataclass(frozen=True)
class LossShape:
    """How the tensor a backward pass starts from was made."""

    node: str  # the loss node's name ("" for a leaf)
    mean: bool  # a mean-reduced loss
    scaled: bool  # then multiplied or divided (normalised by the script)
    tokens: int | None = None  # a mean NLL / cross-entropy: targets that counted
    padded: bool = False  # ... and some targets were ignored (ignore_index)


def node_metadata(node: torch.autograd.graph.Node) -> dict[Any, Any]:
    """The ``metadata`` dict autograd keeps on a graph node."""
    return node.metadata  # type: ignore[return-value]  # a property at run time; torch's stub declares a method


def loss_shape(tensor: torch.Tensor, exact_tokens: bool) -> LossShape:
    node = tensor.grad_fn
    if node is None:
        return LossShape("", False, False)
    if node_metadata(node).get(SCALED_BY_SCALER):  # GradScaler.scale(loss): look at the loss itself
        node = node.next_functions[0][0]
        assert node is not None  # ``loss * scale`` requires grad through the loss: its first input has a node
    scaled = node.name() in SCALE_NODES
    if scaled:
        inner = [child for child, _ in node.next_functions if child is not None]
        if len(inner) != 1:
            return LossShape(node.name(), False, True)
        # ``loss / 1`` (accelerate's backward divides by its gradient_accumulation_steps, 1 unless asked) scales nothing
        scaled = _scale_factor(node, inner[0]) != 1.0
        node = inner[0]
    name = node.name()
    if name in MEAN_NODES:
        return LossShape(name, True, scaled)
    if name not in LOSS_NODES or getattr(node, "_saved_reduction", None) != MEAN_REDUCTION:
        return LossShape(name, False, scaled)
    tokens = padded = None
    if exact_tokens and name.startswith("NllLoss") and getattr(node, "_saved_weight", None) is None:
        # autograd's generated node classes carry ``_saved_*`` attributes that torch's ``Node`` stub does not declare
        tokens = int(node._saved_total_weight)  # type: ignore[attr-defined]
        padded = tokens < node._saved_target.numel()  # type: ignore[attr-defined]
    return LossShape(name, True, scaled, tokens, bool(padded))


def _scale_factor(node: Any, loss: Any) -> float | None:
    """The constant a Mul/Div node scaled ``loss`` (its one input with a graph) by; None if not a readable one."""
    first = node.next_functions[0][0] is loss
    if node.name().startswith("Div"):
        return _constant(node, "_saved_other") if first else None
    return _constant(node, "_saved_other" if first else "_saved_self")


SUM_NODES = {"SumBackward0", "SumBackward1"}
ADD_NODES = {"AddBackward0", "SubBackward0"}
PASS_NODES = {"ToCopyBackward0", "CloneBackward0", "AliasBackward0", "SqueezeBackward0", "SqueezeBackward1",
              "ViewBackward0", "ReshapeAliasBackward0"}
SUM_REDUCTION = 2


@dataclass(frozen=True)
class Reduction:
    """How a loss reduces over its batch, read from its autograd graph: ``mean`` (over samples or elements),
    ``token-mean`` (a mean NLL / cross-entropy over the targets that counted, some targets ignored), ``sum`` or
    ``unknown``; ``tokens``: the targets an NLL / cross-entropy counted."""

    kind: str
    tokens: int | None = None


UNKNOWN = Reduction("unknown")


def loss_reduction(tensor: torch.Tensor, samples: int | None = None) -> Reduction:
    """How the loss ``tensor`` reduces: additions of like terms and scaling by constants are seen through, and a
    sum divided by ``samples`` (the batch's size) is a mean."""
    return _reduction(tensor.grad_fn, samples, 0)


def _constant(node: Any, attr: str) -> float | None:
    """A scalar a graph node saved (a divisor, a total weight), read on the host; None if it is not one."""
    try:
        value = getattr(node, attr)
        if isinstance(value, torch.Tensor):
            if value.numel() != 1 or value.device.type != "cpu":
                return None
            # a saved Python number cannot be read under a dispatch mode (the accounting): read it outside
            with _disable_current_modes():
                return float(value)
        return float(value) if isinstance(value, (int, float)) else None
    except Exception:  # noqa: BLE001 - an unreadable constant: the reduction stays unknown
        return None


def _reduction(node: Any, samples: int | None, depth: int) -> Reduction:
    if node is None or depth > 12:
        return UNKNOWN
    if node.metadata.get(SCALED_BY_SCALER):
        return _reduction(node.next_functions[0][0], samples, depth + 1)
    name = node.name()
    if name in MEAN_NODES:
        return Reduction("mean")
    if name in SUM_NODES:
        return Reduction("sum")
    if name.startswith("NllLoss"):
        reduction = getattr(node, "_saved_reduction", None)
        if reduction not in (MEAN_REDUCTION, SUM_REDUCTION):
            return UNKNOWN
        weight = _constant(node, "_saved_total_weight")
        tokens = int(weight) if weight is not None and getattr(node, "_saved_weight", None) is None else None
        if reduction == SUM_REDUCTION:
            return Reduction("sum", tokens)
        if tokens is None:
            return UNKNOWN
        target = getattr(node, "_saved_target", None)
        every = isinstance(target, torch.Tensor) and tokens == target.numel()
        # every target counted: a plain mean over them; else the mean's divisor depends on the data (padding)
        return Reduction("mean" if every else "token-mean", tokens)
    if name in LOSS_NODES:
        reduction = getattr(node, "_saved_reduction", None)
        reductions: dict[object, Reduction] = {MEAN_REDUCTION: Reduction("mean"), SUM_REDUCTION: Reduction("sum")}
        return reductions.get(reduction, UNKNOWN)
    children = [child for child, _ in node.next_functions if child is not None]
    if name in PASS_NODES and len(children) == 1:
        return _reduction(children[0], samples, depth + 1)
    if name in ADD_NODES and children:
        parts = [_reduction(child, samples, depth + 1) for child in children]
        kinds = {part.kind for part in parts}
        if len(kinds) != 1 or "unknown" in kinds or ("token-mean" in kinds and len(parts) > 1):
            return UNKNOWN
        return parts[0]
    if name in SCALE_NODES and len(children) == 1:
        inner = _reduction(children[0], samples, depth + 1)
        scaled_by_other = node.next_functions[0][0] is children[0]
        if name.startswith("Div") and scaled_by_other and inner.kind == "sum" and samples:
            divisor = _constant(node, "_saved_other")
            if divisor is not None and divisor == samples:
                return Reduction("mean")  # a sum over the batch divided by its size
        return inner
    return UNKNOWN


def holder_of(obj: Any) -> str | None:
    """A name the script holds ``obj`` by: a global or a local variable of a function on the stack, or the name of
    a list/dict it sits in."""
    name = _variable_for(obj)
    if name:
        return name
    for referrer in gc.get_referrers(obj):
        if isinstance(referrer, (list, dict)) and not _is_globals(referrer):
            name = _variable_for(referrer)
            if name:
                return f"{name} (a {type(referrer).__name__})"
    return None


def _is_globals(mapping: Any) -> bool:
    return isinstance(mapping, dict) and "__name__" in mapping and "__builtins__" in mapping


def _variable_for(target: Any) -> str | None:
    for referrer in gc.get_referrers(target):  # module globals
        if _is_globals(referrer) and is_user_file(str(referrer.get("__file__") or "")):
            for key, value in referrer.items():
                if value is target and not key.startswith("__"):
                    return key
    frame: FrameType | None = sys._getframe(1)  # functions on the stack (running frames are not gc referrers)
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            for key, value in frame.f_locals.items():
                if value is target:
                    return key
        frame = frame.f_back
    return None


def storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse, meta, wrapper subclasses
        return None


def saved_bytes(root: Any, exclude: set[int]) -> int:
    """Bytes of the tensors an autograd graph keeps for its backward pass (storages in ``exclude`` not counted)."""
    counted: dict[int, int] = {}
    for node in graph_nodes(root, limit=5_000):
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                values = getattr(node, attr)
            except RuntimeError:  # already freed
                continue
            for value in values if isinstance(values, (list, tuple)) else (values,):
                if isinstance(value, torch.Tensor):
                    key = storage_key(value)
                    if key is not None and key[0] not in exclude:
                        counted[key[0]] = key[1]
    return sum(counted.values())

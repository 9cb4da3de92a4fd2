"""Gradient accumulation imposed on an unmodified training loop while it sees micro-batches.

The script still calls ``zero_grad``, ``backward``, ``optimizer.step``, ``scheduler.step``, ``scaler.step`` and
``clip_grad_norm_`` once per micro-batch; the gates below let them act once per batch: each micro-batch's
gradient counts for its share of the batch, by how its loss reduces (read from its graph: a mean by micro size /
batch size, a sum as it is, a mean over the targets that counted by their number), gradients are kept until the
batch's last micro-batch, and only then are they clipped, stepped and reset.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any, cast

import torch

from torchdoctor.agent.hooks.patching import ClassPatches


@dataclass(frozen=True)
class MicroInfo:
    index: int  # position of this micro-batch in its batch
    count: int  # micro-batches in this batch
    weight: float  # its share of the batch's samples

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


class Accumulator:
    """Gates the per-batch actions of a training loop while micro-batches of one batch go through it."""

    def __init__(self) -> None:
        self.current: MicroInfo | None = None  # the micro-batch the script is working on
        self.pending_grads = False  # a micro-batch's gradients wait for the batch's optimizer step
        self.skipped_steps = 0
        self.window_tokens = 0  # token-mean losses: the targets counted in this batch's micro-batches so far
        self.on_normalise: Any = None  # told the divisor when a window's gradients are divided by its tokens

    def scale_for(self, kind: str, tokens: int | None) -> float:
        """How much a micro-batch's loss counts, by how the loss reduces (read from its graph): a mean over samples
        counts for its share of the batch's samples; a sum as it is; a mean over the targets that counted (padding
        ignored) as a sum over them, divided by the whole batch's count before the step (``normalise``)."""
        if self.current is None:
            return 1.0
        if kind == "sum":
            return 1.0
        if kind == "token-mean" and tokens:
            if self.current.index == 0:
                self.window_tokens = 0
            self.window_tokens += tokens
            return float(tokens)
        return self.current.weight  # a mean (or unknown: counted as a mean, and the report says so)

    def normalise(self, params: Any) -> None:
        """Before the batch's clipping, unscaling or step: divide token-mean gradients by the batch's target count."""
        if not self.window_tokens:
            return
        divisor, self.window_tokens = self.window_tokens, 0
        with torch.no_grad():
            for param in params():
                if param.grad is not None:
                    param.grad.div_(divisor)
        if self.on_normalise is not None:
            self.on_normalise(divisor)

    @property
    def at_boundary(self) -> bool:
        return self.current is None or self.current.last

    def after_backward(self) -> None:
        if self.current is not None:
            self.pending_grads = True

    def allow_step(self) -> bool:
        if self.at_boundary:
            self.pending_grads = False
            return True
        self.skipped_steps += 1
        return False

    def allow_zero_grad(self) -> bool:
        return not self.pending_grads


def scale_backward_args(args: tuple[Any, ...], kwargs: dict[str, Any], scale: float) -> tuple[tuple, dict]:
    """Arguments of ``torch.autograd.backward`` whose gradient is multiplied by ``scale``."""
    arg_list = list(args)
    tensors: Any = arg_list[0] if arg_list else kwargs.get("tensors")  # a tensor or a sequence of them
    if "grad_tensors" in kwargs:
        grads = kwargs["grad_tensors"]
    else:
        grads = arg_list[1] if len(arg_list) > 1 else None
    single = isinstance(tensors, torch.Tensor)
    tensor_list = [tensors] if single else list(tensors)
    if grads is None:
        scaled = [torch.full_like(t, scale) for t in tensor_list]
    else:
        grad_list = [grads] if isinstance(grads, torch.Tensor) else list(grads)
        scaled = [g * scale if g is not None else torch.full_like(t, scale) for g, t in zip(grad_list, tensor_list)]
    new_grads: Any = scaled[0] if single else scaled
    if "grad_tensors" in kwargs or len(arg_list) <= 1:
        kwargs = {**kwargs, "grad_tensors": new_grads}
    else:
        arg_list[1] = new_grads
    return tuple(arg_list), kwargs


class AccumulationGates:
    """Installs the gates on torch's classes for one run."""

    def __init__(self, accumulator: Accumulator) -> None:
        self.acc = accumulator
        self._patches = ClassPatches()
        self._listener: tuple[Any, Any] | None = None
        self._zero_grad: Any = None
        self._clips: tuple[Any, Any] | None = None

    def install(self, constructions: Any, zero_grad: Any, clips: Any) -> None:
        acc = self.acc

        def every_param() -> list[torch.Tensor]:
            return [p for o in constructions.optimizers.alive() for g in o.param_groups for p in g["params"]]

        def gate_step(opt: torch.optim.Optimizer) -> None:
            # the hooked, bound step; wrapped per instance so every caller is gated
            step = cast(types.MethodType, opt.step)

            def gated_step(self: Any, *a: Any, **k: Any) -> Any:
                if not acc.allow_step():
                    return None
                acc.normalise(every_param)
                return step(*a, **k)

            # A bound method, as LR schedulers expect when they wrap optimizer.step in turn.
            opt.step = types.MethodType(  # type: ignore[method-assign]  # a per-instance patch, on purpose
                functools.wraps(step.__func__)(gated_step), opt)

        constructions.on_optimizer.append(gate_step)
        self._listener = (constructions, gate_step)

        def gate(original: Any, allow: Any, default: Any = None) -> Any:
            @functools.wraps(original)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if allow():
                    acc.normalise(every_param)
                    return original(*args, **kwargs)
                return default(*args, **kwargs) if callable(default) else default
            return wrapper

        def unclipped_norm(params: list[torch.Tensor]) -> torch.Tensor:
            grads = [p.grad for p in params if p.grad is not None]
            return torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)

        at_boundary = lambda: acc.at_boundary  # noqa: E731

        def clip_at_boundary() -> bool:
            if acc.at_boundary:
                acc.normalise(every_param)
                return True
            return False

        zero_grad.gates.append(acc.allow_zero_grad)
        self._zero_grad = zero_grad
        scheduler_classes = [torch.optim.lr_scheduler.LRScheduler]
        scheduler_classes += [c for c in vars(torch.optim.lr_scheduler).values()
                              if isinstance(c, type) and issubclass(c, torch.optim.lr_scheduler.LRScheduler)
                              and "step" in c.__dict__ and c is not torch.optim.lr_scheduler.LRScheduler]
        for cls in scheduler_classes:
            self._patches.wrap(cls, "step", lambda f: gate(f, at_boundary))
        for name in ("unscale_", "step", "update"):
            self._patches.wrap(torch.amp.GradScaler, name, lambda f: gate(f, at_boundary))
        clips.gates.append(clip_at_boundary)
        clips.norm_when_gated = unclipped_norm
        self._clips = (clips, clip_at_boundary)

    def remove(self) -> None:
        self._patches.restore()
        if self._zero_grad is not None:
            self._zero_grad.gates.remove(self.acc.allow_zero_grad)
            self._zero_grad = None
        if self._clips is not None:
            clips, gate = self._clips
            clips.gates.remove(gate)
            clips.norm_when_gated = None
            self._clips = None
        if self._listener is not None:
            constructions, listener = self._listener
            constructions.on_optimizer.remove(listener)
            self._listener = None

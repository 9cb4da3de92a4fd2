"""Remedies applied around the outermost module forward: no_grad for evaluation, autocast for mixed precision,
saved activations offloaded to host memory (CUDA), and the discovery of each training model's blocks for
activation checkpointing (``checkpointing.py``)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from torchdoctor.agent.hooks.forward import FORWARD_CALLS, Subscription
from torchdoctor.agent.hooks.locations import user_location
from torchdoctor.agent.recovery.activation_checkpointing import ActivationCheckpointing


def _device_type(module: torch.nn.Module) -> str:
    for param in module.parameters():
        return param.device.type
    return "cpu"


class ForwardRemedies:
    def __init__(self, eval_no_grad: bool, amp: str | None, checkpoint: bool = False, offload: bool = False,
                 phases: Any = None) -> None:
        self.eval_no_grad = eval_no_grad
        self.amp = amp
        self.offload = offload
        self.checkpointing = ActivationCheckpointing() if checkpoint else None
        self.no_grad_forwards = 0
        self.first_no_grad_at: str | None = None  # the user's line of the first forward run under no_grad
        self.autocast_forwards = 0
        self.offloaded_forwards = 0
        self._phases = phases  # a forward inside backward is a checkpoint's recomputation: left alone
        self._stack: contextlib.ExitStack | None = None
        self._subscription: Subscription | None = None

    def install(self) -> None:
        if (self.eval_no_grad or self.amp or self.offload or self.checkpointing) and self._subscription is None:
            self._subscription = FORWARD_CALLS.subscribe(self._pre, self._post)
        if self.checkpointing is not None:
            self.checkpointing.install()

    def remove(self) -> None:
        if self._subscription is not None:
            self._subscription.remove()
            self._subscription = None
        if self.checkpointing is not None:
            self.checkpointing.remove()

    def _pre(self, module: torch.nn.Module, args: Any, depth: int) -> None:
        if depth != 1 or (self._phases is not None and self._phases.phase == "backward"):
            return
        stack = contextlib.ExitStack()
        training = module.training and torch.is_grad_enabled()
        if self.eval_no_grad and not module.training and torch.is_grad_enabled():
            stack.enter_context(torch.no_grad())
            self.no_grad_forwards += 1
            if self.first_no_grad_at is None:
                self.first_no_grad_at = user_location()
        elif training:
            device = _device_type(module)
            if self.checkpointing is not None:
                self.checkpointing.adopt(module)
            if self.amp:
                dtype = torch.bfloat16
                if self.amp == "fp16" or (device == "cuda" and not torch.cuda.is_bf16_supported()):
                    dtype = torch.float16
                stack.enter_context(torch.autocast(device_type=device, dtype=dtype))
                self.autocast_forwards += 1
            if self.offload and device == "cuda":
                stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=True))
                self.offloaded_forwards += 1
        self._stack = stack

    def _post(self, module: torch.nn.Module, depth: int) -> None:
        if depth == 1 and self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

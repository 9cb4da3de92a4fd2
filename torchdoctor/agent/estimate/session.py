"""The estimate's session: started when the script imports torch (in place of the measuring session), it puts the
process under fake tensors for good, counts every storage the script's first optimizer steps make, tells phases
and kinds apart with the same hooks as ``torchdoctor run``, then emits one ``Estimated`` event and stops the script.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from torchdoctor.agent.estimate.fake_counter import FakeStorageCounter, StandInScalars
from torchdoctor.agent.estimate.gpu_ledger import GpuLedger
from torchdoctor.agent.estimate.layers import LayerTable
from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.agent.hooks.phases import PhaseTracker
from torchdoctor.agent.memory.accounting import ACTIVATIONS, ACTIVATIONS_SAVED
from torchdoctor.agent.memory.measuring import MeasuredModels
from torchdoctor.agent.memory.saved_activations import SavedActivations
from torchdoctor.agent.recovery.batch_args import BatchArgumentWatch
from torchdoctor.config import AgentSettings
from torchdoctor.errors import StepsDone
from torchdoctor.events import Estimated, Phase
from torchdoctor.gpus import ENV_ESTIMATE_GPU, Gpu, find_gpu

DEFAULT_STEPS = 2  # the first step makes the optimizer's state; the second is the steady state


def _formatting_fakes(format_: Any) -> Any:
    """``f"{loss:.4f}"``: torch formats a 0-dim tensor through ``item()`` only when its type is exactly Tensor;
    a fake one is formatted the same way here (its value a stand-in), not refused."""
    def __format__(self: torch.Tensor, spec: str) -> str:
        if spec and isinstance(self, FakeTensor) and self.dim() == 0:
            return format(self.detach().item(), spec)
        return format_(self, spec)
    return __format__


class EstimateSession:
    def __init__(self, settings: AgentSettings, sink: Any, gpu: Gpu | None = None,
                 kernel_probe: bool = True) -> None:
        self.sink = sink
        self.steps_wanted = settings.max_steps or DEFAULT_STEPS
        self.step = 0
        gpu_name = os.environ.get(ENV_ESTIMATE_GPU)
        if gpu is None and gpu_name:
            gpu = find_gpu(gpu_name)
        self.gpu = gpu  # the CUDA card modelled (None: the CPU is the target)
        self.kernel_probe = kernel_probe  # measure CPU kernels' buffers (the probe is put in front of the allocator)
        self.counter = FakeStorageCounter(GpuLedger(self.gpu) if self.gpu is not None else None)
        self.scalars = StandInScalars()
        self.models = MeasuredModels(self.counter)
        self.phases = PhaseTracker(self._phase_changed, self.models.root_module)
        self.layers = LayerTable(self.counter)
        self.phases.root_forward = self._root_forward
        self.phases.after_backward = self.models.gradients
        stack = self.phases.module_stack
        self.saved = SavedActivations(self._saved_for_backward, label=lambda: stack[-1] if stack else None,
                                      labelled=self.layers.saved)
        self.batch_size: int | None = None
        self.device = "cpu"
        self.figures: list[dict[str, Any]] = []
        self.batch_args = BatchArgumentWatch(lambda event: None)  # the option a batch size is set through
        self._fake = FakeTensorMode(allow_non_fake_inputs=True)
        self._handles: list[Any] = []
        self._patches = ClassPatches()
        self._entered: list[Any] = []  # the modes entered, in order (a library call leaves them at its end)
        self.cuda: Any = None
        self.kernels_unmeasured = ""  # why the CPU kernels' own buffers could not be measured ("": they were)
        self.saves_skipped = 0  # torch.save calls the estimate did not carry out
        self._libraries_seen = False
        if self.gpu is not None:
            from torchdoctor.agent.estimate.cuda_target import CudaTarget

            self.cuda = CudaTarget(self.gpu, self.counter)
            self.device = f"cuda:0 ({self.gpu.name}, modelled)"

    def start(self) -> None:
        # fake tensors from here on, for the life of the process: the script never allocates for real
        for mode in (self._fake, self.counter, self.scalars):  # the last on top: a value read back is answered
            mode.__enter__()                                    # before fake tensors refuse it
            self._entered.append(mode)
        self._patches.wrap(torch.utils, "swap_tensors", self._swap_forgetting_memo)
        self._patches.wrap(torch.Tensor, "__format__", _formatting_fakes)
        self._patches.wrap(torch, "save", self._not_saving)  # files stay as they are
        if self.cuda is not None:
            self.cuda.install()
        elif self.kernel_probe:  # the CPU's kernels' own buffers, measured through the allocator probe
            from torchdoctor.agent.estimate.kernel_buffers import KernelBuffers
            from torchdoctor.agent.memory import allocator_probe

            probe, self.kernels_unmeasured = allocator_probe.start(torch)
            if probe is not None:
                self.counter.kernels = KernelBuffers(probe)
        else:
            self.kernels_unmeasured = "the allocator probe belongs to the torchdoctor run around this call"
        self.phases.install_module_hooks()
        self.phases.install_autograd_wrappers()
        self.batch_args.install()
        self._handles = [register_optimizer_step_pre_hook(self._step_pre),
                         register_optimizer_step_post_hook(self._step_post)]

    def finish(self) -> None:
        """Emit what was counted (also when the script ended or failed before its steps)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.saved.remove()
        self.batch_args.remove()
        self.phases.remove_autograd_wrappers()
        self.phases.remove_module_hooks()
        if self.cuda is not None:
            self.cuda.remove()
        self._patches.restore()
        if self.step < self.steps_wanted:  # the script ended first: what it did is still the estimate
            self.figures.append(self.counter.figures())
        option = (self.batch_args.found.get("batch") or {}).get("name")
        self.sink.emit(Estimated(batch_size=self.batch_size, steps=self.figures, device=self.device,
                                 stand_ins=self.scalars.reads, batch_option=option,
                                 steps_done=self.step, layers=self.layers.to_list(),
                                 forward_growth_bytes=self.layers.forward_growth if self.layers.done else None,
                                 kernels_unmeasured=self.kernels_unmeasured,
                                 kernel_failures=sorted(set(self.counter.kernels.failures))[:5]
                                 if self.counter.kernels is not None else []))

    def record_failure(self, exc: BaseException | None) -> bool:
        return False

    def close(self) -> None:
        """Leave fake tensors (the library call: the process goes on). ``finish`` first."""
        while self._entered:
            self._entered.pop().__exit__(None, None, None)
        if self.counter.kernels is not None:
            self.counter.kernels.probe.uninstall()

    def _as_on_real_tensors(self) -> None:
        """Libraries that take another path when they see fake tensors (they take them for a trace) take the path
        real tensors take: transformers keeps an explicit causal mask for SDPA when its padding mask is fake (a
        [batch, 1, seq, seq] float mask the real run does not make: +5.8 % on a GPT-2 under its Trainer)."""
        import sys

        utils = sys.modules.get("transformers.utils.import_utils")
        if utils is not None and hasattr(utils, "is_fake_tensor"):
            self._patches.wrap(utils, "is_fake_tensor", lambda current: lambda x: False)

    def _not_saving(self, save: Any) -> Any:
        """``torch.save`` under an estimate writes nothing: fake tensors have no data (pickling them fails), and the
        script's files (checkpoints, weights) must not be overwritten by a run that allocates nothing."""
        def skipped(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            self.saves_skipped += 1
        return skipped

    def _swap_forgetting_memo(self, swap: Any) -> Any:
        """``Module.to()``/``.double()`` swap fake parameters with their converted copies, which refuses tensors
        something holds a weak reference to: fake mode's memo of tensors it made does, and so do the stand-ins'
        followed values. Both let go of the two tensors first (the memo maps real tensors to fakes, these are fakes
        the script made; the followed values are swapped with the tensors)."""
        memo = self._fake.fake_tensor_converter.meta_converter.tensor_memo
        followed = self.scalars.values

        def swap_tensors(t1: Any, t2: Any) -> Any:
            for key, value in list(memo.items()):
                if value is t1 or value is t2:
                    del memo[key]
            one, two = followed.pop(t1, None), followed.pop(t2, None)
            result = swap(t1, t2)
            if two is not None:
                followed[t1] = two
            if one is not None:
                followed[t2] = one
            return result
        return swap_tensors

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _phase_changed(self, phase: Phase) -> None:
        self.counter.set_phase(phase)
        if phase == "forward":
            self.saved.forward_began()
        else:
            self.saved.forward_ended()
            self.layers.stop()

    def _saved_for_backward(self, tensors: list[torch.Tensor]) -> None:
        self.counter.classify(tensors, ACTIVATIONS_SAVED, only_from=ACTIVATIONS)

    def _root_forward(self, module: torch.nn.Module, args: Any) -> None:
        if not self._libraries_seen:
            self._libraries_seen = True
            self._as_on_real_tensors()
        if module.training and torch.is_grad_enabled() and self.phases.phase != "forward":
            self.layers.adopt(module)
        if self.batch_size is None and module.training and torch.is_grad_enabled():
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is not None and first.dim() > 0:
                self.batch_size = int(first.shape[0])
            param = next(module.parameters(), None)
            if param is not None and self.cuda is None:
                self.device = str(param.device)

    def _step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.phases.in_step = True
        self.phases.set("optimizer")
        self.models.step_began(optimizer)

    def _step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.models.step_ended(optimizer)
        self.phases.in_step = False
        self.phases.set("other")
        self.step += 1
        self.figures.append(self.counter.figures())
        self.counter.reset_span()
        if self.step >= self.steps_wanted:
            raise StepsDone(f"{self.step} optimizer steps counted on fake tensors")

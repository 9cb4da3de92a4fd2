"""The agent's session: hooks into the training loop and turns what it sees into events.

Always on (cheap): the global optimizer step hooks (one sample per step: step time, RSS, CUDA allocator
counters where CUDA is in use) and a wrapper on ``torch.autograd.backward``. Only on measured steps: exact
tensor accounting and the module hooks that tell forward from evaluation.
"""

from __future__ import annotations

import gc
import os
import time
import warnings
import weakref
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from torchdoctor.agent.accounting import ACTIVATIONS, GRADIENTS, OPTIMIZER_STATE, PARAMETERS, TensorAccountant
from torchdoctor.agent.accumulation import AccumulationGates, MicroInfo, scale_backward_args
from torchdoctor.agent.batching import LoaderWatch
from torchdoctor.agent.batch_args import BatchArgumentWatch
from torchdoctor.agent.phases import PhaseTracker
from torchdoctor.agent.remedies import ForwardRemedies
from torchdoctor.agent.schedule import SamplingSchedule
from torchdoctor.config import AgentSettings
from torchdoctor.events import Event, MemorySample, Note, OutOfMemory
from torchdoctor.oom import classify_oom
from torchdoctor.plan import Plan
from torchdoctor.sizes import format_bytes

_LIVE_SESSIONS: "weakref.WeakSet[AgentSession]" = weakref.WeakSet()


# Our global module hooks exist only on measured steps; torch warns that they fire twice through a
# torch.compile'd module, which is harmless for counting root calls and not the user's concern.
warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks",
                        category=UserWarning)


def _after_fork_in_child() -> None:
    for session in list(_LIVE_SESSIONS):
        session.accountant.detach_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    found = []
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                found.append(value)
    return found


class CudaFigures:
    """The CUDA caching allocator's own counters (free to read) and NVML's device-level used memory.

    Peaks are reset after each read, so each sample's peak covers its own span. Nothing is read (and no
    CUDA context is created) unless the script itself has initialised CUDA.
    """

    def __init__(self) -> None:
        self._cuda_build = torch.version.cuda is not None or torch.version.hip is not None
        self._nvml: Any = None
        self._nvml_handles: dict[int, Any] = {}

    def read(self) -> dict[str, dict[str, Any]]:
        if not self._cuda_build or not torch.cuda.is_initialized():
            return {}
        figures = {}
        for index in range(torch.cuda.device_count()):
            allocated_peak = torch.cuda.max_memory_allocated(index)
            reserved = torch.cuda.memory_reserved(index)
            if allocated_peak == 0 and reserved == 0:
                continue  # a device the script does not use
            figures[f"cuda:{index}"] = {
                "cuda_allocated": torch.cuda.memory_allocated(index),
                "cuda_allocated_peak": allocated_peak,
                "cuda_reserved": reserved,
                "cuda_reserved_peak": torch.cuda.max_memory_reserved(index),
            }
            used = self._device_used(index)
            if used is not None:
                figures[f"cuda:{index}"]["device_used"] = used
            torch.cuda.reset_peak_memory_stats(index)
        return figures

    def _device_used(self, index: int) -> int | None:
        """NVML's used memory of the GPU behind CUDA device ``index`` (matched by UUID, so
        CUDA_VISIBLE_DEVICES reordering cannot mix devices up)."""
        if self._nvml is False:
            return None
        try:
            if self._nvml is None:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            handle = self._nvml_handles.get(index)
            if handle is None:
                uuid = str(torch.cuda.get_device_properties(index).uuid)
                uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
                handle = self._nvml_handles[index] = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
            return int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:  # noqa: BLE001 - no NVML: the figure is simply not there
            self._nvml = False
            return None


class AgentSession:
    """Installs the hooks for one run and emits ``MemorySample`` events into ``sink``."""

    def __init__(self, settings: AgentSettings, sink: Any) -> None:
        self.settings = settings
        self.sink = sink
        self.step = 0
        self.accountant = TensorAccountant()
        self.phases = PhaseTracker(self._phase_changed, self._saw_root_module)
        self.plan = Plan.read(settings.plan_path) if settings.plan_path else Plan()
        accounting = settings.accounting
        if settings.memory_budget and not (torch.cuda.is_available()):
            accounting = "exact"  # the budget is enforced at every allocation
        self.schedule = SamplingSchedule(accounting, settings.first_steps, settings.sample_every)
        plan = self.plan
        split = {index: plan.micro_batches for index in plan.train_loaders} if plan.micro_batches > 1 else {}
        self.loaders = LoaderWatch(self.emit, split, plan.host_workers_cap)
        self.batch_args = BatchArgumentWatch(self.emit)
        self._argv_parts = plan.micro_batches if plan.batch_arg and plan.micro_batches > 1 else 1
        accumulate = plan.micro_batches > 1 and plan.keep_effective_batch
        self.gates = AccumulationGates(self.loaders.accumulator) if accumulate else None
        self.remedies = ForwardRemedies(plan.eval_no_grad, plan.amp)
        self._backwards = 0
        self._budget_oom: str | None = None
        self._modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._optimizers: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._handles: list[Any] = []
        self._measuring = False
        self._span_measured = False
        self._span_start = time.perf_counter()
        self._census_seconds = 0.0
        self._warned_stranded = False
        self._cuda = CudaFigures()
        self._process: Any = None
        try:
            import psutil

            self._process = psutil.Process()
        except Exception:  # noqa: BLE001 - RSS is optional; "n/a" in the report
            self._process = None

    # -- lifetime ------------------------------------------------------------------------------------
    def start(self) -> None:
        _LIVE_SESSIONS.add(self)
        self._handles = [
            register_optimizer_step_pre_hook(self._step_pre),
            register_optimizer_step_post_hook(self._step_post),
        ]
        self.phases.install_autograd_wrappers()
        self.phases.transform_backward = self._before_backward
        self.phases.after_backward = self.loaders.accumulator.after_backward if self.gates else None
        self.loaders.install()
        self.batch_args.install()
        if self.gates is not None:
            self.gates.install()
        self.remedies.install()
        self._apply_budget()
        self._announce_plan()
        if self.schedule.detailed(1):
            self._start_measuring(census=False)
            self._span_measured = True
        self._span_start = time.perf_counter()

    def finish(self) -> None:
        """Emit what is left (the span after the last step) and remove every hook."""
        if self._measuring or self.step == 0:
            self.emit(self._sample(span="tail"))
        self._stop_measuring()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.phases.remove_autograd_wrappers()
        self.loaders.remove()
        self.batch_args.remove()
        if self.gates is not None:
            self.gates.remove()
        self.remedies.remove()
        self._report_remedies()
        _LIVE_SESSIONS.discard(self)

    def emit(self, event: Event) -> None:
        self.sink.emit(event)

    # -- the plan's remedies and the memory budget ---------------------------------------------------
    def _apply_budget(self) -> None:
        budget = self.settings.memory_budget
        if not budget:
            return
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                total = torch.cuda.get_device_properties(index).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), index)
            where = f"each CUDA device (set_per_process_memory_fraction of {format_bytes(budget)})"
        else:
            self.accountant.budget = ("cpu", budget)
            self.accountant.on_budget_exceeded = self._budget_exceeded
            where = "cpu: tensor allocations beyond it raise torch.OutOfMemoryError"
        self.emit(Note(level="info", message=f"memory budget {format_bytes(budget)} on {where}"))

    def _budget_exceeded(self, figures: dict[str, Any]) -> None:
        self._budget_oom = figures["message"]
        if figures["phase"] != "evaluation":
            self.loaders.note_backward()  # an OOM before the first backward still names the training loader
        self.emit(OutOfMemory(step=self.step + 1, backend="torchdoctor-budget", **figures))

    def _announce_plan(self) -> None:
        plan = self.plan
        if plan.is_default:
            return
        parts = []
        if plan.micro_batches > 1:
            parts.append(f"{plan.micro_batches} micro-batches per batch"
                         + (" with gradient accumulation" if plan.keep_effective_batch else " (no accumulation)"))
        if plan.eval_no_grad:
            parts.append("evaluation under no_grad")
        if plan.amp:
            parts.append(f"autocast {plan.amp}")
        if plan.host_workers_cap is not None:
            parts.append(f"at most {plan.host_workers_cap} DataLoader workers")
        self.emit(Note(level="info", message=f"attempt {plan.attempt}: " + (", ".join(parts) or "as before")))

    def _before_backward(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        acc = self.loaders.accumulator
        if self._argv_parts > 1:
            acc.current = MicroInfo(self._backwards % self._argv_parts, self._argv_parts, 1 / self._argv_parts)
        self._backwards += 1
        self.loaders.note_backward()
        if self.gates is not None and acc.loss_scale != 1.0:
            args, kwargs = scale_backward_args(args, kwargs, acc.loss_scale)
        return args, kwargs

    def _report_remedies(self) -> None:
        if self.gates is not None:
            acc = self.loaders.accumulator
            has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for root in list(self._modules)
                         for m in root.modules())
            message = (f"micro-batching: {acc.skipped_steps} optimizer.step calls deferred to the end of their "
                       f"batch; {self.step} optimizer steps taken")
            if has_bn:
                message += "; note: BatchNorm statistics saw micro-batches, not whole batches"
            self.emit(Note(level="info", message=message))
        if self.remedies.no_grad_forwards:
            self.emit(Note(level="info", message=f"eval-no-grad: {self.remedies.no_grad_forwards} evaluation "
                                                 f"forwards ran under torch.no_grad()"))
        if self.remedies.autocast_forwards:
            self.emit(Note(level="info", message=f"amp: {self.remedies.autocast_forwards} training forwards ran "
                                                 f"under autocast ({self.plan.amp})"))

    def record_failure(self, exc: BaseException | None) -> bool:
        """Emit an OutOfMemory event for an OOM the script died of; True if it was one."""
        info = classify_oom(exc)
        if info is None:
            return False
        if self._budget_oom is not None and self._budget_oom in info.message:
            return True  # already reported where it was raised
        device = in_use = capacity = None
        if info.backend in ("cuda", "cuda-driver", "cublas", "cudnn", "type") and torch.cuda.is_initialized():
            index = torch.cuda.current_device()
            device = f"cuda:{index}"
            in_use = torch.cuda.memory_allocated(index)
            capacity = torch.cuda.get_device_properties(index).total_memory
        elif info.backend == "cpu":
            device = "cpu"
        if (self.phases.failed_in or self.phases.phase) != "evaluation":
            self.loaders.note_backward()
        self.emit(OutOfMemory(step=self.step + 1, phase=self.phases.failed_in or self.phases.phase, device=device,
                              backend=info.backend, requested_bytes=info.requested_bytes, in_use_bytes=in_use,
                              capacity_bytes=capacity, message=info.message[:1000]))
        return True

    # -- hooks ---------------------------------------------------------------------------------------
    def _step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.phases.set("optimizer")
        if optimizer not in self._optimizers:
            self._optimizers.add(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            count = sum(p.numel() for p in params)
            self.emit(Note(level="info", step=self.step + 1,
                           message=f"optimizer {type(optimizer).__name__} steps {count:,} parameters"))
        if self._measuring:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self.accountant.classify(params, PARAMETERS)
            self.accountant.classify([p.grad for p in params if p.grad is not None], GRADIENTS)

    def _step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._measuring:
            self.accountant.classify(_state_tensors(optimizer), OPTIMIZER_STATE)
        self.step += 1
        seconds = time.perf_counter() - self._span_start
        self.emit(self._sample(span="step", seconds=seconds))
        self.schedule.record(self.step, seconds, self._span_measured, self._census_seconds)
        self._census_seconds = 0.0
        self.phases.set("other")
        if self.schedule.detailed(self.step + 1):
            self._start_measuring(census=not self._measuring)
            self._span_measured = True
        else:
            self._stop_measuring()
            self._span_measured = False
        self.accountant.reset_span()
        self._span_start = time.perf_counter()

    def _phase_changed(self, phase: str) -> None:
        self.accountant.set_phase(phase)

    def _saw_root_module(self, module: torch.nn.Module) -> None:
        if module not in self._modules:
            self._modules.add(module)
            self.accountant.classify(list(module.parameters()) + list(module.buffers()), PARAMETERS)

    # -- measuring windows ---------------------------------------------------------------------------
    def _start_measuring(self, census: bool) -> None:
        if self._measuring:
            return
        if census:
            began = time.perf_counter()
            self._census()
            self._census_seconds = time.perf_counter() - began
        self.accountant.open()
        self.phases.install_module_hooks()
        self._measuring = True

    def _stop_measuring(self) -> None:
        if not self._measuring:
            return
        self._measuring = False
        self.phases.remove_module_hooks()
        if not self.accountant.close() and not self._warned_stranded:
            self._warned_stranded = True
            self.emit(Note(level="warning", step=self.step,
                           message="another TorchDispatchMode is active above torchdoctor's accounting"))

    def _census(self) -> None:
        """Count tensors created while accounting was off, so a window starts from the true total."""
        acct = self.accountant
        for module in list(self._modules):
            acct.classify(list(module.parameters()) + list(module.buffers()), PARAMETERS)
        for optimizer in list(self._optimizers):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            acct.classify(params, PARAMETERS)
            acct.classify([p.grad for p in params if p.grad is not None], GRADIENTS)
            acct.classify(_state_tensors(optimizer), OPTIMIZER_STATE)
        tensor_type = torch.Tensor
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # some objects warn when their class is looked at
            for obj in gc.get_objects():
                if issubclass(type(obj), tensor_type):
                    acct.track(obj, ACTIVATIONS)

    # -- samples ---------------------------------------------------------------------------------------
    def _sample(self, span: str, seconds: float | None = None) -> MemorySample:
        devices: dict[str, dict[str, Any]] = {}
        if self._span_measured:
            devices.update(self.accountant.figures())
        for key, figures in self._cuda.read().items():
            devices.setdefault(key, {}).update(figures)
        rss = None
        if self._process is not None:
            try:
                rss = self._process.memory_info().rss
            except Exception:  # noqa: BLE001
                rss = None
        return MemorySample(step=self.step, span=span, step_time_s=seconds, measured=self._span_measured,
                            rss_bytes=rss, devices=devices)

"""The agent's session: hooks into the training loop and turns what it sees into events.

Always on (cheap): the global optimizer step hooks (one sample per step: step time, RSS, CUDA allocator
counters where CUDA is in use) and a wrapper on ``torch.autograd.backward``. Only on measured steps: exact
tensor accounting and the module hooks that tell forward from evaluation.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
import weakref
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from torchdoctor.agent.doctor.doctor import Doctor
from torchdoctor.agent.hooks.atomic_save import AtomicTorchSave
from torchdoctor.agent.hooks.calls import ClipHooks, ZeroGradHooks, optimizer_params
from torchdoctor.agent.hooks.constructions import Constructions
from torchdoctor.agent.hooks.phases import PhaseTracker
from torchdoctor.agent.memory import allocator_probe
from torchdoctor.agent.memory.accounting import (
    ACTIVATIONS,
    ACTIVATIONS_SAVED,
    TensorAccountant,
)
from torchdoctor.agent.memory.cuda import CudaFigures
from torchdoctor.agent.memory.measuring import MeasuredModels
from torchdoctor.agent.memory.rss import RssReader
from torchdoctor.agent.memory.saved_activations import SavedActivations
from torchdoctor.agent.memory.schedule import SamplingSchedule
from torchdoctor.agent.recovery.hooks import RecoveryHooks
from torchdoctor.agent.recovery.training_ledger import TrainingLedger
from torchdoctor.agent.resume.checkpoints import RunCheckpoints
from torchdoctor.agent.resume.replay import RunResume
from torchdoctor.config import AgentSettings
from torchdoctor.errors import StepsDone
from torchdoctor.events import Event, MemorySample, Note
from torchdoctor.plan import Plan

_LIVE_SESSIONS: "weakref.WeakSet[AgentSession]" = weakref.WeakSet()


def live_sessions() -> list["AgentSession"]:
    """The sessions installed in this process now (one under ``torchdoctor run`` or ``watch``)."""
    return list(_LIVE_SESSIONS)


def _after_fork_in_child() -> None:
    for session in list(_LIVE_SESSIONS):
        session.accountant.detach_after_fork()


@functools.cache
def _once_per_process() -> None:
    """Set up by the first session of a process (never at import: importing the agent changes nothing)."""
    os.register_at_fork(after_in_child=_after_fork_in_child)  # a DataLoader worker's accountant only passes through


def _quiet_global_hook_warning() -> None:
    # Our global module hooks exist only on measured steps; torch warns that they fire twice through a
    # torch.compile'd module, which is harmless for counting root calls and not the user's concern.
    warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks",
                            category=UserWarning)


CLOSURE_PASSES_MEASURED = 2  # forward/backward passes of an optimizer closure counted op by op in a measured step


class AgentSession:
    """Installs the hooks for one run and emits ``MemorySample`` events into ``sink``."""

    def __init__(self, settings: AgentSettings, sink: Any) -> None:
        self.settings = settings
        self.sink = sink
        self.step = 0
        self.accountant = TensorAccountant()
        self.models = MeasuredModels(self.accountant, measuring=lambda: self._measuring)
        self.phases = PhaseTracker(self._phase_changed, self._saw_root_module)
        self.accountant.module_stack = self.phases.module_stack
        self.accountant.namer = self.models.namer(lambda: self.constructions.optimizers.stepped())
        accounting = settings.accounting
        if settings.memory_budget and not torch.cuda.is_available():
            accounting = "exact"  # the budget is enforced at every allocation
        self.schedule = SamplingSchedule(accounting, settings.first_steps, settings.sample_every)
        self._no_probe = ""  # why the CPU's figures are not the allocator's ("": they are, or accounting is off)
        if self.schedule.mode != "off":
            probe, self._no_probe = allocator_probe.start(torch)
            if probe is not None:
                self.accountant.attach_probe(probe)
        # where the CPU's tensor figures come from (report.json accounting.cpu_figures)
        self.cpu_figures = allocator_probe.figures_source(self._no_probe) if self.schedule.mode != "off" else "off"
        # Which measured steps also see every op (the largest tensors at a peak are named; without the probe, the
        # figures themselves): with the probe, figures, phases and breakdown come from the allocator on every
        # measured step, so exact mode goes op by op only on the sampled mode's steps (unless a budget judges ops).
        ops_sampled = (self.schedule.mode == "exact" and self.accountant.probe is not None
                       and not settings.memory_budget)
        self.op_schedule = (SamplingSchedule("sampled", settings.first_steps, settings.sample_every) if ops_sampled
                            else self.schedule)
        self.saved_activations = (SavedActivations(self._saved_for_backward) if self.schedule.mode != "off"
                                  else None)
        plan = Plan.read(settings.plan_path) if settings.plan_path else Plan()
        self.constructions = Constructions()
        self.zero_grad_hooks = ZeroGradHooks()
        self.clip_hooks = ClipHooks()
        self.backwards_since_step = 0
        self.backwards_total = 0
        self.ledger = TrainingLedger()
        self.phases.root_forward = self.ledger.root_forward
        self.ledger.in_backward = lambda: self.phases.phase == "backward"
        self.ledger.in_step = lambda: self.phases.in_step
        self.recovery = RecoveryHooks(plan, settings.memory_budget, self)
        self.atomic_save = AtomicTorchSave() if settings.atomic_save else None
        self.checkpoints = (RunCheckpoints(settings.checkpoint_dir, settings.checkpoint_every, self)
                            if settings.checkpoint_dir and settings.checkpoint_every else None)
        self.resume: RunResume | None = None
        self.doctor = Doctor(self) if settings.doctor else None
        self._resume_from = plan.resume_from
        self._handles: list[Any] = []
        self._closure_noted = False
        self._closure_paused = False
        self._manual_updates = 0  # the ledger's manual updates that ended a step so far
        self._measuring = False
        self._span_measured = False
        self._span_ops = False  # whether this span's ops are seen one by one
        self._span_start = time.perf_counter()
        self._census_seconds = 0.0
        self._warned_stranded = False
        self._cuda = CudaFigures()
        self._rss = RssReader()

    # -- lifetime ------------------------------------------------------------------------------------
    def start(self) -> None:
        _once_per_process()
        _quiet_global_hook_warning()
        _LIVE_SESSIONS.add(self)
        if self._no_probe:
            self.emit(Note(level="info", step=None, message=(
                f"CPU tensor figures count op outputs only: {self._no_probe}; kernels' own buffers "
                f"(oneDNN convolution reorders, RNN workspaces) are not seen")))
        self._handles = [
            register_optimizer_step_pre_hook(self._step_pre),
            register_optimizer_step_post_hook(self._step_post),
        ]
        self.phases.install_autograd_wrappers()
        self.constructions.install()
        if self.schedule.mode != "off":
            self.constructions.on_optimizer.append(self.models.watch_gradients)
        self.constructions.on_optimizer.append(self.ledger.optimizer_made)
        self.zero_grad_hooks.install()
        self.zero_grad_hooks.listeners.append(self._zero_grad_seen)
        self.clip_hooks.install()
        self.recovery.install()
        if self.atomic_save is not None:
            self.atomic_save.install()
        if self.checkpoints is not None:
            self.checkpoints.install()
        if self.doctor is not None:
            self.doctor.install()
        if self._resume_from:
            self.resume = RunResume(self._resume_from, self)
            self.resume.install()
        if self.schedule.detailed(1):
            self._start_measuring(ops=self.op_schedule.detailed(1), census=False)
            self._span_measured = True
        self._span_start = time.perf_counter()

    def finish(self) -> None:
        """Emit what is left (the span after the last step) and remove every hook."""
        self.emit(self.ledger.finish(self.recovery.loaders.training_passes(), self.recovery.step_calls(),
                                     self.recovery.settings(), self.recovery.remedy_counts(),
                                     self.constructions.optimizers.alive()))
        if self.resume is not None:
            self.resume.finish()
        if self.doctor is not None:
            self.doctor.finish()
        # the work after the last step (an evaluation): measured, or the allocator's figures, or at least the
        # resident memory's high-water mark (a peak there is then reported as possibly unmeasured)
        self.emit(self._sample(span="tail"))
        self._stop_measuring()
        if self.saved_activations is not None:
            self.saved_activations.remove()
        self.models.remove_gradient_hooks()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for listener in (self.models.watch_gradients, self.ledger.optimizer_made):
            if listener in self.constructions.on_optimizer:
                self.constructions.on_optimizer.remove(listener)
        self.phases.remove_autograd_wrappers()
        if self.doctor is not None:
            self.doctor.remove()
        self.recovery.remove()
        self.constructions.remove()
        self.zero_grad_hooks.remove()
        self.clip_hooks.remove()
        if self.checkpoints is not None:
            self.checkpoints.remove()
        if self.atomic_save is not None:
            self.atomic_save.remove()
            if self.atomic_save.saves:
                self.emit(Note(level="info", message=f"{self.atomic_save.saves} torch.save call(s) to a path were "
                                                     f"written atomically"))
        _LIVE_SESSIONS.discard(self)

    def emit(self, event: Event) -> None:
        self.sink.emit(event)

    def record_failure(self, exc: BaseException | None) -> bool:
        """Report an OOM the script died of (see RecoveryHooks); True if it was one."""
        return self.recovery.record_failure(exc)

    @property
    def root_modules(self) -> list[torch.nn.Module]:
        return list(self.models.modules)

    def resident_bytes(self) -> int | None:
        """The process's resident memory now (None where it cannot be read)."""
        return self._rss.read()

    @property
    def measuring(self) -> bool:
        """Whether this span is measured exactly (module hooks, and so the forward/evaluation phases, are on)."""
        return self._measuring

    # -- hooks ---------------------------------------------------------------------------------------
    def backward_seen(self, tensors: Any, retain_graph: bool = False) -> None:
        """A backward pass is about to run from ``tensors`` (the script's loss)."""
        if self.doctor is not None:
            self.doctor.before_backward(tensors, retain_graph)
        self.backwards_since_step += 1
        self.backwards_total += 1
        if self._measuring and self.phases.in_step and self.backwards_since_step > CLOSURE_PASSES_MEASURED:
            # an optimizer closure (LBFGS) evaluates the loss many times a step, all alike: the first passes are
            # measured op by op, the rest by the allocator's figures only (the breakdown stays the first ones')
            self.accountant.close()  # phases stay tracked: the allocator's peaks keep their phase
            self._closure_paused = True
            if not self._closure_noted:
                self._closure_noted = True
                self.emit(Note(level="info", step=self.step + 1, message=(
                    f"the optimizer's closure runs several forward/backward passes per step: the first "
                    f"{CLOSURE_PASSES_MEASURED} of each measured step are counted op by op, the others only by "
                    f"the CPU allocator's figures")))
        if self.resume is not None:
            self.resume.before_backward(tensors)
        if self.checkpoints is not None:
            self.checkpoints.saw_backward(tensors)

    def _step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        record = self.constructions.optimizers.record(optimizer)
        record.steps += 1
        record.last_step = self.step + 1
        if self.resume is not None:
            self.resume.before_step(self.constructions.optimizers.alive() or [optimizer], optimizer)
        if self.checkpoints is not None:
            self.checkpoints.before_step()
        if self.doctor is not None:
            self.doctor.before_step(optimizer)
        if (args and callable(args[0])) or callable(kwargs.get("closure")):
            self.ledger.closure = True
        self.phases.in_step = True
        self.phases.set("optimizer")
        if record.steps == 1:
            count = sum(p.numel() for p in optimizer_params(optimizer))
            self.emit(Note(level="info", step=self.step + 1,
                           message=f"optimizer {type(optimizer).__name__} steps {count:,} parameters"))
        if self._measuring:
            self.models.step_began(optimizer)

    def _step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._measuring:
            self.models.step_ended(optimizer)
        self.ledger.stepped(optimizer)
        self.phases.in_step = False
        self._end_step()

    def manual_updates_seen(self) -> None:
        """The script updated its parameters itself (no torch.optim optimizer), as the ledger found: that ends a
        step, for the figures, the sampling, ``ci --steps`` and the budget, as ``optimizer.step()`` does."""
        if self.ledger.manual_updates > self._manual_updates:
            self._manual_updates = self.ledger.manual_updates
            if not self.constructions.optimizers.stepped():
                self._end_step()

    def _zero_grad_seen(self, params: Any, allowed: bool) -> None:
        if not self.constructions.optimizers.stepped():
            self.ledger.check_manual_update()  # an update made since the last backward ends the step here
            self.manual_updates_seen()

    def _end_step(self) -> None:
        if self._closure_paused:  # measured again from the next window on, after a census
            self._closure_paused = False
            self._stop_measuring()
        self.step += 1
        self.backwards_since_step = 0
        self.recovery.loaders.position.stepped()
        seconds = time.perf_counter() - self._span_start
        self.emit(self._sample(span="step", seconds=seconds))
        self.schedule.record(self.step, seconds, self._span_measured, self._census_seconds)
        if self.op_schedule is not self.schedule:
            self.op_schedule.record(self.step, seconds, self._span_ops, self._census_seconds)
        self._census_seconds = 0.0
        self.phases.set("other")
        if self.schedule.detailed(self.step + 1):
            self._start_measuring(ops=self.op_schedule.detailed(self.step + 1), census=True)
            self._span_measured = True
        else:
            self._stop_measuring()
            self._span_measured = False
        self.accountant.reset_span()
        self._span_start = time.perf_counter()
        if self.settings.max_steps and self.step >= self.settings.max_steps:
            raise StepsDone(f"{self.step} optimizer steps taken, as asked")

    def _phase_changed(self, phase: str) -> None:
        self.accountant.set_phase(phase)
        saved = self.saved_activations
        if saved is not None:
            if phase == "forward" and self._measuring:
                saved.forward_began()
            else:
                saved.forward_ended()

    def _saved_for_backward(self, tensors: list[torch.Tensor]) -> None:
        self.accountant.classify(tensors, ACTIVATIONS_SAVED, only_from=ACTIVATIONS)

    def adopt_module(self, module: torch.nn.Module) -> None:
        """A model the caller names (``watch(model, ...)``): a root module from the start."""
        self._saw_root_module(module)

    def _saw_root_module(self, module: torch.nn.Module) -> None:
        self.models.root_module(module)

    # -- measuring windows ---------------------------------------------------------------------------
    def _start_measuring(self, ops: bool, census: bool) -> None:
        """Phases and the breakdown from now on; ``ops``: every op's outputs too (after a ``census`` of what was
        made while they were not seen)."""
        self._span_ops = ops
        self.phases.names_wanted = ops
        if ops and not self.accountant.is_open:
            if census:
                began = time.perf_counter()
                self._census()
                self._census_seconds = time.perf_counter() - began
            self.accountant.open()
        elif not ops and self.accountant.is_open:
            self._close_accountant()
        if not self._measuring:
            self.phases.install_module_hooks()
            self._measuring = True

    def _stop_measuring(self) -> None:
        self._span_ops = False
        if self.accountant.is_open:
            self._close_accountant()
        if not self._measuring:
            return
        self._measuring = False
        self.phases.remove_module_hooks()

    def _close_accountant(self) -> None:
        if not self.accountant.close() and not self._warned_stranded:
            self._warned_stranded = True
            self.emit(Note(level="warning", step=self.step,
                           message="another TorchDispatchMode is active above torchdoctor's accounting"))

    def _census(self) -> None:
        """Count tensors created while accounting was off, so a window starts from the true total."""
        self.models.census(self.constructions.optimizers.stepped(), ACTIVATIONS)

    # -- samples ---------------------------------------------------------------------------------------
    def _sample(self, span: str, seconds: float | None = None) -> MemorySample:
        devices: dict[str, dict[str, Any]] = {}
        if self._span_measured:
            devices.update(self.accountant.figures())
        else:
            devices.update(self.accountant.allocator_figures())  # the allocator's total and peak, no breakdown
        for key, figures in self._cuda.read().items():
            devices.setdefault(key, {}).update(figures)
        rss = self._rss.read()
        rss_peak = self._rss.span_peak() if self.accountant.probe is None and self.schedule.mode != "off" else None
        return MemorySample(step=self.step, span=span, step_time_s=seconds, measured=self._span_measured,
                            rss_bytes=rss, devices=devices, rss_peak_bytes=rss_peak)

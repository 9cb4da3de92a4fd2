"""The agent's side of OOM recovery: applies the supervisor's plan and reports OOMs.

It installs what the plan asks for (split DataLoaders and accumulation gates, eval no_grad, autocast, a worker
cap), the memory budget, and the watches that tell the supervisor what it can change next time (DataLoaders
feeding backward, a batch-size option).
"""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.agent.doctor.evidence import first_tensor
from torchdoctor.agent.recovery.accumulation import AccumulationGates, MicroInfo, scale_backward_args
from torchdoctor.agent.recovery.batch_args import ACCUMULATION_DESTS, BATCH_DESTS, BatchArgumentWatch
from torchdoctor.agent.recovery.framework_settings import FrameworkSettings
from torchdoctor.agent.recovery.loop_reading import training_loop
from torchdoctor.agent.recovery.micro_batches import LoaderWatch
from torchdoctor.agent.recovery.remedies import ForwardRemedies
from torchdoctor.events import Note, OutOfMemory
from torchdoctor.oom import classify_oom
from torchdoctor.plan import Plan
from torchdoctor.sizes import format_bytes


def _single_tensor_path(optimizer: torch.optim.Optimizer) -> None:
    """The optimizer-foreach remedy: the single-tensor implementation (temporaries of one parameter at a time)."""
    optimizer.defaults["foreach"] = False
    for group in optimizer.param_groups:
        group["foreach"] = False


class RecoveryHooks:
    def __init__(self, plan: Plan, memory_budget: int | None, session: Any) -> None:
        self.plan = plan
        self.memory_budget = memory_budget
        self.session = session
        ours = plan.accumulation == "torchdoctor"  # torchdoctor gates the script's loop (else the script does)
        split = {index: plan.micro_batches for index in plan.train_loaders} if plan.micro_batches > 1 else {}
        split.update({index: plan.eval_parts for index in plan.eval_loaders if plan.eval_parts > 1})
        gated = set(plan.train_loaders) if ours and plan.keep_effective_batch else set()
        keep_rng = bool(session.settings.checkpoint_dir and session.settings.checkpoint_every)
        sizes = {index: plan.micro_size for index in plan.train_loaders} if plan.micro_size else {}
        self.loaders = LoaderWatch(session.emit, split, plan.host_workers_cap, keep_rng=keep_rng, gated=gated,
                                   sizes=sizes)
        self.batch_args = BatchArgumentWatch(session.emit, plan.batch_arg)
        self.frameworks = FrameworkSettings(plan, session.emit)
        self._argv_parts = plan.micro_batches if ours and plan.batch_arg and plan.micro_batches > 1 else 1
        accumulate = ours and plan.micro_batches > 1 and plan.keep_effective_batch
        self.gates = AccumulationGates(self.loaders.accumulator) if accumulate else None
        self.remedies = ForwardRemedies(plan.eval_no_grad, plan.amp, checkpoint=plan.checkpoint,
                                        offload=plan.offload, phases=session.phases)
        self._backwards = 0
        self._budget_oom: str | None = None

    def install(self) -> None:
        phases = self.session.phases
        phases.transform_backward = self._before_backward
        phases.after_backward = self.loaders.accumulator.after_backward if self.gates else None
        self.loaders.on_batch = self.session.ledger.delivered
        self.loaders.install()
        self.batch_args.install()
        self.frameworks.install()
        if self.plan.foreach_off:
            self.session.constructions.on_optimizer.append(_single_tensor_path)
        if self.gates is not None:
            self.gates.install(self.session.constructions, self.session.zero_grad_hooks, self.session.clip_hooks)
            self.loaders.accumulator.on_normalise = self.session.ledger.normalise_loss
        self.remedies.install()
        self._apply_budget()
        self._announce_plan()

    def remove(self) -> None:
        self.loaders.remove()
        self.batch_args.remove()
        self.frameworks.remove()
        if _single_tensor_path in self.session.constructions.on_optimizer:
            self.session.constructions.on_optimizer.remove(_single_tensor_path)
        if self.gates is not None:
            self.gates.remove()
        self.remedies.remove()
        self._report_remedies()

    def _apply_budget(self) -> None:
        budget = self.memory_budget
        if not budget:
            return
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                total = torch.cuda.get_device_properties(index).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), index)
            where = f"each CUDA device (set_per_process_memory_fraction of {format_bytes(budget)})"
        else:
            self.session.accountant.budget = ("cpu", budget)
            self.session.accountant.on_budget_exceeded = self._budget_exceeded
            where = "cpu: tensor allocations beyond it raise torch.OutOfMemoryError"
        self.session.emit(Note(level="info", message=f"memory budget {format_bytes(budget)} on {where}"))

    def _budget_exceeded(self, figures: dict[str, Any]) -> None:
        self._budget_oom = figures["message"]
        loader = self.loaders.last_loader
        if figures["phase"] == "other" and self.loaders.fetching is not None:
            loader = self.loaders.fetching  # a DataLoader making its batch: the phase is data loading
            figures = {**figures, "phase": "data"}
            if not self.session.backwards_total:  # its first batch, before any backward: the training loader
                self.loaders.last_loader = loader
                self.loaders.note_backward()
        elif figures["phase"] != "evaluation":
            self.loaders.note_backward()  # an OOM before the first backward still names the training loader
        self.session.emit(OutOfMemory(step=self.session.step + 1, backend="torchdoctor-budget", loader=loader,
                                      grad_enabled=self.session.phases.root_grad, **figures))

    def _announce_plan(self) -> None:
        plan = self.plan
        if plan.is_default:
            return
        parts = []
        if plan.micro_batches > 1:
            who = (" with the script's own gradient accumulation" if plan.accumulation == "script"
                   else " with gradient accumulation" if plan.keep_effective_batch else " (no accumulation)")
            parts.append((f"micro-batches of {plan.micro_size}" if plan.micro_size else
                          f"{plan.micro_batches} micro-batches per batch") + who)
        if plan.eval_no_grad:
            parts.append("evaluation under no_grad")
        if plan.eval_parts > 1:
            parts.append(f"evaluation batches split in {plan.eval_parts}")
        if plan.checkpoint:
            parts.append("activation checkpointing")
        if plan.offload:
            parts.append("saved activations offloaded to host memory")
        if plan.foreach_off:
            parts.append("optimizers without foreach")
        if plan.amp:
            parts.append(f"autocast {plan.amp}")
        if plan.host_workers_cap is not None:
            parts.append(f"at most {plan.host_workers_cap} DataLoader workers")
        if plan.resume_from:
            parts.append("resuming from the newest run checkpoint")
        self.session.emit(Note(level="info", message=f"attempt {plan.attempt}: " + (", ".join(parts) or "as before")))

    def _before_backward(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        acc = self.loaders.accumulator
        if self._argv_parts > 1:
            acc.current = MicroInfo(self._backwards % self._argv_parts, self._argv_parts, 1 / self._argv_parts)
        self._backwards += 1
        self.loaders.note_backward()
        retain = args[2] if len(args) > 2 else kwargs.get("retain_graph")
        create = args[3] if len(args) > 3 else kwargs.get("create_graph", False)
        tensors = args[0] if args else kwargs.get("tensors")
        if self._backwards == 1:  # the first backward pass: read the training loop around it
            self.session.ledger.loop = self._read_loop()
        self.session.backward_seen(tensors, bool(retain or create))
        loss = first_tensor(tensors)
        reduction = self.session.ledger.reduction_of(loss)
        scale = acc.scale_for(reduction.kind, reduction.tokens) if self.gates is not None else 1.0
        self.session.ledger.backward(loss, scale, reduction)
        self.session.manual_updates_seen()
        if scale != 1.0:
            args, kwargs = scale_backward_args(args, kwargs, scale)
        return args, kwargs

    def _read_loop(self) -> dict[str, Any] | None:
        settings = self.settings()
        batch = {n.lstrip("-").replace("-", "_") for n in [(settings.get("batch") or {}).get("name") or ""] if n}
        accumulation = {n.lstrip("-").replace("-", "_")
                        for n in [(settings.get("accumulation") or {}).get("name") or ""] if n}
        try:
            return training_loop(batch | set(BATCH_DESTS), accumulation | set(ACCUMULATION_DESTS))
        except (RecursionError, ValueError):  # an unusual source: the loop stays unknown
            return None

    def step_calls(self) -> int:
        """optimizer.step calls the script made: the steps taken and those micro-batching deferred."""
        return self.session.step + self.loaders.accumulator.skipped_steps

    def remedy_counts(self) -> dict[str, int]:
        """What the plan's remedies did in this attempt."""
        checkpointing = self.remedies.checkpointing
        counts = {"autocast_forwards": self.remedies.autocast_forwards,
                  "no_grad_forwards": self.remedies.no_grad_forwards,
                  "offloaded_forwards": self.remedies.offloaded_forwards,
                  "checkpointed_blocks": checkpointing.block_count if checkpointing else 0,
                  "checkpointed_calls": checkpointing.checkpointed_calls if checkpointing else 0,
                  "recomputed_checked": checkpointing.recomputed_checked if checkpointing else 0,
                  "recomputed_differed": checkpointing.recomputed_differed if checkpointing else 0,
                  "deferred_steps": self.loaders.accumulator.skipped_steps}
        return {k: v for k, v in counts.items() if v}

    def settings(self) -> dict[str, Any]:
        """The script's own settings that a relaunch can change (batch size, gradient accumulation)."""
        found = dict(self.frameworks.found) or self.batch_args.settings()
        if (found.get("accumulation") or {}).get("via") == "lightning" and "batch" not in found:
            training = sorted(self.loaders.training_loaders)  # Lightning's batch size is its DataLoader's
            size = self.loaders.batch_size(training[0]) if training else None
            if size:
                found["batch"] = {"via": "lightning", "name": f"DataLoader #{training[0]} batch_size", "value": size}
        return found

    def _report_remedies(self) -> None:
        if self.gates is not None:
            acc = self.loaders.accumulator
            has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for root in self.session.root_modules
                         for m in root.modules())
            message = (f"micro-batching: {acc.skipped_steps} optimizer.step calls deferred to the end of their "
                       f"batch; {self.session.step} optimizer steps taken")
            if has_bn:
                message += "; note: BatchNorm statistics saw micro-batches, not whole batches"
            self.session.emit(Note(level="info", message=message))
        if self.remedies.no_grad_forwards:
            self.session.emit(Note(level="info", message=f"eval-no-grad: {self.remedies.no_grad_forwards} evaluation "
                                                 f"forwards ran under torch.no_grad()"))
            if self.session.doctor is not None:  # the run finished with them under no_grad: none needed autograd
                self.session.doctor.report("TD110", self.remedies.first_no_grad_at, (
                    f"an earlier attempt ran out of memory in evaluation with autograd on (eval-mode forwards whose "
                    f"outputs require grad keep their activations for a backward pass that never comes); this "
                    f"attempt ran its {self.remedies.no_grad_forwards} evaluation forwards under torch.no_grad() "
                    f"and finished"))
        checkpointing = self.remedies.checkpointing
        if checkpointing is not None:
            self.session.emit(Note(level="info", message=(
                f"checkpoint: {checkpointing.block_count} blocks, {checkpointing.checkpointed_calls} block forwards "
                f"ran under activation checkpointing" if checkpointing.block_count else
                "checkpoint: no repeated blocks were found in the models that trained")))
        if self.remedies.offloaded_forwards:
            self.session.emit(Note(level="info", message=f"offload: {self.remedies.offloaded_forwards} training "
                                                         f"forwards kept their saved activations in host memory"))
        if self.remedies.autocast_forwards:
            self.session.emit(Note(level="info", message=f"amp: {self.remedies.autocast_forwards} training forwards "
                                                         f"ran under autocast ({self.plan.amp})"))

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
        phase = self.session.phases.failed_in or self.session.phases.phase
        loader = self.loaders.last_loader
        if phase == "other" and self.loaders.failed_fetch is not None:
            phase, loader = "data", self.loaders.failed_fetch
        elif phase != "evaluation":
            self.loaders.note_backward()  # an OOM before the first backward still names the training loader
        if phase == "other" and not self.session.measuring:
            phase = None  # forward/evaluation are only told apart on measured steps: say we do not know
        self.session.emit(OutOfMemory(
            step=self.session.step + 1, phase=phase, device=device, backend=info.backend,
            requested_bytes=info.requested_bytes, in_use_bytes=in_use, capacity_bytes=capacity,
            message=info.message[:1000], loader=loader, grad_enabled=self.session.phases.root_grad))
        return True

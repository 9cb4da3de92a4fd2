"""The batch and gradient-accumulation settings of training frameworks, read and (under a plan) changed where the
script sets them: ``transformers.TrainingArguments`` (``per_device_train_batch_size``,
``gradient_accumulation_steps``) and the Lightning ``Trainer`` (``accumulate_grad_batches``; its batches come from
the script's DataLoader, which the plan splits). Nothing is imported: the classes are wrapped when the script
imports their modules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.agent.import_hook import TorchImportWatcher
from torchdoctor.events import Note
from torchdoctor.plan import Plan

HF_MODULE = "transformers.training_args"
LIGHTNING_MODULES = ("lightning.pytorch.trainer.trainer", "pytorch_lightning.trainer.trainer")


class FrameworkSettings:
    def __init__(self, plan: Plan, emit: Callable[[Any], None]) -> None:
        self.plan = plan
        self._emit = emit
        self.found: dict[str, dict[str, Any]] = {}  # "batch" / "accumulation" -> via, name, value (as asked)
        self._patches = ClassPatches()
        self._watchers = [TorchImportWatcher(self._hf_imported, HF_MODULE)]
        self._watchers += [TorchImportWatcher(functools.partial(self._lightning_imported, name), name)
                           for name in LIGHTNING_MODULES]

    def install(self) -> None:
        for watcher in self._watchers:
            watcher.install()

    def remove(self) -> None:
        for watcher in self._watchers:
            watcher.remove()
        self._patches.restore()

    def _applies(self, framework: str) -> bool:
        return self.plan.framework == framework and self.plan.micro_batches > 1

    def _hf_imported(self) -> None:
        import sys

        cls = getattr(sys.modules.get(HF_MODULE), "TrainingArguments", None)
        if cls is None:
            return
        settings = self

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def __post_init__(args: Any, *a: Any, **k: Any) -> Any:
                if "batch" not in settings.found:
                    settings.found = {
                        "batch": {"via": "hf", "name": "per_device_train_batch_size",
                                  "value": args.per_device_train_batch_size},
                        "accumulation": {"via": "hf", "name": "gradient_accumulation_steps",
                                         "value": args.gradient_accumulation_steps}}
                plan = settings.plan
                if settings._applies("hf") and plan.batch_arg_size and plan.accumulation_size:
                    args.per_device_train_batch_size = plan.batch_arg_size // plan.micro_batches
                    args.gradient_accumulation_steps = plan.accumulation_size * plan.micro_batches
                    settings._emit(Note(level="info", message=(
                        f"TrainingArguments: per_device_train_batch_size {plan.batch_arg_size} -> "
                        f"{args.per_device_train_batch_size}, gradient_accumulation_steps {plan.accumulation_size} "
                        f"-> {args.gradient_accumulation_steps}")))
                return original(args, *a, **k)
            return __post_init__

        self._patches.wrap(cls, "__post_init__", wrap)

    def _lightning_imported(self, module: str) -> None:
        import sys

        cls = getattr(sys.modules.get(module), "Trainer", None)
        if cls is None:
            return
        settings = self

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def __init__(trainer: Any, *a: Any, **k: Any) -> Any:
                asked = k.get("accumulate_grad_batches", 1)
                if "accumulation" not in settings.found and isinstance(asked, int):
                    settings.found = {"accumulation": {"via": "lightning", "name": "accumulate_grad_batches",
                                                       "value": asked}}
                plan = settings.plan
                if settings._applies("lightning") and plan.accumulation_size:
                    k["accumulate_grad_batches"] = plan.accumulation_size * plan.micro_batches
                    settings._emit(Note(level="info", message=(
                        f"Trainer: accumulate_grad_batches {plan.accumulation_size} -> "
                        f"{k['accumulate_grad_batches']}, the DataLoader's batches split in {plan.micro_batches}")))
                return original(trainer, *a, **k)
            return __init__

        self._patches.wrap(cls, "__init__", wrap)

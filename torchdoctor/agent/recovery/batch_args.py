"""The script's own settings that torchdoctor can change in a relaunch: its batch size and, where it has one, its
gradient-accumulation setting, found on its command line (argparse) or as nanoGPT-style configuration globals
(module-level names a ``--key=value`` configurator overrides)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from torchdoctor.agent.hooks.patching import ClassPatches
from torchdoctor.config import BATCH_OPTIONS
from torchdoctor.events import BatchSource

BATCH_DESTS = BATCH_OPTIONS
ACCUMULATION_DESTS = ("gradient_accumulation_steps", "grad_accum_steps", "grad_accumulation_steps",
                      "accumulate_grad_batches", "accumulation_steps", "gradient_accumulation", "grad_accum",
                      "accum_steps", "accum_iter", "accum_iters", "update_freq")


def _names(action: argparse.Action) -> set[str]:
    """An option's names as the lists above spell them (``--batchSize`` is ``batchsize``)."""
    return {n.lower() for n in (action.dest, *(o.lstrip("-").replace("-", "_") for o in action.option_strings))}


def find_option(parser: argparse.ArgumentParser, namespace: Any, dests: tuple[str, ...], wanted: str | None = None
                ) -> tuple[str, int] | None:
    """(option string, value) of the parser's option named ``wanted`` or one of ``dests``, if its value is an int."""
    for action in parser._actions:  # argparse has no public list of actions
        names = _names(action)
        matches = wanted.lstrip("-").replace("-", "_").lower() in names if wanted else bool(names & set(dests))
        if not matches or not action.option_strings:
            continue
        value = getattr(namespace, action.dest, None)
        if isinstance(value, int) and not isinstance(value, bool):
            option = max(action.option_strings, key=len)
            return option, value
    return None


def find_batch_action(parser: argparse.ArgumentParser, namespace: Any, wanted: str | None = None
                      ) -> tuple[str, int] | None:
    """(option string, value) of the parser's batch-size option, if it has one with an int value."""
    return find_option(parser, namespace, BATCH_DESTS, wanted)


def configurator_globals(wanted: str | None = None) -> dict[str, dict[str, Any]]:
    """nanoGPT-style settings: int globals of the script's ``__main__`` named like a batch size and an
    accumulation count, when the script overrides its globals from ``--key=value`` arguments (a configurator)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            source = handle.read()
    except OSError:
        return {}
    if "configurator" not in source and not ("globals()[" in source and "sys.argv" in source):
        return {}
    found: dict[str, dict[str, Any]] = {}
    space = vars(main)
    for role, names in (("batch", (wanted.lstrip("-"),) if wanted else BATCH_DESTS),
                        ("accumulation", ACCUMULATION_DESTS)):
        for name in names:
            value = space.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                found[role] = {"via": "global", "name": f"--{name}", "value": value}
                break
    return found


class BatchArgumentWatch:
    def __init__(self, emit: Callable[[Any], None], wanted: str | None = None) -> None:
        self._emit = emit
        self._wanted = wanted
        self._reported = False
        self.found: dict[str, dict[str, Any]] = {}  # "batch" / "accumulation" -> via, name, value
        self._patches = ClassPatches()

    def install(self) -> None:
        watch = self

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def parse_known_args(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
                result = original(parser, *args, **kwargs)
                if not watch._reported:
                    watch._read(parser, result[0])
                return result
            return parse_known_args

        self._patches.wrap(argparse.ArgumentParser, "parse_known_args", wrap)

    def _read(self, parser: argparse.ArgumentParser, namespace: Any) -> None:
        found = find_batch_action(parser, namespace, self._wanted)
        if found is None:
            return
        self._reported = True
        self.found["batch"] = {"via": "argparse", "name": found[0], "value": found[1]}
        accumulation = find_option(parser, namespace, ACCUMULATION_DESTS)
        if accumulation is not None:
            self.found["accumulation"] = {"via": "argparse", "name": accumulation[0], "value": accumulation[1]}
        self._emit(BatchSource(index=-1, source="argument", batch_size=found[1], training=True, detail=found[0]))

    def settings(self) -> dict[str, dict[str, Any]]:
        """What was found on the command line, else among configuration globals."""
        return dict(self.found) or configurator_globals(self._wanted)

    def remove(self) -> None:
        self._patches.restore()

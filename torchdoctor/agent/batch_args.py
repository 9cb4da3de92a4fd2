"""Find the batch size a script takes on its command line (argparse), so the next attempt can change it."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

from torchdoctor.agent.patching import ClassPatches
from torchdoctor.events import BatchSource

BATCH_DESTS = ("batch_size", "train_batch_size", "per_device_train_batch_size", "micro_batch_size", "bs",
               "batchsize")


def find_batch_action(parser: argparse.ArgumentParser, namespace: Any, wanted: str | None = None
                      ) -> tuple[str, int] | None:
    """(option string, value) of the parser's batch-size option, if it has one with an int value."""
    for action in parser._actions:  # argparse has no public list of actions
        names = {action.dest, *(o.lstrip("-").replace("-", "_") for o in action.option_strings)}
        matches = wanted.lstrip("-").replace("-", "_") in names if wanted else action.dest in BATCH_DESTS
        if not matches or not action.option_strings:
            continue
        value = getattr(namespace, action.dest, None)
        if isinstance(value, int) and not isinstance(value, bool):
            option = max(action.option_strings, key=len)
            return option, value
    return None


class BatchArgumentWatch:
    def __init__(self, emit: Callable[[Any], None], wanted: str | None = None) -> None:
        self._emit = emit
        self._wanted = wanted
        self._reported = False
        self._patches = ClassPatches()

    def install(self) -> None:
        watch = self

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def parse_known_args(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
                result = original(parser, *args, **kwargs)
                if not watch._reported:
                    found = find_batch_action(parser, result[0], watch._wanted)
                    if found is not None:
                        watch._reported = True
                        watch._emit(BatchSource(index=-1, source="argument", batch_size=found[1], training=True,
                                                detail=found[0]))
                return result
            return parse_known_args

        self._patches.wrap(argparse.ArgumentParser, "parse_known_args", wrap)

    def remove(self) -> None:
        self._patches.restore()

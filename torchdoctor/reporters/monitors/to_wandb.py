"""``--wandb``: one Weights & Biases run for the whole torchdoctor run, attempts continuing each other's rows."""

from __future__ import annotations

import os
from typing import IO, Any, Callable

from torchdoctor.events import Event, RunStarted
from torchdoctor.reporters.monitors import WANDB_INSTALL, require
from torchdoctor.reporters.monitors.entries import Clock, final_scalars


class WandbMonitor:
    """Logs to one W&B run, at the :class:`Clock`'s rows: attempt 1's rows are its optimizer steps, a later
    attempt's continue after them; ``run/attempt`` on each row says which attempt it came from."""

    def __init__(self, run: Any, table: Callable[..., Any] | None = None) -> None:
        self._run = run
        self._table = table  # wandb.Table, for the texts at the end (None: no table)
        self._clock = Clock()
        self._texts: list[list[Any]] = []

    def event(self, event: Event) -> None:
        placed = self._clock.place(event)
        if placed is None:
            return
        if isinstance(event, RunStarted):
            self._run.config.update({"argv": event.argv, "accounting": event.accounting,
                                     "torch_version": event.torch_version, "cuda_version": event.cuda_version},
                                    allow_val_change=True)
        entry = placed.entry
        for tag, text in entry.texts.items():
            self._texts.append([placed.row, placed.attempt, tag, text])
        self._run.log({**entry.scalars, **entry.texts, "run/attempt": placed.attempt}, step=placed.row)

    def close(self, report: dict[str, Any]) -> None:
        summary = {**final_scalars(report), "outcome": report.get("outcome"),
                   "recovered": bool((report.get("recovery") or {}).get("recovered"))}
        self._run.summary.update(summary)
        if self._table is not None and self._texts:
            table = self._table(columns=["step", "attempt", "tag", "text"], data=self._texts)
            self._run.log({"torchdoctor/events": table}, step=self._clock.row)
        self._run.finish(exit_code=report.get("exit_code") or 0)


def open_wandb(name: str, run_dir: str, target: str, stderr: IO[str]) -> WandbMonitor | None:
    """Start the W&B run (the user's WANDB_* settings win); None, with a warning, when it cannot start."""
    wandb = require("wandb", "--wandb", WANDB_INSTALL)
    service = os.environ.get("WANDB_SERVICE")
    settings = {} if "WANDB_CONSOLE" in os.environ else {"console": "off"}  # our stdout is the script's
    try:
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "torchdoctor"),
                         name=os.environ.get("WANDB_NAME", name), dir=os.environ.get("WANDB_DIR", run_dir),
                         config={"target": target, "run_dir": os.path.abspath(run_dir)}, settings=settings)
    except Exception as exc:  # no login, no network...: the training still runs, without W&B
        print(f"[torchdoctor] wandb: could not start a run ({type(exc).__name__}: {exc}); the run goes on without "
              f"W&B", file=stderr)
        return None
    finally:
        # wandb.init exports its service address; the script's own wandb must not attach to our run's service
        if service is None:
            os.environ.pop("WANDB_SERVICE", None)
        else:
            os.environ["WANDB_SERVICE"] = service
    return WandbMonitor(run, table=getattr(wandb, "Table", None))

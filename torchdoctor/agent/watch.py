"""The doctor for code that calls torchdoctor itself: ``with torchdoctor.watch(model, optimizer):``.

    with torchdoctor.watch(model, optimizer) as doctor:
        for x, y in loader:
            ...  # the training loop, unchanged
    for finding in doctor.findings:
        print(finding.id, finding.location, finding.evidence)

Inside the block the same checks run as under ``torchdoctor run`` (the same agent session, without memory
accounting, checkpoints or OOM recovery). Each finding is also issued as a ``TorchDoctorFinding`` warning when it
is found (``warn=False`` turns that off), and ``fail_on="error"`` (or ``"warning"``) raises ``FindingsError`` at the
end of the block when findings of that level were made. Nothing stays installed after the block.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.checks import SEVERITIES, at_or_above
from torchdoctor.errors import UsageError


class TorchDoctorFinding(UserWarning):
    """A training-loop problem found inside ``torchdoctor.watch``."""


class FindingsError(AssertionError):
    """Raised at the end of ``watch(..., fail_on=...)`` when findings of that level were made."""


@dataclass
class Watch:
    """What ``watch`` found: ``findings`` (``torchdoctor.events.Finding``), in the order they were made."""

    warn: bool = True
    findings: list[Any] = field(default_factory=list)
    active: bool = True  # False when another torchdoctor session (``torchdoctor run``) already watches

    def emit(self, event: Any) -> None:
        from torchdoctor.events import Finding

        if isinstance(event, Finding):
            self.findings.append(event)
            if self.warn:
                warnings.warn(f"{event.id} {event.title} at {event.location or '?'}: {event.evidence}; "
                              f"fix: {event.fix}", TorchDoctorFinding, stacklevel=2)


@contextlib.contextmanager
def watch(*objects: Any, warn: bool = True, fail_on: str | None = None) -> Iterator[Watch]:
    """Watch the training loop inside the block for the doctor's bugs (see ``torchdoctor explain``).

    ``objects``: the models, optimizers, LR schedulers and GradScalers made before the block (those made inside it
    are found by themselves)."""
    if fail_on is not None and fail_on not in SEVERITIES:
        raise UsageError(f"fail_on must be one of {', '.join(SEVERITIES)}, not {fail_on!r}")
    import torch

    from torchdoctor.agent.session import AgentSession, live_sessions
    from torchdoctor.config import AgentSettings

    result = Watch(warn=warn)
    if live_sessions():
        result.active = False  # under `torchdoctor run` the run's own doctor reports
        yield result
        return
    session = AgentSession(AgentSettings(accounting="off", atomic_save=False, doctor=True), result)
    session.start()
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            session.adopt_module(obj)
        elif isinstance(obj, torch.optim.Optimizer):
            session.constructions.optimizers.add(obj)
        elif isinstance(obj, torch.amp.GradScaler):
            session.constructions.scalers.add(obj)
        elif hasattr(obj, "optimizer") and hasattr(obj, "step"):
            session.constructions.schedulers.add(obj)
        else:
            session.finish()
            raise UsageError(f"watch() takes models, optimizers, LR schedulers and GradScalers, not "
                             f"{type(obj).__name__}")
    failed = False
    try:
        yield result
    except BaseException:
        failed = True
        raise
    finally:
        session.finish()
    if not failed and fail_on is not None:
        bad = [f for f in result.findings if at_or_above(f.severity, fail_on)]
        if bad:
            raise FindingsError("; ".join(f"{f.id} at {f.location or '?'}: {f.title}" for f in bad))

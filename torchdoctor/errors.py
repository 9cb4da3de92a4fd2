"""Errors that end a torchdoctor command; only ``cli.py`` turns them into messages and exit codes."""

from __future__ import annotations


class TorchDoctorError(Exception):
    """A failure torchdoctor reports in one line, with an exit code."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(TorchDoctorError):
    """The user's input is wrong (missing script, bad option value, unwritable directory)."""

    exit_code = 2


class StepsDone(BaseException):
    """Raised in the optimizer step hook once the run has taken the steps it was asked for (``torchdoctor ci
    --steps N``). A BaseException so that a script's ``except Exception`` does not swallow it; the agent ends the
    run there with exit code 0."""


class ResumeAbandoned(BaseException):
    """Raised inside a resumed run that finds it cannot reach its checkpoint's position faithfully.

    A BaseException, like SystemExit, so that a script's ``except Exception`` does not swallow it: the agent
    exits and the supervisor relaunches the script from the beginning."""

"""The command line. Thin: parse, build a config, call the core. torch is imported only inside commands.

``main(argv) -> int`` is the one exit point: deep code raises ``TorchDoctorError`` and only this module turns
errors into a one-line message and an exit code.
"""

from __future__ import annotations

import sys

import click

from torchdoctor.cli import ci, estimate, run, show  # noqa: F401 - each adds its commands to the group
from torchdoctor.cli.group import cli
from torchdoctor.errors import TorchDoctorError, UsageError


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = cli.main(args=args, prog_name="torchdoctor", standalone_mode=False)
    except click.exceptions.NoSuchOption as exc:
        return _fail(f"no such option: {exc.option_name} (see torchdoctor {_command(args)} --help)", 2)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `torchdoctor`: its help, as written
        print(exc.format_message(), file=sys.stderr)
        return 2
    except click.exceptions.UsageError as exc:
        message = exc.format_message().rstrip(".")
        return _fail(message[:1].lower() + message[1:], 2)  # click's capital only: what the user typed stays
    except click.exceptions.Abort:
        return _fail("aborted", 130)
    except TorchDoctorError as exc:
        return _fail(str(exc), exc.exit_code)
    return result if isinstance(result, int) else 0


def _command(args: list[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "").strip() or ""


def _fail(message: str, code: int) -> int:
    print(f"torchdoctor: error: {message}", file=sys.stderr)
    return code


__all__ = ["main", "cli", "UsageError"]

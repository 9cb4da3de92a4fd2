"""What several commands share: options declared once, and the files a user asks a command to write."""

from __future__ import annotations

from typing import Any

import click

from torchdoctor.errors import UsageError


def module_option(command: Any) -> Any:
    return click.option("-m", "is_module", is_flag=True,
                        help="Run a module, like python -m (the next word is its name).")(command)


def monitor_options(command: Any) -> Any:
    command = click.option("--wandb", "use_wandb", is_flag=True,
                           help="Also log them to Weights & Biases (needs wandb; WANDB_MODE=offline works without a "
                                "network).")(command)
    return click.option("--tensorboard", "tensorboard_dir", metavar="DIR", default=None,
                        help="Also write the memory figures (per step, per phase) and OOM events for TensorBoard "
                             "(needs the tensorboard extra).")(command)


def torchrun_options(command: Any) -> Any:
    """torchrun's options, as torchrun spells them (supervisor/torchrun_options.py); any of them runs the script
    under torch's launcher. The ones about how the script starts are declared to be refused with why."""
    from torchdoctor.supervisor.torchrun_options import OPTIONS, REFUSED, option_key

    for names in reversed(REFUSED):
        command = click.option(*names, option_key(names), is_flag=True, hidden=True)(command)
    for option in reversed(OPTIONS):
        command = click.option(*option.names, option.key, is_flag=option.flag, default=False if option.flag else None,
                               metavar=None if option.flag else option.metavar, hidden=not option.shown,
                               help=option.help or None)(command)
    return command


def target_arguments(command: Any) -> Any:
    command = click.argument("script_args", nargs=-1, type=click.UNPROCESSED, metavar="[SCRIPT ARGS]...")(command)
    return click.argument("script", metavar="SCRIPT|MODULE")(command)


def check_output(option: str, path: str) -> None:
    """A file the user asked torchdoctor to write: fail in one line, before any work, when it cannot be."""
    import os

    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a directory (give a file name)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path}: the directory {parent} does not exist")


def write_html(path: str, data: dict) -> None:
    """The HTML report, written atomically (a page half-written is never left); one line on stderr says where."""
    from torchdoctor.files import write_atomic
    from torchdoctor.reporters import charts
    from torchdoctor.reporters.html import INSTALL_HINT, render_html

    check_output("--html", path)
    page = render_html(data).encode("utf-8")
    try:
        write_atomic(path, lambda handle: handle.write(page))
    except OSError as exc:
        raise UsageError(f"cannot write --html {path}: {exc.strerror or exc}") from None
    hint = "" if charts.available() else f" (tables only: {INSTALL_HINT} adds the charts)"
    click.echo(f"torchdoctor: HTML report written to {path}{hint}", err=True)

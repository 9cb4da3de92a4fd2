"""The command group every command of torchdoctor's CLI is added to."""

from __future__ import annotations

import click

from torchdoctor import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="torchdoctor")
def cli() -> None:
    """torchdoctor keeps PyTorch training runs alive and honest."""

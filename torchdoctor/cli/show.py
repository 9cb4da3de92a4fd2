"""Commands that show what is there: ``report`` (a recorded run), ``explain`` (a check), ``env`` (torch, CUDA, GPUs)."""

from __future__ import annotations

import sys

import click

from torchdoctor.cli.group import cli
from torchdoctor.cli.shared import write_html
from torchdoctor.errors import UsageError


@cli.command()
@click.argument("check_id", metavar="[ID]", required=False)
def explain(check_id: str | None) -> int:
    """Explain a finding id (e.g. TD101) with a before/after snippet; without ID, list the checks."""
    from torchdoctor.checks import CATALOG
    from torchdoctor.checks import explain as explain_text

    if check_id is None:
        for check in CATALOG.values():
            click.echo(f"{check.id}  {check.severity:<7}  {check.title}")
        return 0
    if check_id.upper() not in CATALOG:
        ids = sorted(CATALOG)
        raise UsageError(f"no check {check_id!r}; the checks are {ids[0]}–{ids[-1]} (torchdoctor explain lists them)")
    click.echo(explain_text(check_id), nl=False)
    return 0


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--html", "html_path", metavar="FILE", default=None,
              help="Write one self-contained HTML page (its charts need the html extra).")
def report(path: str, html_path: str | None) -> int:
    """Show a recorded run again (a run directory or its report.json), or write it as HTML.

    \b
    torchdoctor report torchdoctor-runs/20261126-150400-train
    torchdoctor report RUN --html report.html
    """
    import os

    from torchdoctor.supervisor.report import load_report

    data = load_report(path)  # a run directory without report.json: rebuilt from its events.jsonl
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "report.json")):
        print(f"torchdoctor: {path} has no report.json (its supervisor ended first): rebuilt from events.jsonl",
              file=sys.stderr)
    try:
        if html_path is not None:
            write_html(html_path, data)
            return 0
        from rich.console import Console

        from torchdoctor.reporters.console import render_report

        render_report(data, Console())
    except (TypeError, AttributeError, KeyError, ValueError, IndexError, RecursionError) as exc:
        # fields deeper than load_report checks: still one line, never a traceback
        raise UsageError(f"{path} is not a report torchdoctor can read ({type(exc).__name__}: {exc})") from None
    return 0


@cli.command()
def env() -> int:
    """Show torch, CUDA and GPUs (read through NVML, without creating a CUDA context)."""
    from rich.console import Console

    from torchdoctor.agent.environment import collect_environment
    from torchdoctor.reporters.environment import render_environment

    render_environment(collect_environment(), Console())
    return 0

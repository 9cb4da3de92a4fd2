"""``torchdoctor ci``: the memory gate for CI runners."""

from __future__ import annotations

import math

import click

from torchdoctor.cli.group import cli
from torchdoctor.cli.shared import check_output, module_option, monitor_options, target_arguments, write_html
from torchdoctor.errors import UsageError


@cli.command(context_settings={"allow_interspersed_args": False})
@module_option
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True,
              help="Optimizer steps to run before the script is stopped.")
@click.option("--budget", metavar="SIZE", default=None, help="Fail when peak tensor memory exceeds this (e.g. 6GiB).")
@click.option("--baseline", "baseline_path", metavar="FILE", default=None,
              help="Baseline figures to compare with [default: .torchdoctor/baseline.json when it exists].")
@click.option("--max-increase", default="5%", show_default=True, metavar="PCT",
              help="Fail when a peak grows more than this over the baseline.")
@click.option("--update-baseline", is_flag=True, help="Record this run's figures as the baseline.")
@click.option("--markdown", "markdown_path", metavar="FILE", default=None,
              help="Also write the table as Markdown (written to $GITHUB_STEP_SUMMARY anyway when that is set).")
@click.option("--junit", "junit_path", metavar="FILE", default=None, help="Write a JUnit XML report.")
@click.option("--html", "html_path", metavar="FILE", default=None,
              help="Write the run's HTML report (charts with the html extra).")
@monitor_options
@click.option("--fail-on", type=click.Choice(("error", "warning")), default=None,
              help="Also fail when the doctor reports findings of this severity or worse.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where to record the run (report.json).")
@target_arguments
def ci(is_module: bool, steps: int, budget: str | None, baseline_path: str | None, max_increase: str,
       update_baseline: bool, markdown_path: str | None, junit_path: str | None, html_path: str | None,
       tensorboard_dir: str | None, use_wandb: bool, fail_on: str | None, run_dir: str | None, script: str,
       script_args: tuple[str, ...]) -> int:
    """Gate peak memory in CI: run the first N steps, compare with a budget and a baseline.

    \b
    torchdoctor ci train.py --steps 5 --budget 6GiB
    torchdoctor ci --update-baseline train.py      # record .torchdoctor/baseline.json
    """
    import os

    from torchdoctor.files import write_text_atomic
    from torchdoctor.reporters import ci as ci_report
    from torchdoctor.sizes import parse_size
    from torchdoctor.supervisor.gate import GateRequest, record_baseline, run_gate

    request = GateRequest(script=script, is_module=is_module, script_args=script_args, steps=steps,
                          budget=parse_size(budget) if budget is not None else None, baseline_path=baseline_path,
                          max_increase=_fraction(max_increase), update_baseline=update_baseline, fail_on=fail_on,
                          run_dir=run_dir, tensorboard_dir=tensorboard_dir, wandb=use_wandb)
    for option, target in (("--markdown", markdown_path), ("--junit", junit_path), ("--html", html_path)):
        if target:
            check_output(option, target)
    baseline = request.read_baseline()  # bad input fails before the script runs
    outcome = run_gate(request, baseline)
    failures = outcome.problems + outcome.failing_findings
    click.echo(ci_report.text_table(outcome.rows))
    markdown = ci_report.markdown(outcome.rows, failures, script, outcome.steps, outcome.findings)
    unwritten: list[str] = []  # outputs asked for that could not be written (a full disk): each said in one line

    def write(option: str, path: str, text: str, append: bool = False) -> None:
        try:
            if append:
                with open(path, "a", encoding="utf-8") as handle:  # GitHub's job summary is appended to
                    handle.write(text)
            else:
                write_text_atomic(path, text)
        except OSError as exc:
            unwritten.append(f"cannot write {option} {path} ({exc.strerror or exc})")

    if markdown_path:
        write("--markdown", markdown_path, markdown)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and summary != markdown_path:
        write("$GITHUB_STEP_SUMMARY", summary, markdown, append=True)
    if junit_path:
        write("--junit", junit_path, ci_report.junit(outcome.rows, failures, script, outcome.seconds,
                                                     outcome.findings, outcome.failing_findings))
    if html_path:
        try:
            write_html(html_path, outcome.report)
        except UsageError as exc:
            unwritten.append(str(exc))
    for line in unwritten:
        click.echo(f"torchdoctor ci: {line}", err=True)
    for problem in failures:
        click.echo(f"torchdoctor ci: FAIL: {problem}", err=True)
    if update_baseline:
        written, message = record_baseline(request, outcome)
        click.echo(f"torchdoctor ci: {message}", err=not written)
        return 0 if written and not unwritten else 1
    if baseline is None:
        click.echo(f"torchdoctor ci: no baseline compared (record one with --update-baseline: "
                   f"{request.baseline_file})")
    click.echo(f"torchdoctor ci: {'FAIL' if outcome.failed else 'pass'} · report: "
               f"{os.path.join(outcome.run_dir, 'report.json')}")
    return 1 if outcome.failed or unwritten else 0


def _fraction(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text.strip().removesuffix("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        raise UsageError(f"--max-increase must be a percentage such as 5%, not {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise UsageError(f"--max-increase must be a percentage of 0 or more such as 5%, not {text!r}")
    return value

"""The command line. Thin: parse, build a config, call the core. torch is imported only inside commands.

``main(argv) -> int`` is the one exit point: deep code raises ``TorchDoctorError`` and only this module turns
errors into a one-line message and an exit code.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from torchdoctor import __version__
from torchdoctor.config import ACCOUNTING_MODES, DEFAULT_SAMPLE_EVERY
from torchdoctor.errors import TorchDoctorError, UsageError
from torchdoctor.plan import REMEDIES


# Options and arguments that `run` and `ci` share, declared once.
def _module_option(command: Any) -> Any:
    return click.option("-m", "is_module", is_flag=True,
                        help="Run a module, like python -m (the next word is its name).")(command)


def _monitor_options(command: Any) -> Any:
    command = click.option("--wandb", "use_wandb", is_flag=True,
                           help="Also log them to Weights & Biases (needs wandb; WANDB_MODE=offline works without a "
                                "network).")(command)
    return click.option("--tensorboard", "tensorboard_dir", metavar="DIR", default=None,
                        help="Also write the memory figures (per step, per phase) and OOM events for TensorBoard "
                             "(needs the tensorboard extra).")(command)


def _target_arguments(command: Any) -> Any:
    command = click.argument("script_args", nargs=-1, type=click.UNPROCESSED, metavar="[SCRIPT ARGS]...")(command)
    return click.argument("script", metavar="SCRIPT|MODULE")(command)



@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="torchdoctor")
def cli() -> None:
    """torchdoctor keeps PyTorch training runs alive and honest."""


@cli.command(context_settings={"allow_interspersed_args": False})
@_module_option
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where to record the run (default ./torchdoctor-runs/<timestamp>-<script>/).")
@click.option("-q", "--quiet", is_flag=True, help="No live view or progress lines; one summary line at the end.")
@click.option("--live/--no-live", default=None, help="Force the live view on or off (default: on in a terminal).")
@click.option("--accounting", type=click.Choice(ACCOUNTING_MODES), default="sampled", show_default=True,
              help="CPU tensor accounting: 'sampled' counts the first steps and then every Nth step exactly "
                   "(low overhead), 'exact' counts every step, 'off' counts none.")
@click.option("--sample-every", type=click.IntRange(min=1), default=DEFAULT_SAMPLE_EVERY, show_default=True,
              help="With --accounting sampled: the closest two measured steps may be (spaced out further "
                   "when measuring costs more than 1%).")
@click.option("--log-interval", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Seconds between progress lines when not in a terminal.")
@click.option("--stall-timeout", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="End the run (outcome 'stalled', exit 124) after this long without progress: no optimizer step "
                   "and the main thread in one place. Without it a stall is shown after 60 s, with its stacks.")
@click.option("--stop-grace", type=click.FloatRange(min=0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="When the run must stop (Ctrl-C, SIGTERM, --stall-timeout): seconds the script has after each "
                   "signal before the next, stronger one (SIGINT, SIGTERM, then SIGKILL).")
@click.option("--memory-budget", metavar="SIZE", default=None,
              help="Behave as if the device had SIZE of memory (e.g. 6GiB): on CUDA through "
                   "set_per_process_memory_fraction, on CPU by exact tensor accounting that raises "
                   "torch.OutOfMemoryError at the allocation that would exceed it.")
@click.option("--host-memory-limit", metavar="SIZE", default=None,
              help="Limit the script's heap (RLIMIT_DATA) to SIZE: allocations beyond it fail for real in the "
                   "CPU allocator, as on a machine with less RAM.")
@click.option("--no-atomic-save", is_flag=True,
              help="Leave the script's own torch.save(obj, path) calls as they are (by default they write to a "
                   "temporary file and rename it, so a crash mid-save never destroys the previous file).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, metavar="N",
              help="Save torchdoctor's own checkpoint of the script's models, optimizers, schedulers, scalers and RNG "
                   "every N optimizer steps into the run directory (0: never); after an OOM or a kill the relaunch "
                   "resumes from the newest one, or restarts from the beginning and says why.")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Attempts after an out-of-memory failure or a kill (0: never retry).")
@click.option("--min-batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Smallest micro-batch the micro-batch remedy may use.")
@click.option("--remedies", metavar="LIST", default=",".join(REMEDIES), show_default=True,
              help="Remedies to try after an OOM, in order (any of: " + ", ".join(REMEDIES) + ").")
@click.option("--no-amp", is_flag=True, help="Never use mixed precision as a remedy.")
@click.option("--no-keep-effective-batch", is_flag=True,
              help="Let the micro-batch remedy shrink the batch without gradient accumulation.")
@click.option("--batch-arg", metavar="NAME", default=None,
              help="The script's batch-size option (e.g. --batch_size), when torchdoctor cannot find it.")
@click.option("--relaunch", type=click.Choice(("auto", "fork", "fresh")), default="auto", show_default=True,
              help="How attempts after an OOM start: forked from a process that has imported torch already (tens "
                   "of milliseconds instead of seconds; 'auto' starts it once the run has gone 10 s, at once under "
                   "--memory-budget, or at the first relaunch; 'fork' at once) or as fresh processes ('fresh').")
@click.option("--allow-batchnorm-split", is_flag=True,
              help="Let micro-batches reach BatchNorm layers (their statistics then see micro-batches; the report "
                   "says so). By default a model with BatchNorm gets the remedies that leave its batches whole.")
@click.option("--fail-on", type=click.Choice(("error", "warning")), default=None,
              help="Exit 1 when the doctor reports findings of this severity or worse (for CI); the script's own "
                   "non-zero exit code still wins.")
@click.option("--no-doctor", is_flag=True, help="Do not run the training-loop checks (findings).")
@_monitor_options
@_target_arguments
def run(is_module: bool, run_dir: str | None, quiet: bool, live: bool | None, accounting: str, sample_every: int,
        log_interval: float, stall_timeout: float | None, stop_grace: float, memory_budget: str | None,
        host_memory_limit: str | None, no_atomic_save: bool,
        checkpoint_every: int, max_retries: int, min_batch_size: int, remedies: str, no_amp: bool,
        no_keep_effective_batch: bool, batch_arg: str | None, relaunch: str, allow_batchnorm_split: bool,
        fail_on: str | None,
        no_doctor: bool,
        tensorboard_dir: str | None, use_wandb: bool, script: str, script_args: tuple[str, ...]) -> int:
    """Run a training script, unmodified, under torchdoctor.

    \b
    torchdoctor run train.py --lr 3e-4
    torchdoctor run -m package.module --epochs 2
    """
    from torchdoctor.sizes import parse_size
    from torchdoctor.supervisor.attempt_loop import Supervisor
    from torchdoctor.supervisor.recovery_planner import RecoveryOptions
    from torchdoctor.supervisor.run_config import RunConfig

    chosen = tuple(r.strip() for r in remedies.split(",") if r.strip())
    if not chosen:
        raise UsageError(f"--remedies names no remedy: {remedies!r} (to never recover, use --max-retries 0)")
    unknown = [r for r in chosen if r not in REMEDIES]
    if unknown:
        raise UsageError(f"unknown remedy {unknown[0]!r} in --remedies (choose from {', '.join(REMEDIES)})")
    if no_amp:
        chosen = tuple(r for r in chosen if r != "amp")
    recovery = RecoveryOptions(max_retries=max_retries, min_batch_size=min_batch_size, remedies=chosen,
                               keep_effective_batch=not no_keep_effective_batch, batch_arg=batch_arg,
                               allow_batchnorm_split=allow_batchnorm_split)
    budget = parse_size(memory_budget) if memory_budget is not None else None
    host_limit = parse_size(host_memory_limit) if host_memory_limit is not None else None
    if host_limit is not None and host_limit < HOST_LIMIT_MIN:
        raise UsageError(f"--host-memory-limit {host_memory_limit} is below {HOST_LIMIT_MIN >> 20}MiB: Python and "
                         f"torch cannot even start in that")
    for option, seconds in (("--log-interval", log_interval), ("--stall-timeout", stall_timeout),
                            ("--stop-grace", stop_grace)):
        if seconds is not None and not math.isfinite(seconds):
            raise UsageError(f"{option} must be a number of seconds, not {seconds}")
    config = RunConfig(target=script, is_module=is_module, script_args=script_args, run_dir=run_dir, quiet=quiet,
                       live=live, log_interval=log_interval, stall_timeout=stall_timeout, stop_grace=stop_grace,
                       accounting=accounting, sample_every=sample_every,
                       memory_budget=budget, host_memory_limit=host_limit, atomic_save=not no_atomic_save,
                       checkpoint_every=checkpoint_every, recovery=recovery, doctor=not no_doctor, fail_on=fail_on,
                       tensorboard_dir=tensorboard_dir, wandb=use_wandb, relaunch=relaunch)
    return Supervisor(config).run()


@cli.command(context_settings={"allow_interspersed_args": False})
@_module_option
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
@_monitor_options
@click.option("--fail-on", type=click.Choice(("error", "warning")), default=None,
              help="Also fail when the doctor reports findings of this severity or worse.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where to record the run (report.json).")
@_target_arguments
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
            _check_output(option, target)
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
            _write_html(html_path, outcome.report)
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


@cli.command(context_settings={"allow_interspersed_args": False})
@_module_option
@click.option("--batch-sizes", metavar="B1,B2,...", default=None,
              help="Batch sizes to estimate (set through the script's batch-size option) [default: the script's own].")
@click.option("--batch-arg", metavar="OPTION", default=None,
              help="The script's batch-size option (e.g. --batch-size), when it is not among the arguments given.")
@click.option("--budget", metavar="SIZE", default=None,
              help="Also find the largest batch whose peak fits SIZE (e.g. 24GiB), by fake runs.")
@click.option("--steps", type=click.IntRange(min=1, max=20), default=2, show_default=True,
              help="Optimizer steps to count (the first makes the optimizer's state).")
@click.option("--json", "json_path", metavar="FILE", default=None, help="Also write the estimate as JSON.")
@_target_arguments
def estimate(is_module: bool, batch_sizes: str | None, batch_arg: str | None, budget: str | None, steps: int,
             json_path: str | None, script: str, script_args: tuple[str, ...]) -> int:
    """Estimate peak memory without allocating it: the script's first steps on fake tensors.

    \b
    torchdoctor estimate train.py --batch-size 32
    torchdoctor estimate --batch-sizes 8,32,128 --budget 24GiB train.py --batch-size 32
    """
    import json

    from torchdoctor.files import write_text_atomic
    from torchdoctor.reporters.estimate import estimate_text
    from torchdoctor.sizes import parse_size
    from torchdoctor.supervisor.estimate import EstimateRequest, run_estimate
    from torchdoctor.supervisor.target import check_module, check_script

    sizes: tuple[int, ...] = ()
    if batch_sizes is not None:
        try:
            sizes = tuple(int(part) for part in batch_sizes.split(",") if part.strip())
        except ValueError:
            raise UsageError(f"--batch-sizes takes whole numbers separated by commas, not {batch_sizes!r}") from None
        if not sizes or min(sizes) < 1:
            raise UsageError(f"--batch-sizes takes batch sizes of 1 or more, not {batch_sizes!r}")
    limit = parse_size(budget) if budget is not None else None
    if json_path:
        _check_output("--json", json_path)
    check_module(script) if is_module else check_script(script)
    request = EstimateRequest(script=script, is_module=is_module, script_args=script_args, batch_sizes=sizes,
                              batch_arg=batch_arg, budget=limit, steps=steps)
    document = run_estimate(request)
    click.echo(estimate_text(document))
    if json_path:
        try:
            write_text_atomic(json_path, json.dumps(document, indent=2))
        except OSError as exc:
            raise TorchDoctorError(f"cannot write --json {json_path}: {exc.strerror or exc}") from None
    return 0


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
            _write_html(html_path, data)
            return 0
        from rich.console import Console

        from torchdoctor.reporters.console import render_report

        render_report(data, Console())
    except (TypeError, AttributeError, KeyError, ValueError, IndexError, RecursionError) as exc:
        # fields deeper than load_report checks: still one line, never a traceback
        raise UsageError(f"{path} is not a report torchdoctor can read ({type(exc).__name__}: {exc})") from None
    return 0


def _check_output(option: str, path: str) -> None:
    """A file the user asked torchdoctor to write: fail in one line, before any work, when it cannot be."""
    import os

    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a directory (give a file name)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path}: the directory {parent} does not exist")


def _write_html(path: str, data: dict) -> None:
    """The HTML report, written atomically (a page half-written is never left); one line on stderr says where."""
    from torchdoctor.files import write_atomic
    from torchdoctor.reporters import charts
    from torchdoctor.reporters.html import INSTALL_HINT, render_html

    _check_output("--html", path)
    page = render_html(data).encode("utf-8")
    try:
        write_atomic(path, lambda handle: handle.write(page))
    except OSError as exc:
        raise UsageError(f"cannot write --html {path}: {exc.strerror or exc}") from None
    hint = "" if charts.available() else f" (tables only: {INSTALL_HINT} adds the charts)"
    click.echo(f"torchdoctor: HTML report written to {path}{hint}", err=True)


@cli.command()
def env() -> int:
    """Show torch, CUDA and GPUs (read through NVML, without creating a CUDA context)."""
    from rich.console import Console

    from torchdoctor.agent.environment import collect_environment
    from torchdoctor.reporters.environment import render_environment

    render_environment(collect_environment(), Console())
    return 0


HOST_LIMIT_MIN = 64 << 20  # below this a Python process with torch does not start


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

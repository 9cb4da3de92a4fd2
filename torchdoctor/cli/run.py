"""``torchdoctor run``: a training script, unmodified, under the supervisor."""

from __future__ import annotations

import math
from typing import Any

import click

from torchdoctor.cli.group import cli
from torchdoctor.cli.shared import module_option, monitor_options, target_arguments, torchrun_options
from torchdoctor.config import ACCOUNTING_MODES, DEFAULT_SAMPLE_EVERY
from torchdoctor.errors import UsageError
from torchdoctor.plan import REMEDIES

HOST_LIMIT_MIN = 64 << 20  # below this a Python process with torch does not start


@cli.command(context_settings={"allow_interspersed_args": False})
@module_option
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
@monitor_options
@torchrun_options
@target_arguments
def run(is_module: bool, run_dir: str | None, quiet: bool, live: bool | None, accounting: str, sample_every: int,
        log_interval: float, stall_timeout: float | None, stop_grace: float, memory_budget: str | None,
        host_memory_limit: str | None, no_atomic_save: bool,
        checkpoint_every: int, max_retries: int, min_batch_size: int, remedies: str, no_amp: bool,
        no_keep_effective_batch: bool, batch_arg: str | None, relaunch: str, allow_batchnorm_split: bool,
        fail_on: str | None,
        no_doctor: bool,
        tensorboard_dir: str | None, use_wandb: bool, script: str, script_args: tuple[str, ...],
        **torchrun: Any) -> int:
    """Run a training script, unmodified, under torchdoctor.

    \b
    torchdoctor run train.py --lr 3e-4
    torchdoctor run -m package.module --epochs 2
    torchdoctor run --nproc-per-node 2 train.py   (torch's launcher, torchrun; other torchrun options pass through)
    """
    from torchdoctor.sizes import parse_size
    from torchdoctor.supervisor.attempt_loop import Supervisor
    from torchdoctor.supervisor.recovery_planner import RecoveryOptions
    from torchdoctor.supervisor.run_config import RunConfig
    from torchdoctor.supervisor.torchrun_options import launcher_args, option_key

    launcher = launcher_args(torchrun)
    nnodes = str(torchrun.get(option_key(("--nnodes",))) or "1")
    if checkpoint_every and nnodes.split(":")[-1] != "1":
        raise UsageError(f"--checkpoint-every works on one machine only, not --nnodes {nnodes}: rank 0 writes the "
                         f"checkpoint on its machine, where the other machines' torchdoctor cannot read it")

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
                       tensorboard_dir=tensorboard_dir, wandb=use_wandb, relaunch=relaunch, launcher_args=launcher)
    return Supervisor(config).run()

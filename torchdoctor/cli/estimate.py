"""``torchdoctor estimate``: peak memory and the largest batch, on fake tensors."""

from __future__ import annotations

import click

from torchdoctor.cli.group import cli
from torchdoctor.cli.shared import check_output, module_option, target_arguments
from torchdoctor.errors import TorchDoctorError, UsageError


@cli.command(context_settings={"allow_interspersed_args": False})
@module_option
@click.option("--batch-sizes", metavar="B1,B2,...", default=None,
              help="Batch sizes to estimate (set through the script's batch-size option) [default: the script's own].")
@click.option("--batch-arg", metavar="OPTION", default=None,
              help="The script's batch-size option (e.g. --batch-size), when it is not among the arguments given.")
@click.option("--budget", metavar="SIZE", default=None,
              help="Also find the largest batch whose peak fits SIZE (e.g. 24GiB), by fake runs.")
@click.option("--gpu", metavar="NAME", default=None,
              help="Model this CUDA card (e.g. H100-80GB, A100-40GB, RTX4090, T4): allocated and reserved memory, "
                   "and the largest batch that fits its memory when --budget is not given.")
@click.option("--cuda-context", metavar="SIZE", default=None,
              help="Memory the CUDA context takes on the card, outside torch's allocator [default: 512MiB, assumed].")
@click.option("--no-fallback", is_flag=True,
              help="When fake tensors cannot run the script, fail instead of measuring it on real tensors.")
@click.option("--steps", type=click.IntRange(min=1, max=20), default=2, show_default=True,
              help="Optimizer steps to count (the first makes the optimizer's state).")
@click.option("--layers", is_flag=True,
              help="Also a table per module: its parameters, its outputs, what autograd saves for backward in it.")
@click.option("--json", "json_path", metavar="FILE", default=None, help="Also write the estimate as JSON.")
@target_arguments
def estimate(is_module: bool, batch_sizes: str | None, batch_arg: str | None, budget: str | None, gpu: str | None,
             cuda_context: str | None, no_fallback: bool, steps: int, layers: bool, json_path: str | None, script: str,
             script_args: tuple[str, ...]) -> int:
    """Estimate peak memory without allocating it: the script's first steps on fake tensors.

    \b
    torchdoctor estimate train.py --batch-size 32
    torchdoctor estimate --batch-sizes 8,32,128 --budget 24GiB train.py --batch-size 32
    torchdoctor estimate --gpu A100-40GB train.py --batch-size 32
    """
    import json

    from torchdoctor.estimating import EstimateRequest
    from torchdoctor.files import write_text_atomic
    from torchdoctor.gpus import CONTEXT_ASSUMED, find_gpu
    from torchdoctor.reporters.estimate import estimate_text
    from torchdoctor.sizes import parse_size
    from torchdoctor.supervisor.estimate import run_estimate
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
    card = find_gpu(gpu) if gpu is not None else None
    if cuda_context is not None and card is None:
        raise UsageError("--cuda-context is the memory of a modelled GPU's context: give --gpu NAME with it")
    context = parse_size(cuda_context) if cuda_context is not None else CONTEXT_ASSUMED
    if json_path:
        check_output("--json", json_path)
    check_module(script) if is_module else check_script(script)
    request = EstimateRequest(script=script, is_module=is_module, script_args=script_args, batch_sizes=sizes,
                              batch_arg=batch_arg, budget=limit, steps=steps, layers=layers, gpu=card,
                              cuda_context=context, fallback=not no_fallback)
    document = run_estimate(request)
    click.echo(estimate_text(document))
    if json_path:
        try:
            write_text_atomic(json_path, json.dumps(document, indent=2))
        except OSError as exc:
            raise TorchDoctorError(f"cannot write --json {json_path}: {exc.strerror or exc}") from None
    return 0

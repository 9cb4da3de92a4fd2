"""What ``torchdoctor estimate`` and ``torchdoctor.estimate_memory()`` share (torch-free): the request, one run's
figures from its ``Estimated`` event, the largest-batch search over fake runs, and the estimate document
(``schema: torchdoctor-estimate``, docs/estimate.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from torchdoctor import __version__
from torchdoctor.config import BATCH_OPTIONS
from torchdoctor.errors import TorchDoctorError, UsageError
from torchdoctor.gpus import CONTEXT_ASSUMED, Gpu

ESTIMATE_SCHEMA = "torchdoctor-estimate"
ESTIMATE_VERSION = 1
MAX_BATCH = 1 << 20
# What fake tensors do not see, said in every estimate (docs/estimate.md has the measurements).
LIMITS = (
    "torch.save writes nothing during the fake runs (the script's files are left as they are)",
    "values read back to Python (loss.item(), if t > 0) are followed for real in small tensors (positions, offsets, "
    "masks) and otherwise get stand-ins (1, True): control flow that depends on the data follows them",
)
# ... on the CPU, kernels' own buffers (not op outputs), measured or not
CPU_KERNELS = ("kernels' own buffers: oneDNN's convolutions and RNN layers measured, each run for real once per shape "
               "on zeros (a large convolution on a slice of its batch, scaled; an RNN layer's backward after a real "
               "forward); other kernels' scratch is not counted")
CPU_KERNELS_UNMEASURED = ("kernels' own buffers are not counted ({why}): convolution nets come out up to a quarter "
                          "low (oneDNN's backward copies its input), LSTMs at small batches 10% low")
# ... and, for a modelled GPU (--gpu), what the model leaves out
GPU_LIMITS = (
    "the GPU is modelled, not measured (no GPU here): its caching allocator replayed over the fake run's "
    "allocations (512-byte rounding, 2 and 20 MiB segments, best-fit splitting; one stream, default settings) "
    "and torch's default cuBLAS workspaces; cuDNN, cuBLASLt and attention kernels' own buffers are not counted",
    "the script runs its CUDA path on CPU fake tensors: kernels that differ between the devices (CPU autocast's op "
    "lists for CUDA's, the attention backend) can make different tensors; tensor.device reads cpu",
)



@dataclass(frozen=True)
class EstimateRequest:
    script: str
    is_module: bool = False
    script_args: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = ()  # empty: the script's own
    batch_arg: str | None = None  # the script's batch-size option (found in script_args when not given)
    budget: int | None = None
    steps: int = 2
    layers: bool = False  # the per-layer table (of the first batch size estimated)
    gpu: Gpu | None = None  # the CUDA card modelled (None: the script's own device, the CPU here)
    cuda_context: int = CONTEXT_ASSUMED  # bytes outside torch's allocator on the card (assumed unless given)
    fallback: bool = True  # when fake tensors cannot run the script, measure it on real tensors (CPU targets)

    def batch_option(self) -> str | None:
        if self.batch_arg:
            return self.batch_arg if self.batch_arg.startswith("-") else f"--{self.batch_arg}"
        for arg in self.script_args:
            name = arg.split("=", 1)[0]
            if name.startswith("--") and name[2:].replace("-", "_").lower() in BATCH_OPTIONS:
                return name
        return None


def figures_from(estimated: Any, request: EstimateRequest) -> dict[str, Any]:
    """One run's figures (a row of ``estimates``, and what the search and the layer table need) from its
    ``Estimated`` event: the step with the largest peak, and the modelled GPU's step with the largest reserved
    (then allocated) peak."""
    peak = max(estimated.steps, key=lambda s: s["peak_bytes"])
    found = {"batch_size": estimated.batch_size, "peak_bytes": peak["peak_bytes"], "peak_phase": peak["peak_phase"],
             "by_phase": peak["by_phase"], "by_kind": peak["by_kind"], "steps_counted": estimated.steps_done,
             "steps_wanted": request.steps, "stand_ins": estimated.stand_ins, "device": estimated.device,
             "batch_option": estimated.batch_option, "layers": estimated.layers,
             "forward_growth_bytes": estimated.forward_growth_bytes,
             "kernels_unmeasured": estimated.kernels_unmeasured, "kernel_failures": estimated.kernel_failures}
    if request.gpu is not None:  # the step with the largest allocated peak, and the largest reserved of any step
        gpus = [s["gpu"] for s in estimated.steps if "gpu" in s]
        gpu = max(gpus, key=lambda g: g["allocated_peak_bytes"], default=None)
        if gpu is not None:
            gpu = {**gpu, "reserved_peak_bytes": max(g["reserved_peak_bytes"] for g in gpus)}
        if gpu is None or not gpu["allocated_peak_bytes"]:
            raise TorchDoctorError(f"modelling the {request.gpu.name}: nothing was put on the GPU (no .to('cuda'), "
                                   f".cuda() or device='cuda' reached): there is nothing to model")
        found["gpu"] = {**gpu, "context_bytes": request.cuda_context,
                        "total_bytes": gpu["reserved_peak_bytes"] + request.cuda_context}
    return found


def _kernel_limits(request: EstimateRequest, run: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    if request.gpu is not None:
        return list(GPU_LIMITS)
    why = run.get("kernels_unmeasured")
    failed = sorted({op for r in runs for op in r.get("kernel_failures") or []})
    return [CPU_KERNELS_UNMEASURED.format(why=why) if why else CPU_KERNELS] + (
        [f"these kernels could not be run for real, their own buffers are not counted: {'; '.join(failed[:5])}"]
        if failed else [])


def peak_of(run: dict[str, Any]) -> int:
    """What must fit: the modelled GPU's reserved memory and context, or the tensors' peak."""
    return run["gpu"]["total_bytes"] if "gpu" in run else run["peak_bytes"]


def phase_of(run: dict[str, Any]) -> str:
    return str(run["gpu"]["peak_phase"] if "gpu" in run else run["peak_phase"])


def phases_of(run: dict[str, Any]) -> dict[str, int]:
    return run["gpu"]["by_phase"] if "gpu" in run else run["by_phase"]


class BatchRuns:
    """Fake runs at given batch sizes, each once (``run`` makes one: in a process of its own for a script, in this
    process for the library call)."""

    def __init__(self) -> None:
        self.done: dict[int | None, dict[str, Any]] = {}
        self.short: dict[int, int] = {}  # batch sizes asked for whose first training batch was smaller: what it was

    def run(self, batch: int | None) -> dict[str, Any]:
        raise NotImplementedError

    def at(self, batch: int | None) -> dict[str, Any]:
        own = self.done.get(None)
        if batch is not None and own is not None and own["batch_size"] == batch:
            return own  # the script's own batch size: that run already
        if batch not in self.done:
            self.done[batch] = self.run(batch)
        return self.done[batch]

    def checked(self) -> list[int]:
        """The batch sizes run so far."""
        return sorted({batch if batch is not None else run["batch_size"] for batch, run in self.done.items()} - {None})

    def fits(self, batch: int, budget: int) -> bool:
        """Within the budget, and the batch really that large (a script whose data holds fewer samples makes a
        smaller batch: that batch size is not an answer)."""
        run = self.at(batch)
        seen = run["batch_size"]
        if seen is not None and seen < batch:
            self.short[batch] = seen
            return False
        return peak_of(run) <= budget


def linear_guess(runs: BatchRuns, budget: int, small: int, large: int) -> int | None:
    """The largest batch each phase's peak allows, from a line through two runs (peak = a + b x batch per phase:
    the peak may move from one phase to another as the batch grows); the smallest over the phases."""
    first, second = runs.at(small), runs.at(large)
    one, two = phases_of(first), phases_of(second)
    extra = peak_of(first) - max(one.values(), default=0)  # reserved over allocated, and the context, on a GPU
    guesses = []
    for phase in set(one) & set(two):
        slope = (two[phase] - one[phase]) / (large - small)
        if slope > 0:
            guesses.append(int((budget - extra - (one[phase] - slope * small)) // slope))
    return max(1, min(min(guesses), MAX_BATCH)) if guesses else None


def largest_batch(runs: BatchRuns, budget: int, start: int) -> dict[str, Any]:
    """The largest batch whose fake peak fits ``budget``. Guessed from lines through the two runs nearest the
    answer (exact where both sit in the same piece of the piecewise-linear peak), each guess checked with its
    neighbour; doubling and bisection finish what guesses leave open. Every answer rests on fake runs."""
    before = len(runs.done)
    start = max(1, start)
    low, high = 0, None  # the largest batch known to fit, the smallest known not to

    def over(batch: int) -> int:
        """A batch that does not fit; or, when the script made a smaller batch (its data holds no more), the
        first batch size past what it made: none above it grows either."""
        return runs.short[batch] + 1 if batch in runs.short else batch

    tried = [min(start, MAX_BATCH), min(start * 2, MAX_BATCH)]
    for _ in range(6):
        for batch in tried:
            if runs.fits(batch, budget):
                low = max(low, batch)
            elif high is None or over(batch) < high:
                high = over(batch)
        if high is not None and high - low <= 1:
            break
        near = sorted(runs.checked(), key=lambda b: abs(peak_of(runs.at(b)) - budget))[:2]
        guess = linear_guess(runs, budget, min(near), max(near)) if len(set(near)) == 2 else None
        if guess is None or (guess <= low or (high is not None and guess >= high)):
            break
        tried = [guess, min(guess + 1, MAX_BATCH)]  # (the guess is at most MAX_BATCH: so is its neighbour)
    if high is not None and low > high:
        low = 0  # not monotonic: search below the smallest batch that does not fit
    batch = max(low * 2, 1)
    while high is None and batch <= MAX_BATCH:
        if runs.fits(batch, budget):
            low, batch = batch, batch * 2
        else:
            high = over(batch)
    if high is not None and high - 1 in runs.short.values() and high - 1 > low and runs.fits(high - 1, budget):
        low = high - 1  # the largest batch the script's data makes fits
    while high is not None and high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if runs.fits(mid, budget) else (low, over(mid))
    answer: dict[str, Any] = {"budget_bytes": budget, "batch_size": low or None}
    if low:
        answer.update(peak_bytes=peak_of(runs.at(low)), peak_phase=phase_of(runs.at(low)))
    if high is not None:
        runs.fits(high, budget)  # (run already, unless it is the batch past a short one)
        answer["first_over"] = {"batch_size": high, "peak_bytes": peak_of(runs.at(high)),
                                "peak_phase": phase_of(runs.at(high))}
    if high is not None and high in runs.short:
        answer["first_over"]["batch_seen"] = runs.short[high]
        answer["limited_by"] = "data"  # the script's batches stop growing before memory runs out
    if high is None:
        answer["limited_by"] = "search"  # MAX_BATCH fits: the search goes no higher (the answer is a lower bound)
    answer["runs"] = len(runs.done) - before
    return answer


def document(request: EstimateRequest, runs: BatchRuns, script: str, argv: list[str],
             began: float) -> dict[str, Any]:
    """The estimate document (``schema: torchdoctor-estimate``, docs/estimate.md) from runs at the request's batch
    sizes (the first run, at the script's own batch, already made), the layer table and the largest batch."""
    own = runs.at(None)
    sizes = list(request.batch_sizes)
    estimates = [own] if not sizes else []
    for batch in sizes:
        found = runs.at(batch) if batch != own["batch_size"] else own
        estimates.append({**found, "batch_size": batch})
    layers, growth = estimates[0].get("layers") or [], estimates[0].get("forward_growth_bytes")
    private = ("layers", "forward_growth_bytes", "kernels_unmeasured", "kernel_failures")  # the document's own
    estimates = [{k: v for k, v in e.items() if k not in private} for e in estimates]
    result: dict[str, Any] = {
        "schema": ESTIMATE_SCHEMA, "schema_version": ESTIMATE_VERSION, "torchdoctor_version": __version__,
        "script": script, "argv": argv, "device": own["device"],
        "figures": "tensor storages counted on fake tensors (no memory allocated)",
        "estimates": estimates, "limits": [*LIMITS, *_kernel_limits(request, own, list(runs.done.values()))],
    }
    if request.gpu is not None:
        result["gpu"] = {"name": request.gpu.name, "memory_bytes": request.gpu.memory_bytes,
                         "capability": ".".join(map(str, request.gpu.capability)),
                         "cublas_workspace_bytes": request.gpu.cublas_workspace_bytes,
                         "context_bytes": request.cuda_context,
                         "memory_source": "nominal (nvidia-smi's total for the card), not measured here"}
    if request.layers:
        result["layers"] = layers
        result["layers_batch_size"] = estimates[0]["batch_size"]
        result["forward_growth_bytes"] = growth
    budget = request.budget if request.budget is not None else (request.gpu.memory_bytes if request.gpu else None)
    if budget is not None:
        try:
            result["largest_batch"] = largest_batch(runs, budget, own["batch_size"] or 1)
        except UsageError as exc:  # no way to change the batch size
            if request.budget is not None:
                raise  # asked for: the error is the answer
            result["largest_batch_skipped"] = f"the largest batch on the card was not searched: {exc}"
    result["runs"] = len(runs.done)
    result["seconds"] = round(time.monotonic() - began, 2)
    return result

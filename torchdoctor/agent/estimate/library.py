"""``torchdoctor.estimate_memory``: ``torchdoctor estimate`` for code that builds its own model and training step.

    def train(batch_size):                      # builds the model and optimizer, runs a few optimizer steps
        model = Net(); opt = torch.optim.AdamW(model.parameters())
        for _ in range(2):
            x, y = torch.randn(batch_size, 784), torch.randint(0, 10, (batch_size,))
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()

    result = torchdoctor.estimate_memory(train, batch_sizes=[8, 32], budget="4GiB", gpu="A100-40GB")
    result["estimates"][1]["peak_bytes"], result["largest_batch"]["batch_size"]

``train(batch_size)`` runs in this process on fake tensors (nothing is allocated for real; it is stopped after
``steps`` optimizer steps), once per batch size, and the answer is the same document as ``torchdoctor estimate
--json`` gives (docs/estimate.md). ``train`` must make its tensors itself (a model built outside it holds real
memory that is not counted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from torchdoctor.config import AgentSettings
from torchdoctor.errors import StepsDone, TorchDoctorError, UsageError
from torchdoctor.estimating import BatchRuns, EstimateRequest, document, figures_from
from torchdoctor.events import Estimated, Event
from torchdoctor.gpus import CONTEXT_ASSUMED, find_gpu
from torchdoctor.sizes import parse_size


class _Collected:
    """The session's event sink: the library call keeps its events in memory."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


class _InProcess(BatchRuns):
    def __init__(self, train: Callable[[int], Any], request: EstimateRequest, default_batch: int,
                 kernel_probe: bool) -> None:
        super().__init__()
        self.train, self.request, self.default_batch = train, request, default_batch
        self.kernel_probe = kernel_probe

    def run(self, batch: int | None) -> dict[str, Any]:
        from torchdoctor.agent.estimate.session import EstimateSession

        batch = self.default_batch if batch is None else batch
        sink = _Collected()
        session = EstimateSession(AgentSettings(accounting="off", atomic_save=False, doctor=False,
                                                max_steps=self.request.steps, estimate=True), sink,
                                  gpu=self.request.gpu, kernel_probe=self.kernel_probe)
        failure: BaseException | None = None
        try:
            session.start()
            self.train(batch)
        except StepsDone:
            pass
        except Exception as exc:  # noqa: BLE001 - said below, with the step it did not reach
            failure = exc
        finally:
            try:
                session.finish()
            finally:
                session.close()  # the process leaves fake tensors whatever happened
        estimated = next(e for e in sink.events if isinstance(e, Estimated))
        if not estimated.steps_done or (failure is not None and estimated.steps_done < self.request.steps):
            why = f"{type(failure).__name__}: {failure}" if failure is not None else "it returned"
            raise TorchDoctorError(f"train({batch}) ended on fake tensors before its optimizer step "
                                   f"{estimated.steps_done + 1}: {why}")
        found = figures_from(estimated, self.request)
        found["batch_size"] = batch  # the batch it was called with (not a guess from the first forward's input)
        return found


def estimate_memory(train: Callable[[int], Any], batch_sizes: Sequence[int] = (), *, default_batch: int = 8,
                    steps: int = 2, budget: int | str | None = None, gpu: str | None = None,
                    cuda_context: int | str | None = None, layers: bool = False) -> dict[str, Any]:
    """Peak memory of ``train(batch_size)``'s first ``steps`` optimizer steps, per batch size, without allocating
    it; with ``budget`` (bytes or "24GiB") or ``gpu`` (a card's name, e.g. "A100-40GB": modelled, allocated and
    reserved), also the largest batch that fits. The document of ``torchdoctor estimate --json``."""
    from torchdoctor.agent.session import live_sessions

    if not callable(train):
        raise UsageError(f"estimate_memory takes a function of the batch size, not {type(train).__name__}")
    sizes = tuple(int(b) for b in batch_sizes)
    if any(b < 1 for b in sizes) or default_batch < 1 or steps < 1:
        raise UsageError("batch sizes, default_batch and steps must be 1 or more")
    card = find_gpu(gpu) if gpu is not None else None
    if cuda_context is not None and card is None:
        raise UsageError("cuda_context is the memory of a modelled GPU's context: give gpu= with it")
    context = parse_size(str(cuda_context)) if cuda_context is not None else CONTEXT_ASSUMED
    limit = parse_size(str(budget)) if budget is not None else None
    request = EstimateRequest(script=getattr(train, "__qualname__", repr(train)), batch_sizes=sizes, budget=limit,
                              steps=steps, layers=layers, gpu=card, cuda_context=context)
    began = time.monotonic()
    # under `torchdoctor run` the process's allocator probe is the run's: kernels' buffers are not measured then
    first = sizes[0] if sizes else default_batch  # the first run: a batch asked for, when there are any
    runs = _InProcess(train, request, first, kernel_probe=not live_sessions())
    runs.at(None)
    return document(request, runs, request.script, [request.script], began)

"""What each OOM remedy saves and costs, measured side by side in one run on the CPU (not a test; run it by hand).

    python bench/remedy_costs.py            # ~1 min on 2 cores

For two models (the small GPT of examples/train_gpt.py, and a conv net with BatchNorm), one training step (forward,
backward, AdamW step) is run plain and under each remedy torchdoctor applies to a forward/backward OOM:

    checkpoint     torchdoctor's activation checkpointing of the model's repeated blocks (agent/checkpointing.py)
    micro-batch 2  the batch in 2 micro-batches with gradient accumulation (what torchdoctor's gates make of the loop)
    amp bf16       training forwards under torch.autocast(cpu, bfloat16)

peak: the step's peak tensor bytes, counted exactly (torchdoctor's TensorAccountant: the CPU allocator's figure for
these models); time: the median of 7 steps (after 2 warm-up steps), no accounting. Each is shown with its ratio to
the plain step; `same` says whether the step's gradients equal the plain step's bit for bit (or their largest
relative difference). Offloading saved activations (`offload`) needs a GPU and is not measured here.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from torchdoctor.agent.memory.accounting import PARAMETERS, TensorAccountant  # noqa: E402
from torchdoctor.agent.recovery.activation_checkpointing import ActivationCheckpointing  # noqa: E402


def gpt_case() -> tuple[nn.Module, tuple[torch.Tensor, ...], Callable[..., torch.Tensor]]:
    spec = importlib.util.spec_from_file_location("train_gpt", os.path.join(ROOT, "examples", "train_gpt.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.GPT(48, 64)
    x = torch.randint(0, 48, (32, 64))
    y = torch.randint(0, 48, (32, 64))
    return model, (x, y), lambda m, x, y: m(x, y)[1]


def conv_case() -> tuple[nn.Module, tuple[torch.Tensor, ...], Callable[..., torch.Tensor]]:
    torch.manual_seed(0)

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

    model = nn.Sequential(block(3, 16), block(16, 16), nn.MaxPool2d(2), block(16, 32), block(32, 32),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    return model, (x, y), lambda m, x, y: nn.functional.cross_entropy(m(x), y)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
         loss_of: Callable[..., torch.Tensor], remedy: str) -> None:
    optimizer.zero_grad(set_to_none=True)
    if remedy == "micro-batch 2":
        x, y = batch
        half = len(x) // 2
        for part in (slice(0, half), slice(half, None)):
            (loss_of(model, x[part], y[part]) * (len(x[part]) / len(x))).backward()
    elif remedy == "amp bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(model, *batch)
        loss.backward()
    else:
        loss_of(model, *batch).backward()
    optimizer.step()


def measure(case: Callable[[], Any], remedy: str) -> dict[str, Any]:
    model, batch, loss_of = case()
    torch.manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    checkpointing = ActivationCheckpointing() if remedy == "checkpoint" else None
    if checkpointing is not None:
        checkpointing.adopt(model)
        checkpointing.install()
    try:
        step(model, optimizer, batch, loss_of, remedy)  # optimizer state exists from here on, as in a real run
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        accountant = TensorAccountant()
        accountant.classify(list(model.parameters()), PARAMETERS)
        accountant.open()
        try:
            accountant.classify([t for s in optimizer.state.values() for t in s.values()
                                 if isinstance(t, torch.Tensor)], PARAMETERS)
            accountant.classify(list(batch), PARAMETERS)
            accountant.reset_span()
            step(model, optimizer, batch, loss_of, remedy)
            peak = accountant.ledgers["cpu"].span_peak
        finally:
            accountant.close()
        for _ in range(2):
            step(model, optimizer, batch, loss_of, remedy)
        times = []
        for _ in range(7):
            began = time.perf_counter()
            step(model, optimizer, batch, loss_of, remedy)
            times.append(time.perf_counter() - began)
    finally:
        if checkpointing is not None:
            checkpointing.remove()
    return {"peak": peak, "time": statistics.median(times), "grads": grads,
            "blocks": checkpointing.block_count if checkpointing else None}


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 thread\n")
    print("| model | remedy | peak tensor MiB | / plain | step ms | / plain | gradients vs plain |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, case in (("GPT (examples/train_gpt.py)", gpt_case), ("conv + BatchNorm", conv_case)):
        plain = measure(case, "plain")
        for remedy in ("plain", "checkpoint", "micro-batch 2", "amp bf16"):
            got = plain if remedy == "plain" else measure(case, remedy)
            worst = max(((got["grads"][n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
                        for n, g in plain["grads"].items())
            same = "bit for bit" if worst == 0.0 else f"{worst:.1e} relative"
            label = remedy + (f" ({got['blocks']} blocks)" if got["blocks"] is not None else "")
            print(f"| {name} | {label} | {got['peak'] / 2**20:.1f} | {got['peak'] / plain['peak']:.2f} | "
                  f"{got['time'] * 1e3:.1f} | {got['time'] / plain['time']:.2f} | {same} |")


if __name__ == "__main__":
    main()

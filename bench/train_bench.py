"""The training script that ``bench/overhead.py`` times, bare and under ``torchdoctor run``.

A plain PyTorch training loop with synthetic data made here (no downloads, no torchdoctor import), so it
runs the same with ``python`` and with ``torchdoctor run``. It times every iteration of the training loop
(``zero_grad``, forward, loss, backward, ``optimizer.step``) with ``time.perf_counter`` (and the process's
CPU time with ``time.process_time``) and, at the end, writes one JSON line with the median step time over the
steps after the first ``--warmup`` steps (start-up, imports and the first steps are never part of the figure).

    python bench/train_bench.py --model mlp --steps 300
    python -m torchdoctor run -q bench/train_bench.py --model transformer --steps 300 --out result.json

Models (all on CPU; AdamW unless said):
  mlp          an MLP of 4 linear layers, 256 -> 512 -> 512 -> 512 -> 10 (0.66 M parameters), batch 256,
               cross-entropy
  transformer  a 2-layer nn.TransformerEncoder (d_model 128, 4 heads, feed-forward 512, pre-norm, causal mask)
               over 64 synthetic tokens (vocabulary 1024), with an embedding, learned positions and an LM head
               (0.67 M parameters), batch 4, next-token cross-entropy

  lbfgs        the MLP above trained with torch.optim.LBFGS (max_iter 4, history 10: up to 5 closure evaluations, each a
               forward and a backward, in one optimizer step)

All are sized so that a step takes roughly 15-60 ms on one core of a small machine.

``--threads`` (default 1) calls ``torch.set_num_threads``: one intra-op thread keeps step times stable on a
small machine and leaves a core for the supervisor process and the agent's event-writer thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn


def build_mlp(batches: int, seed: int) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]], nn.Module]:
    g = torch.Generator().manual_seed(seed)
    features, hidden, classes, batch = 256, 512, 10, 256
    model = nn.Sequential(
        nn.Linear(features, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, classes),
    )
    w = torch.randn(features, classes, generator=g)
    data = []
    for _ in range(batches):
        x = torch.randn(batch, features, generator=g)
        y = (x @ w).argmax(dim=1)
        data.append((x, y))
    return model, data, nn.CrossEntropyLoss()


class TinyLM(nn.Module):
    """Token embedding + learned positions + nn.TransformerEncoder + LM head (a small causal language model)."""

    def __init__(self, vocab: int, seq: int, d_model: int, heads: int, ff: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(1, seq, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=ff, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        h = self.encoder(h, mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


class NextTokenLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.ce(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def build_transformer(batches: int, seed: int) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]], nn.Module]:
    g = torch.Generator().manual_seed(seed)
    vocab, seq, batch = 1024, 64, 4
    model = TinyLM(vocab, seq, d_model=128, heads=4, ff=512, layers=2)
    data = []
    for _ in range(batches):
        # A learnable synthetic language: each token is the previous one plus a small random step.
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        steps = torch.randint(0, 4, (batch, seq), generator=g)  # seq + 1 tokens: inputs and shifted targets
        tokens = (torch.cat([start, start + steps.cumsum(dim=1)], dim=1)) % vocab
        data.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return model, data, NextTokenLoss()


MODELS = {"mlp": build_mlp, "transformer": build_transformer, "lbfgs": build_mlp}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = (len(ordered) - 1) * q
    low, high = math.floor(index), math.ceil(index)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps in all (default 300)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the figures (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1; 0 = leave as is)")
    parser.add_argument("--batches", type=int, default=16, help="distinct synthetic batches, cycled (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="append the JSON result line to this file (default: stdout)")
    parser.add_argument("--label", default=None, help="copied into the JSON line")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must be more than --warmup")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, data, loss_fn = MODELS[args.model](args.batches, args.seed)
    model.train()
    lbfgs = args.model == "lbfgs"
    optimizer: torch.optim.Optimizer = (torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4, history_size=10) if lbfgs
                                        else torch.optim.AdamW(model.parameters(), lr=1e-3))

    times: list[float] = []
    cpu_times: list[float] = []
    losses: list[float] = []
    loop_began = time.perf_counter()
    for step in range(args.steps):
        x, y = data[step % len(data)]
        began, cpu_began = time.perf_counter(), time.process_time()
        if lbfgs:
            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                value = loss_fn(model(x), y)
                value.backward()
                return value

            loss = optimizer.step(closure)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - began)
        cpu_times.append(time.process_time() - cpu_began)
        if step % 50 == 0 or step == args.steps - 1:
            losses.append(round(loss.item(), 4))
    loop_seconds = time.perf_counter() - loop_began

    timed = times[args.warmup:]
    cpu_timed = cpu_times[args.warmup:]
    result = {
        "label": args.label,
        "model": args.model,
        "steps": args.steps,
        "warmup": args.warmup,
        "timed_steps": len(timed),
        "threads": torch.get_num_threads(),
        "median_ms": statistics.median(timed) * 1e3,
        "mean_ms": statistics.fmean(timed) * 1e3,
        "p10_ms": percentile(timed, 0.10) * 1e3,
        "p90_ms": percentile(timed, 0.90) * 1e3,
        "max_ms": max(timed) * 1e3,
        # CPU time of the whole process (every thread) per step: not lengthened by other processes taking
        # the CPU, so it is steadier than wall time on a busy machine; it misses time spent waiting.
        "cpu_median_ms": statistics.median(cpu_timed) * 1e3,
        "cpu_mean_ms": statistics.fmean(cpu_timed) * 1e3,
        "loop_s": loop_seconds,
        "losses": losses,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "pid": os.getpid(),
    }
    line = json.dumps(result)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    else:
        print(line)
        sys.stdout.flush()


if __name__ == "__main__":
    main()

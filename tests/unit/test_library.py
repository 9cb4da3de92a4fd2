"""The in-process API on real OOMs: a CPU memory budget makes allocations fail exactly as a small device would."""

from __future__ import annotations

import gc
import logging

import pytest
import torch
from torch import nn

import torchdoctor
from torchdoctor.agent.retry import ResilientStep, memory_budget, oom_retry, split_batch

MiB = 2**20


def test_memory_budget_raises_a_real_out_of_memory_error_at_the_allocation_that_exceeds_it():
    with memory_budget("8MiB"):
        small = torch.empty(MiB, dtype=torch.uint8)
        with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 16.00 MiB"):
            torch.empty(16 * MiB, dtype=torch.uint8)
        del small
    torch.empty(16 * MiB, dtype=torch.uint8)  # outside the block the budget is gone


@pytest.mark.parametrize("form", ["bare", "called"])
def test_oom_retry_works_with_and_without_arguments_and_forwards_everything(form):
    calls = []

    def body(a, b=2, *, c=3):
        calls.append((a, b, c))
        if len(calls) < 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return a + b + c

    wrapped = oom_retry(body) if form == "bare" else oom_retry(max_retries=5)(body)
    assert wrapped(1, b=20, c=300) == 321
    assert calls == [(1, 20, 300)] * 3
    assert [r.change for r in wrapped.oom_history] == ["retry", "retry"]


def test_oom_retry_halves_the_named_batch_size_down_to_the_minimum(caplog):
    seen = []

    @torchdoctor.oom_retry(batch_size_arg="batch_size", min_batch_size=64, max_retries=10)
    def evaluate(model, batch_size=512):
        seen.append(batch_size)
        with memory_budget("1MiB"):
            return model(torch.randn(batch_size, 1024)).sum().item()

    with caplog.at_level(logging.WARNING, logger="torchdoctor"):
        with torch.no_grad():
            with pytest.raises(torch.OutOfMemoryError) as err:
                evaluate(nn.Linear(1024, 1024))
    assert seen == [512, 256, 128, 64]  # a 64 x 1024 float input alone is 256 KiB, its output another
    assert "cannot be halved below min_batch_size=64" in "".join(err.value.__notes__)
    assert "batch_size 512 -> 256" in caplog.text


def test_other_errors_are_never_retried():
    calls = []

    @oom_retry
    def broken():
        calls.append(1)
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError):
        broken()
    assert calls == [1]


KEPT = None


@pytest.mark.parametrize("keep_in_global", [False, True])
def test_twenty_ooms_in_a_row_give_the_memory_back_or_name_the_holder(keep_in_global):
    attempts = []

    def remember(record):
        attempts.append(record)

    @oom_retry(max_retries=20, on_oom=remember)
    def greedy():
        held = torch.ones(4 * MiB, dtype=torch.uint8)  # a tensor the failed attempt's frame holds
        try:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 1.00 GiB ({held.numel()})")
        except torch.OutOfMemoryError as exc:
            if keep_in_global:
                globals()["KEPT"] = exc  # the classic leak: an exception (and so its frames) kept for later
            raise
        finally:
            if len(attempts) == 20:
                return "done"  # noqa: B012 - the 21st attempt succeeds

    global KEPT
    try:
        assert greedy() == "done"
    finally:
        last_kept, KEPT = KEPT, None  # the 21st attempt's exception never reached torchdoctor: drop it here
    assert len(attempts) == 20
    assert all(r.leaked_bytes == 0 for r in attempts)  # frames cleared: memory back to the baseline every time
    if keep_in_global:
        assert last_kept is not None
        assert all(any("global 'KEPT'" in h for h in r.holders) for r in attempts)
    else:
        assert all(r.holders == () for r in attempts)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def train(step_budget, scaler=False, clip=None, steps=4):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=256.0) if scaler else None
    runner = ResilientStep(opt, scaler=grad_scaler, scheduler=sched, clip_grad_norm=clip)
    g = torch.Generator().manual_seed(1)
    losses = []
    context = memory_budget(step_budget) if step_budget else torch.enable_grad()
    with context:
        for _ in range(steps):
            batch = (torch.randn(1024, 256, generator=g), torch.randint(0, 10, (1024,), generator=g))
            losses.append(runner(lambda mb: nn.functional.cross_entropy(model(mb[0]), mb[1]), batch).item())
            del batch
    return model, runner, losses


@pytest.mark.parametrize("scaler, clip", [(False, None), (True, 0.5)])
def test_resilient_step_retries_only_the_failed_step_in_micro_batches_with_the_same_result(scaler, clip):
    reference, _, ref_losses = train(None, scaler, clip)
    gc.collect()
    with memory_budget("1TiB") as probe:  # what this process holds already (other tests' leftovers included)
        held = probe.ledgers["cpu"].total()
    recovered, runner, losses = train(held + (11 << 20), scaler, clip)
    assert runner.micro_batches >= 2 and runner.history  # it really ran out of memory and adapted
    for a, b in zip(reference.parameters(), recovered.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert losses == pytest.approx(ref_losses, rel=1e-5)


def test_a_half_applied_optimizer_step_is_undone_before_the_retry():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    real_step, failed = opt.step, []

    def step_that_fails_halfway(*args, **kwargs):
        if not failed:  # the first time: update some parameters in place, then run out of memory
            failed.append(True)
            with torch.no_grad():
                for p in list(model.parameters())[:3]:
                    p.add_(100.0)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return real_step(*args, **kwargs)

    opt.step = step_that_fails_halfway
    reference = make_model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    batch = (torch.randn(64, 256), torch.randint(0, 10, (64,)))
    runner = ResilientStep(opt, undo_partial_step=True)
    with pytest.raises(torch.OutOfMemoryError) as err:  # micro-batches cannot help inside optimizer.step...
        runner(lambda mb: nn.functional.cross_entropy(model(mb[0]), mb[1]), batch)
    assert "inside optimizer.step" in "".join(err.value.__notes__) and runner.micro_batches == 1
    runner(lambda mb: nn.functional.cross_entropy(model(mb[0]), mb[1]), batch)  # ...but the step was undone
    ResilientStep(ref_opt)(lambda mb: nn.functional.cross_entropy(reference(mb[0]), mb[1]), batch)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # the +100 of the failed attempt was undone


def test_split_batch_keeps_order_and_weights():
    x = torch.arange(10)
    parts = split_batch({"x": x, "y": [x * 2]}, 3)
    assert [p["x"].tolist() for p, _ in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [w for _, w in parts] == [0.4, 0.3, 0.3]
    assert parts[1][0]["y"][0].tolist() == [8, 10, 12]

"""How a loss reduces over its batch, read from its autograd graph; what bounds a training loop, read from its
source."""

import textwrap

import torch
import torch.nn.functional as F

from torchdoctor.agent.doctor.evidence import loss_reduction
from torchdoctor.agent.recovery.loop_reading import read_loop

X = torch.randn(8, 5, requires_grad=True)
Y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])


def test_mean_sum_and_token_mean_losses_are_told_apart():
    assert loss_reduction(F.cross_entropy(X, Y)).kind == "mean"
    assert loss_reduction(F.mse_loss(X, torch.zeros(8, 5))).kind == "mean"
    padded = loss_reduction(F.cross_entropy(X, Y, ignore_index=0))
    assert padded.kind == "token-mean" and padded.tokens == 6  # two targets ignored: the divisor is the data's
    assert loss_reduction(F.cross_entropy(X, Y, reduction="sum")).kind == "sum"
    # a VAE's loss: a summed reconstruction plus a scaled summed KL divergence
    vae = F.binary_cross_entropy(torch.sigmoid(X), torch.rand(8, 5), reduction="sum") - 0.5 * torch.sum(X)
    assert loss_reduction(vae).kind == "sum"


def test_scaling_by_a_constant_is_seen_through_and_a_sum_over_the_batch_size_is_a_mean():
    assert loss_reduction(F.cross_entropy(X, Y) / 4).kind == "mean"  # the script's own 1/accumulation
    assert loss_reduction(F.cross_entropy(X, Y, reduction="sum") / 8, samples=8).kind == "mean"
    assert loss_reduction(F.cross_entropy(X, Y, reduction="sum") / 3, samples=8).kind == "sum"
    assert loss_reduction(F.cross_entropy(X, Y) + 0.1 * X.pow(2).sum()).kind == "unknown"  # mean + sum


def loop_of(tmp_path, source, line_text):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(source))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if line_text in text)
    return read_loop(str(path), line, {"batch_size", "bs"}, {"gradient_accumulation_steps"})


def test_a_loop_over_the_data_follows_the_batch_size_and_a_counted_loop_does_not(tmp_path):
    hand = loop_of(tmp_path, """
        n_batches = len(X) // args.batch_size
        for epoch in range(3):
            for b in range(n_batches):
                loss.backward()
        """, "backward")
    assert hand["bound"] == "data" and hand["header"] == "for b in range(n_batches)"
    nanogpt = loop_of(tmp_path, """
        while True:
            for micro_step in range(gradient_accumulation_steps):
                loss.backward()
            if iter_num > max_iters:
                break
        """, "backward")
    assert nanogpt["bound"] == "count" and nanogpt["header"] == "while True"  # past the accumulation loop
    counted = loop_of(tmp_path, """
        def train():
            for it in enumerate(range(max_iters)):
                loss.backward()
        """, "backward")
    assert counted["bound"] == "count" and counted["where"].endswith("train.py:3")
    assert loop_of(tmp_path, "loss.backward()\n", "backward") is None

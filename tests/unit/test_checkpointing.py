"""Activation checkpointing of an unmodified model's repeated blocks: found blocks, the same gradients, BatchNorm
statistics updated once, the model object untouched (deepcopy, pickling), less memory saved for backward."""

import copy
import io

import torch
from torch import nn

from torchdoctor.agent.recovery.activation_checkpointing import ActivationCheckpointing, find_blocks


class Block(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.fc1, self.fc2, self.norm = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.LayerNorm(d)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return x + self.drop(self.fc2(torch.relu(self.fc1(self.norm(x)))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([Block() for _ in range(3)])
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def conv_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                         nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3),
                         nn.Flatten(), nn.LazyLinear(3))


def gradients(model, x, remedy=None, seed=0):
    torch.manual_seed(seed)
    if remedy is not None:
        remedy.adopt(model)
        remedy.install()
    try:
        model.zero_grad()
        model(x).square().mean().backward()
    finally:
        if remedy is not None:
            remedy.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_repeated_composite_blocks_and_flat_sequentials_are_found():
    blocks, segmented = find_blocks(Net())
    assert [type(b).__name__ for b in blocks] == ["Block"] * 3 and segmented == []
    blocks, segmented = find_blocks(conv_net())
    assert blocks == [] and len(segmented) == 1 and segmented[0][1][0] == (0, 3)  # segments of ~sqrt(12) layers
    assert find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) == ([], [])  # nothing to gain


def test_checkpointed_blocks_give_the_same_gradients_bit_for_bit_with_dropout():
    torch.manual_seed(1)
    model, x = Net(), torch.randn(32, 8)
    plain = gradients(model, x)
    remedy = ActivationCheckpointing()
    checked = gradients(model, x, remedy)
    assert all(torch.equal(plain[n], checked[n]) for n in plain)
    assert remedy.checkpointed_calls == 3 and remedy.recomputed_checked == 3 and remedy.recomputed_differed == 0


def test_batchnorm_running_statistics_are_updated_once_and_the_model_object_is_untouched():
    torch.manual_seed(2)
    plain_model = conv_net()
    plain_model(torch.randn(2, 1, 12, 12))  # materialise the lazy layer
    model = copy.deepcopy(plain_model)
    x = torch.randn(16, 1, 12, 12)
    plain = gradients(plain_model, x)
    remedy = ActivationCheckpointing()
    checked = gradients(model, x, remedy)
    assert all(torch.allclose(plain[n], checked[n], rtol=0, atol=0) for n in plain)
    for a, b in zip(plain_model.modules(), model.modules()):
        if isinstance(a, nn.BatchNorm2d):
            assert torch.equal(a.running_mean, b.running_mean) and int(b.num_batches_tracked) == 2
    assert "forward" not in vars(model)  # nothing left on the instance
    torch.save(model, io.BytesIO())  # a whole-model save pickles as usual
    assert remedy.recomputed_checked == 4 and remedy.recomputed_differed == 0


def test_deep_copies_of_a_checkpointed_model_are_not_checkpointed_and_eval_runs_plain():
    model = Net()
    remedy = ActivationCheckpointing()
    remedy.adopt(model)
    remedy.install()
    try:
        ema = copy.deepcopy(model)
        ema(torch.randn(4, 8)).sum().backward()
        model.eval()
        with torch.no_grad():
            model(torch.randn(4, 8))
    finally:
        remedy.remove()
    assert remedy.checkpointed_calls == 0


def test_checkpointing_saves_less_for_backward():
    def saved(model, remedy=None):
        total = [0]

        def pack(t):
            total[0] += t.untyped_storage().nbytes()
            return t

        if remedy is not None:
            remedy.adopt(model)
            remedy.install()
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(torch.randn(256, 8)).sum()
        finally:
            if remedy is not None:
                remedy.remove()
        return total[0]

    model = Net()
    assert saved(model, ActivationCheckpointing()) < saved(model) / 3

"""The two training workloads of bench/oom_recovery.py: synthetic data made here, small models, CPU, one thread.

    a     an MLP (256 -> 512 -> 512 -> 10, as tests/scripts/oom/dataloader_mlp.py) on 8192 rows, batch 1024,
          2 epochs (16 optimizer steps): activations dominate, so under the budget batch 1024 runs out of memory
          in the first steps.
    late  a bag-of-vectors MLP (DeepSets: a per-element MLP, a masked mean over the bag, a linear head) on 10240
          bags, batch 256, 1 epoch (40 optimizer steps). Bags hold 8 vectors, except one rare bag of 16; the
          collate pads every batch to its longest bag, so the one batch that holds it is twice as large. The
          shuffle puts that bag in batch 31 (of 40) at batch size 256: the OOM comes late, after 30 steps.

Everything here is plain PyTorch: ``train_script.py`` (the unmodified user script) and ``inproc.py`` (the
in-process variants) share it so that every variant trains the same model on the same data in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

torch.set_num_threads(1)  # the same reduction order in every process, and little noise on a shared machine

BATCH = {"a": 1024, "late": 256}  # the batch size the script asks for
MODEL_SEED = 0
SHUFFLE_SEED = 1234


# -- data on the host -------------------------------------------------------------------------------------------
# The datasets are numpy arrays and the collate functions build each batch in numpy; only the finished batch
# becomes a tensor (torch.from_numpy). So what counts against the CPU budget is what would count on a GPU: the
# model, its gradients and optimizer state, the batch the loader hands over (as after .to("cuda")) and the
# activations, not the dataset or the loader's per-sample work.


# -- scenario a: a plain MLP ------------------------------------------------------------------------------------
class HostRows(Dataset):
    """8192 rows of 256 features and a label in 10 classes."""

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.x = rng.standard_normal((8192, 256), dtype=np.float32)
        self.y = rng.integers(0, 10, 8192)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], int(self.y[i])


def host_collate(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack([x for x, _ in items])), torch.from_numpy(np.array([y for _, y in items]))


def mlp_model() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def mlp_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


# -- scenario late: bags of vectors, one rare long bag -----------------------------------------------------------
BAGS, BAG_DIM, BAG_LEN, LONG_LEN, LONG_AT_STEP = 10240, 32, 8, 16, 31


def sample_order() -> torch.Tensor:
    """The order in which the training DataLoader yields the samples in its first epoch (the same for every
    batch size): read from a DataLoader built as ``setup`` builds it, over the indices themselves (the loader
    draws its base seed from the generator before the sampler's permutation)."""
    order = DataLoader(range(BAGS), batch_size=BAGS, shuffle=True,
                       generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    return next(iter(order))


def long_bag_index() -> int:
    """The bag that lands in batch ``LONG_AT_STEP`` (1-based) of the first epoch at batch size 256."""
    return int(sample_order()[(LONG_AT_STEP - 1) * BATCH["late"] + 17])


class Bags(Dataset):
    """Bag ``i`` is made from its own seed when it is read (as if read from disk): no data held in memory."""

    def __init__(self) -> None:
        self.long = long_bag_index()

    def __len__(self) -> int:
        return BAGS

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng(100_003 * i + 7)
        x = rng.standard_normal((LONG_LEN if i == self.long else BAG_LEN, BAG_DIM), dtype=np.float32)
        return x, int(rng.integers(0, 10))


def pad_collate(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    longest = max(x.shape[0] for x, _ in items)
    x = np.zeros((len(items), longest, BAG_DIM), dtype=np.float32)
    mask = np.zeros((len(items), longest), dtype=np.float32)
    for i, (bag, _) in enumerate(items):
        x[i, :bag.shape[0]] = bag
        mask[i, :bag.shape[0]] = 1
    return torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(np.array([y for _, y in items]))


class BagMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(BAG_DIM, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.phi(x) * mask.unsqueeze(-1)
        return self.head(h.sum(1) / mask.sum(1, keepdim=True))


def bag_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, mask, y = batch
    return nn.functional.cross_entropy(model(x, mask), y)


SCENARIOS: dict[str, dict[str, Any]] = {
    "a": {"data": HostRows, "model": mlp_model, "loss": mlp_loss, "collate": host_collate, "epochs": 2},
    "late": {"data": Bags, "model": BagMLP, "loss": bag_loss, "collate": pad_collate, "epochs": 1},
}


def setup(scenario: str, batch_size: int) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    """Model, optimizer and DataLoader, seeded: every call gives the same initial weights and data order."""
    spec = SCENARIOS[scenario]
    torch.manual_seed(MODEL_SEED)
    model = spec["model"]()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(spec["data"](), batch_size=batch_size, shuffle=True, collate_fn=spec["collate"],
                        generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    return model, opt, loader


def train(scenario: str, batch_size: int, on_step: Callable[[int], None] | None = None) -> tuple[nn.Module, int]:
    """The plain training loop (what the user wrote). Returns the model and its number of optimizer steps."""
    model, opt, loader = setup(scenario, batch_size)
    loss_fn = SCENARIOS[scenario]["loss"]
    steps = 0
    for _ in range(SCENARIOS[scenario]["epochs"]):
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward()
            opt.step()
            steps += 1
            if on_step is not None:
                on_step(steps)
    return model, steps


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """As tests/e2e/test_oom_recovery.py: max over tensors of max|a-b| / max|a|."""
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)


def now() -> float:
    return time.time()

"""Memory limits as tests, with torchdoctor's pytest plugin (installed with torchdoctor):

    pytest examples/test_memory_limits.py --torchdoctor-report

Each marked test fails when its peak tensor memory (exact, counted per storage, on the CPU too) exceeds its
limit, with the measured figure in the failure. The model is the one of examples/train_mlp.py.
"""

import pytest
import torch
from torch import nn


def make_model(hidden: int = 512) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@pytest.mark.torch_memory(limit="32 MiB")
def test_a_training_step_with_batch_128_fits_in_32_mib():
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    for _ in range(2):  # the second step holds the optimizer state as well
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.torch_memory(limit="16 MiB")
def test_evaluation_of_1024_samples_without_autograd_fits_in_16_mib():
    model = make_model().eval()
    with torch.no_grad():
        predictions = model(torch.randn(1024, 64)).argmax(dim=1)
    assert predictions.shape == (1024,)

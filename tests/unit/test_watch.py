"""torchdoctor.watch: the doctor in code, in this process, installed only inside the block."""

import warnings

import pytest
import torch
from torch import nn

import torchdoctor
from torchdoctor.errors import UsageError


def _loop(model, optimizer, steps=6, zero_grad=True):
    torch.manual_seed(0)
    for _ in range(steps):
        if zero_grad:
            optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(torch.randn(16, 4)), torch.randn(16, 1))
        loss.backward()
        optimizer.step()


def _model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def test_a_loop_without_zero_grad_gives_td101_as_a_finding_and_a_warning():
    model, optimizer = _model_and_optimizer()
    with pytest.warns(torchdoctor.TorchDoctorFinding, match="TD101"):
        with torchdoctor.watch(model, optimizer) as doctor:
            _loop(model, optimizer, zero_grad=False)
    assert [f.id for f in doctor.findings] == ["TD101"]
    finding = doctor.findings[0]
    assert finding.severity == "error" and finding.location.endswith(".py:" + finding.location.split(":")[-1])
    assert "test_watch.py" in finding.location and "step 2" in finding.evidence


def test_a_correct_loop_is_silent_and_nothing_stays_installed():
    model, optimizer = _model_and_optimizer()
    originals = (torch.optim.Optimizer.zero_grad, torch.nn.utils.clip_grad_norm_, torch.autograd.backward)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchdoctor.TorchDoctorFinding)
        with torchdoctor.watch(model, optimizer) as doctor:
            _loop(model, optimizer)
    assert doctor.findings == [] and doctor.active
    assert (torch.optim.Optimizer.zero_grad, torch.nn.utils.clip_grad_norm_, torch.autograd.backward) == originals


def test_fail_on_error_raises_at_the_end_of_the_block():
    model, optimizer = _model_and_optimizer()
    with pytest.raises(torchdoctor.FindingsError, match="TD101 at .*test_watch.py"):
        with torchdoctor.watch(model, optimizer, warn=False, fail_on="error"):
            _loop(model, optimizer, zero_grad=False)


def test_an_exception_in_the_block_is_not_replaced_by_findings():
    model, optimizer = _model_and_optimizer()
    with pytest.raises(KeyError):
        with torchdoctor.watch(model, optimizer, warn=False, fail_on="warning"):
            _loop(model, optimizer, zero_grad=False)
            raise KeyError("the user's own error")


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError, match="fail_on must be one of"):
        with torchdoctor.watch(fail_on="sometimes"):
            pass
    with pytest.raises(UsageError, match="not str"):
        with torchdoctor.watch("model"):
            pass
    assert not getattr(torch.optim.Optimizer.zero_grad, "__torchdoctor_wrapped__", False)

"""The doctor where library trainers make the calls: locations in the script rather than in the installed library,
accelerate's ``loss / gradient_accumulation_steps`` with 1, evaluation over hand-sliced tensors after
``model.eval()``, and Lightning's reset of the gradients before its validation loop."""

import os

import torch
import torch.nn.functional as F
from torch import nn

import torchdoctor
from torchdoctor.agent.doctor.evidence import loss_shape
from torchdoctor.agent.doctor.locations import _pick, traceback_location

INSTALLED = os.sep.join(["", "venv", "lib", "python3.11", "site-packages", "accelerate", "accelerator.py"])
SCRIPT = os.path.abspath("train.py")


def test_a_loss_divided_or_multiplied_by_one_is_not_normalised():
    torch.manual_seed(0)
    loss = F.mse_loss(nn.Linear(3, 1)(torch.randn(8, 3)), torch.zeros(8, 1))
    for same in (loss / 1, loss * 1, 1 * loss, loss * torch.tensor(1.0)):
        shape = loss_shape(same, exact_tokens=False)
        assert shape.mean and not shape.scaled and shape.node == "MseLossBackward0"
    for divided in (loss / 2, 0.5 * loss, loss / torch.tensor(2.0)):
        assert loss_shape(divided, exact_tokens=False).scaled


def test_a_location_prefers_the_scripts_frame_to_the_installed_librarys():
    # innermost first: the library's backward call, then the script line that called it
    assert _pick([(INSTALLED, 2861), (SCRIPT, 12)]) == f"{os.path.relpath(SCRIPT)}:12"
    assert _pick([(INSTALLED, 2861)]).endswith("accelerator.py:2861")  # only library frames: the innermost of them
    assert _pick([(torch.__file__, 1)]) is None  # torch's own frames are never shown
    trace = [f'  File "{SCRIPT}", line 40, in main\n    trainer.train()\n',
             f'  File "{INSTALLED}", line 2861, in backward\n    loss.backward()\n']
    assert traceback_location(trace) == f"{os.path.relpath(SCRIPT)}:40"


def _trained(dropout=False):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 16), nn.ReLU(), *([nn.Dropout(0.1)] if dropout else []), nn.Linear(16, 1)]
    model = nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, optimizer


def _train(model, optimizer, steps=3):
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1)).backward()
        optimizer.step()


def _findings(evaluate):
    model, optimizer = _trained()
    with torchdoctor.watch(model, optimizer, warn=False) as doctor:
        _train(model, optimizer)
        model.eval()
        evaluate(model)
        model.train()
        _train(model, optimizer)
    return doctor.findings


def _slices(model):
    x = torch.randn(32, 4)
    return [model(x[i:i + 8]) for i in range(0, 32, 8)]


def test_evaluation_over_slices_after_eval_with_autograd_on_is_td110_at_the_forwards_line():
    findings = _findings(lambda model: [out.argmax(1) for out in _slices(model)])
    assert [f.id for f in findings] == ["TD110"]
    assert "test_doctor_library_calls.py" in findings[0].location
    assert "after Sequential.eval() at step 3" in findings[0].evidence


def test_evaluation_under_no_grad_and_saliency_maps_are_silent():
    assert _findings(lambda model: torch.no_grad()(_slices)(model)) == []

    def saliency(model):
        x = torch.randn(8, 4, requires_grad=True)
        torch.autograd.grad(model(x).sum(), x)  # a backward pass through the evaluation's outputs: wanted

    assert _findings(saliency) == []


def test_a_model_kept_in_eval_mode_on_purpose_while_it_trains_is_silent():
    model, optimizer = _trained(dropout=True)
    with torchdoctor.watch(model, optimizer, warn=False) as doctor:
        _train(model, optimizer)
        model.eval()  # dropout off for the fine-tuning steps: its forwards feed backward passes
        _train(model, optimizer)
    assert doctor.findings == []


def _no_zero_grad(model, optimizer, steps, reset_every, evaluate):
    for step in range(1, steps + 1):
        F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1)).backward()
        optimizer.step()
        if step % reset_every == 0:
            model.zero_grad()
            if evaluate:  # as Lightning does: the gradients released before the validation loop
                model.eval()
                with torch.no_grad():
                    model(torch.randn(8, 4))
                model.train()


def test_resets_before_each_evaluation_do_not_make_a_missing_zero_grad_an_accumulation_bug():
    model, optimizer = _trained()
    with torchdoctor.watch(model, optimizer, warn=False) as doctor:
        _no_zero_grad(model, optimizer, steps=16, reset_every=6, evaluate=True)
    assert [f.id for f in doctor.findings] == ["TD101"]
    model, optimizer = _trained()
    with torchdoctor.watch(model, optimizer, warn=False) as doctor:
        _no_zero_grad(model, optimizer, steps=16, reset_every=6, evaluate=False)
    assert [f.id for f in doctor.findings] == ["TD103"]

"""The doctor's pure pieces: the catalog, how a loss was made, graph walks, who holds a tensor."""

import pytest
import torch
import torch.nn.functional as F

from torchdoctor.agent.doctor.evidence import SCALED_BY_SCALER, graph_nodes, holder_of, listed, loss_shape, saved_bytes
from torchdoctor.checks import CATALOG, SEVERITIES, at_or_above, explain


def test_every_check_has_a_severity_title_fix_and_a_before_after_pair():
    assert sorted(CATALOG) == [f"TD{n}" for n in range(101, 120)]
    for check in CATALOG.values():
        assert check.severity in SEVERITIES and check.title and check.fix and check.why
        assert check.before != check.after
        text = explain(check.id.lower())
        assert text.startswith(f"{check.id} ({check.severity}): {check.title}") and "After:\n    " in text


def test_fail_on_levels():
    assert at_or_above("error", "warning") and at_or_above("warning", "warning")
    assert not at_or_above("warning", "error") and not at_or_above("info", "warning")


def _model_output():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 4)(torch.randn(8, 3))


def test_loss_shape_tells_a_mean_loss_from_a_normalised_one():
    out = _model_output()
    mean = F.mse_loss(out, torch.zeros(8, 4))
    assert loss_shape(mean, exact_tokens=False) == loss_shape(mean, True)
    shape = loss_shape(mean, exact_tokens=False)
    assert shape.mean and not shape.scaled and shape.node == "MseLossBackward0"
    assert loss_shape(mean / 4, False).scaled and loss_shape(mean * 0.25, False).mean
    summed = F.mse_loss(out, torch.zeros(8, 4), reduction="sum")
    assert not loss_shape(summed, False).mean
    assert loss_shape(out.sum(), False).node == "SumBackward0" and not loss_shape(out.sum(), False).mean
    assert loss_shape(out.mean(), False).mean
    leaf = torch.tensor(1.0, requires_grad=True)
    assert loss_shape(leaf, False).node == ""


def test_loss_shape_looks_through_the_grad_scalers_multiplication():
    loss = F.mse_loss(_model_output(), torch.zeros(8, 4))
    scaled = loss * torch.tensor(65536.0)
    assert loss_shape(scaled, False).scaled  # without the mark: a multiplication, as a normalisation would be
    scaled.grad_fn.metadata[SCALED_BY_SCALER] = True
    shape = loss_shape(scaled, False)
    assert shape.mean and not shape.scaled


def test_token_mean_cross_entropy_counts_the_tokens_that_are_not_ignored():
    logits = _model_output()
    targets = torch.tensor([0, 1, 2, 3, -100, -100, -100, 1])
    shape = loss_shape(F.cross_entropy(logits, targets, ignore_index=-100) / 2, exact_tokens=True)
    assert shape.mean and shape.scaled and shape.tokens == 5 and shape.padded
    full = loss_shape(F.cross_entropy(logits, targets.clamp(min=0)), exact_tokens=True)
    assert full.tokens == 8 and not full.padded
    weighted = loss_shape(F.cross_entropy(logits, targets, weight=torch.ones(4)), exact_tokens=True)
    assert weighted.tokens is None  # with class weights the count is a sum of weights


def test_graph_nodes_visits_each_node_once_and_saved_bytes_counts_activations_not_excluded_storages():
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))
    out = model(torch.randn(32, 64))
    names = [n.name() for n in graph_nodes(out.grad_fn)]
    assert len(names) == len(set(map(id, graph_nodes(out.grad_fn)))) and "ReluBackward0" in names
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = saved_bytes(out.grad_fn, exclude=params)
    assert kept >= 32 * 256 * 4  # at least the ReLU output the second layer saved
    assert saved_bytes(out.grad_fn, exclude=set()) > kept


def test_holder_of_names_a_local_variable_or_the_list_holding_it():
    kept = torch.ones(3)
    history = [torch.zeros(2)]
    names = [holder_of(kept), holder_of(history[0]), holder_of(torch.ones(1))]  # (pytest's rewritten asserts
    assert names == ["kept", "history (a list)", None]                         # bind temporaries)


def test_listed_shortens_long_lists():
    assert listed(["a", "b"]) == "a, b"
    assert listed(list("abcde")) == "a, b, c, … (5 in all)"


@pytest.mark.parametrize("check_id", ["TD101", "TD119"])
def test_explain_is_case_insensitive(check_id):
    assert explain(check_id.lower()) == explain(check_id)

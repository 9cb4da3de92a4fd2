"""The tensor accountant against real CPU tensors (no mocks): bytes in, bytes out, breakdown at the peak."""

import gc

import torch

from torchdoctor.agent.memory.accounting import (
    ACTIVATIONS,
    GRADIENTS,
    INPUTS_DATA,
    OPTIMIZER_STATE,
    OPTIMIZER_TEMPORARIES,
    PARAMETERS,
    TensorAccountant,
)


def test_counts_new_storages_once_and_releases_them_when_they_die():
    acct = TensorAccountant()
    acct.open()
    try:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        view = a[10:20]  # a view shares the storage: no new bytes
        a.add_(1)  # in place: no new bytes
        b = torch.empty(250, dtype=torch.float64)  # 2000 bytes
        cpu = acct.ledgers["cpu"]
        assert cpu.current == 6000
        del a, view
        gc.collect()
        assert cpu.current == 2000
        assert cpu.span_peak == 6000
        del b
    finally:
        acct.close()


def test_stops_counting_new_storages_when_closed_but_still_sees_frees():
    acct = TensorAccountant()
    acct.open()
    x = torch.empty(100)
    acct.close()
    y = torch.empty(1000)
    cpu = acct.ledgers["cpu"]
    assert cpu.current == 400
    del x
    assert cpu.current == 0
    del y


def test_classifying_a_storage_later_fixes_the_breakdown_recorded_at_the_peak():
    acct = TensorAccountant()
    acct.open()
    try:
        grad = torch.empty(1000)  # born outside a forward (inputs/data), becomes a gradient later
        temp = torch.empty(500)
        del temp  # the peak (6000 bytes) was reached with both alive
        late = torch.empty(10)  # born after the peak
        acct.classify([grad], GRADIENTS)
        acct.classify([late], PARAMETERS)
        cpu = acct.ledgers["cpu"]
        assert cpu.span_peak == 6000
        assert cpu.span_peak_cats[GRADIENTS] == 4000
        assert cpu.span_peak_cats[INPUTS_DATA] == 2000
        assert cpu.span_peak_cats[PARAMETERS] == 0  # `late` was not alive at the peak
        assert cpu.cats[PARAMETERS] == 40
    finally:
        acct.close()


def test_census_counts_tensors_that_existed_before_accounting_started():
    before = torch.empty(2048)
    acct = TensorAccountant()
    acct.classify([before], PARAMETERS, census=True)
    assert acct.ledgers["cpu"].current == 8192
    assert acct.ledgers["cpu"].cats[PARAMETERS] == 8192


def test_phase_peaks_follow_the_phase_in_which_memory_was_highest():
    acct = TensorAccountant()
    acct.open()
    try:
        acct.set_phase("forward")
        a = torch.empty(1000)
        acct.set_phase("backward")
        b = torch.empty(2000)
        del a, b
        acct.set_phase("optimizer")
        figures = acct.figures()["cpu"]
        assert figures["phase_peaks"]["forward"] == 4000
        assert figures["phase_peaks"]["backward"] == 12000
        assert figures["phase_peaks"]["optimizer"] == 0
        assert figures["peak_phase"] == "backward"
    finally:
        acct.close()


def test_lists_the_largest_storages_alive_at_the_peak_even_when_they_died_after_it():
    acct = TensorAccountant()
    acct.open()
    try:
        early = torch.empty(3 << 18)  # 3 MiB, dies before the peak: not alive at it
        del early
        gc.collect()
        acct.set_phase("forward")
        acct.module_stack.append("encoder.fc1 (Linear)")
        kept = torch.empty(1 << 18)  # 1 MiB
        acct.module_stack.pop()
        big = torch.empty(2 << 18, dtype=torch.float64)  # 4 MiB: the peak is reached here
        del big  # alive at the peak, gone before the figures are read
        gc.collect()
        acct.set_phase("backward")
        small = torch.empty(10)
    finally:
        acct.close()
    figures = acct.figures()["cpu"]
    top = figures["top_tensors"]
    assert [t["bytes"] for t in top] == [4 << 20, 1 << 20]  # the 3 MiB one died before; `small` came after
    assert top[0] == {"bytes": 4 << 20, "shape": [2 << 18], "dtype": "float64", "category": "activations_other",
                      "phase": "forward", "module": None, "name": None}
    assert top[1]["module"] == "encoder.fc1 (Linear)"
    assert acct.figures()["cpu"].get("top_tensors") is None  # listed once per new peak, not every span
    del kept, small


def test_a_later_higher_peak_forgets_storages_that_died_before_it():
    acct = TensorAccountant()
    acct.open()
    try:
        first = torch.empty(1 << 18)  # 1 MiB peak
        del first
        gc.collect()
        second = torch.empty(1 << 19)  # 2 MiB: a new peak without `first`
    finally:
        acct.close()
    assert [t["bytes"] for t in acct.figures()["cpu"]["top_tensors"]] == [2 << 20]
    del second


def test_what_an_optimizer_step_makes_is_a_temporary_unless_it_is_kept_as_state():
    # GIVEN an Adam step under accounting: its moments stay in optimizer.state, its foreach temporaries do not
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters(), foreach=True)
    model(torch.randn(8, 256)).sum().backward()
    acct = TensorAccountant()
    acct.classify(list(model.parameters()), PARAMETERS)
    acct.classify([p.grad for p in model.parameters()], GRADIENTS)
    acct.open()
    try:
        acct.set_phase("optimizer")
        optimizer.step()
        acct.set_phase("other")
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        acct.classify(state, OPTIMIZER_STATE)  # what the session does after each step
        cpu = acct.ledgers["cpu"]
        param_bytes = sum(p.numel() * 4 for p in model.parameters())
        # THEN the peak holds the state (2x the parameters, plus the step counts) and the step's temporaries apart
        assert cpu.span_peak_phase == "optimizer"
        assert 2 * param_bytes <= cpu.span_peak_cats[OPTIMIZER_STATE] <= 2 * param_bytes + 64
        assert cpu.span_peak_cats[OPTIMIZER_TEMPORARIES] > 0 and cpu.cats[OPTIMIZER_TEMPORARIES] == 0
        assert cpu.span_peak_cats[ACTIVATIONS] == 0
    finally:
        acct.close()

"""The memory gate's verdict on report figures (pure: no run)."""

from torchdoctor.supervisor.gate import evaluate, finding_problems

KiB = 1024


def report(peak, phases=None, steps=3):
    return {"outcome": "success", "exit_code": 0, "steps": steps,
            "peaks": [{"device": "cpu", "kind": "tensor_bytes", "bytes": peak, "phase_peaks": phases or {}}]}


def test_growth_within_the_allowed_increase_passes_and_beyond_it_fails():
    baseline = {"tensor_bytes:cpu": 100 * KiB}
    assert evaluate(report(104 * KiB), None, baseline, 0.05)[1] == []
    rows, problems = evaluate(report(106 * KiB), None, baseline, 0.05)
    assert problems == ["peak tensor bytes (cpu) 106.0 KiB grew +6.0% over the baseline 100.0 KiB (allowed +5.0%)"]
    assert evaluate(report(500 * KiB), None, baseline, 5.0)[1] == []  # --max-increase 500%


def test_phase_peaks_are_shown_but_not_gated():
    rows, problems = evaluate(report(100 * KiB, {"backward": 90 * KiB}), None,
                              {"tensor_bytes:cpu": 100 * KiB, "tensor_bytes:cpu:backward": 10 * KiB}, 0.05)
    assert problems == [] and [r.key for r in rows if not r.gated] == ["tensor_bytes:cpu:backward"]


def test_a_budget_applies_to_the_device_peak_and_nothing_measured_fails():
    assert evaluate(report(2 * KiB), 1 * KiB, None, 0.05)[1][0].endswith("is over the budget of 1.0 KiB")
    assert "nothing was measured" in evaluate(report(0, steps=0), None, None, 0.05)[1][0]


def test_findings_fail_only_at_or_above_the_chosen_severity():
    findings = [{"id": "TD119", "severity": "warning", "title": "memory grows", "location": "t.py:3", "evidence": "e"},
                {"id": "TD101", "severity": "error", "title": "not reset", "location": "t.py:9", "evidence": "e"}]
    assert finding_problems(findings, None) == []
    assert [p.split()[0] for p in finding_problems(findings, "error")] == ["TD101"]
    assert [p.split()[0] for p in finding_problems(findings, "warning")] == ["TD119", "TD101"]


def test_phase_rows_are_each_phases_largest_over_the_run_with_its_step():
    # the run's peak is step 1's backward; the largest forward was step 2's (the peak's own span says 7.6 KiB)
    data = report(30 * KiB, {"forward": 7 * KiB, "backward": 30 * KiB})
    data["peaks"][0]["run_phase_peaks"] = {"forward": {"bytes": 21 * KiB, "step": 2, "span": "step"},
                                           "backward": {"bytes": 30 * KiB, "step": 1, "span": "step"},
                                           "evaluation": {"bytes": 40 * KiB, "step": 3, "span": "tail"}}
    rows, _ = evaluate(data, None, None, 0.05)
    shown = {r.key: (r.label, r.current) for r in rows if not r.gated}
    assert shown["tensor_bytes:cpu:forward"] == ("  in forward (step 2)", 21 * KiB)
    assert shown["tensor_bytes:cpu:evaluation"] == ("  in evaluation (after the last step)", 40 * KiB)


def test_a_baseline_that_holds_none_of_the_runs_figures_fails_saying_nothing_was_compared():
    for baseline in ({}, {"tensor_bytes:cuda:0": 100 * KiB}):
        problems = evaluate(report(100 * KiB), None, baseline, 0.05)[1]
        assert len(problems) == 1 and "nothing was compared" in problems[0], problems

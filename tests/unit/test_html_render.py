"""report.html rendered from a report dict: self-contained, escaped, with and without the plotting extra."""

import re
from html import escape

import pytest

from tests.unit.test_report import MiB, report
from torchdoctor.reporters.html import INSTALL_HINT, render_html

# anything a browser would fetch: scripts, stylesheets, frames, CSS urls other than in-page ``url(#id)``, links
NETWORK = re.compile(r"<script|<link|<iframe|@import|url\((?!#)|(src|href)\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)
HINT = escape(INSTALL_HINT)


def with_details(data):
    peak = next(p for p in data["peaks"] if p["kind"] == "tensor_bytes")
    peak["top_tensors"] = [
        {"bytes": 16 * MiB, "shape": [4096, 1024], "dtype": "float32", "category": "activations_other",
         "phase": "forward", "module": "encoder.fc1 (Linear)", "name": None},
        {"bytes": 4 * MiB, "shape": [1024, 1024], "dtype": "float32", "category": "gradients", "phase": "backward",
         "module": None, "name": "encoder.fc1.weight.grad"}]
    data["findings"] = [{"id": "TD109", "severity": "error", "title": "loss kept with its graph",
                         "location": "train.py:12", "evidence": "total <script>alert(1)</script> grows",
                         "fix": "use loss.item()", "t": 0.0}]
    data["attempts"] = [
        {"attempt": 1, "outcome": "oom", "steps": 2, "seconds": 1.5, "summary": "ran out of memory at step 2",
         "decision": "retrying with 2 micro-batches", "next_remedy": "micro-batch",
         "oom": {"step": 2, "phase": "backward", "device": "cpu", "backend": "torchdoctor-budget",
                 "requested_bytes": 8 * MiB, "in_use_bytes": 30 * MiB, "capacity_bytes": 32 * MiB,
                 "message": "CPU out of memory"}},
        {"attempt": 2, "outcome": "success", "steps": 4, "seconds": 2.0, "summary": "finished"}]
    data["recovery"] = {"recovered": True, "remedies": ["micro-batch"], "effective_batch_kept": True,
                        "numerics_changed": False, "restarted_from": "beginning", "steps_redone": 2,
                        "seconds_lost": 1.5}
    return data


def test_the_page_has_the_charts_the_peak_and_what_held_memory_and_needs_no_network():
    pytest.importorskip("matplotlib")
    page = render_html(with_details(report()), with_charts=True)
    assert page.startswith("<!DOCTYPE html>")
    assert re.search(r'<figure class="chart" id="chart-memory"><svg', page)
    assert re.search(r'<figure class="chart" id="chart-breakdown-cpu"><svg', page)
    assert 'id="peak-figure">Peak tensor memory: <strong>40.0 MiB</strong> on cpu (step 2, backward)' in page
    assert "<td>encoder.fc1.weight.grad</td>" in page and "<td>made in encoder.fc1 (Linear)</td>" in page
    assert "<td>4096×1024</td>" in page
    assert "recovered with micro-batch" in page and "torchdoctor-budget" in page and "<td class=num>8.0 MiB</td>" in page
    assert NETWORK.search(page) is None  # everything inline: it opens offline, from a CI artifact
    assert HINT not in page


def test_user_text_is_escaped():
    page = render_html(with_details(report()), with_charts=False)
    assert "<script>" not in page and "total &lt;script&gt;alert(1)&lt;/script&gt; grows" in page


def test_without_the_plotting_extra_the_page_keeps_its_tables_and_says_how_to_get_charts():
    page = render_html(with_details(report()), with_charts=False)
    assert "<svg" not in page and HINT in page
    assert "Peak tensor memory: <strong>40.0 MiB</strong>" in page
    assert "<td>2</td><td>cpu</td><td class=num>40.0 MiB</td><td>backward</td>" in page  # the step table


def test_a_run_that_measured_nothing_says_so():
    data = report()
    data["peaks"], data["samples"] = [], []
    page = render_html(data, with_charts=True)
    assert "Peak tensor memory: not measured" in page and "Nothing was measured." in page


def test_cuda_allocator_peaks_are_drawn_beside_the_tensor_peaks_when_a_gpu_was_used():
    pytest.importorskip("matplotlib")
    data = report()
    for i, sample in enumerate(s for s in data["samples"] if s["devices"]):
        sample["devices"]["cuda:0"] = {"tensor_peak": (10 + i) * MiB, "cuda_allocated_peak": (12 + i) * MiB,
                                       "cuda_reserved_peak": 20 * MiB}
    page = render_html(data, with_charts=True)
    chart = page[page.index('id="chart-memory"'):page.index("</figure>", page.index('id="chart-memory"'))]
    for label in ("tensor peak (cuda:0)", "CUDA allocated peak (cuda:0)", "CUDA reserved peak (cuda:0)",
                  "tensor peak (cpu)"):
        assert label in chart  # legend entries (SVG text)


def test_the_page_states_each_invariant_and_says_what_changed():
    data = with_details(report())
    data["recovery"]["invariants"] = [
        {"key": "optimizer_steps", "status": "kept", "as_asked": 8, "as_done": 8, "evidence": "8 steps, one per batch"},
        {"key": "batchnorm", "status": "changed", "as_asked": 128, "as_done": 64,
         "evidence": "BatchNorm layers normalised over micro-batches of up to 64 samples instead of batches of 128"}]
    page = render_html(data)
    assert "<td>optimizer steps</td><td>kept</td><td>8 steps, one per batch</td>" in page
    assert "kept, measured: optimizer steps" in page  # only what was measured kept is called kept
    assert re.search(r'<p class="error">training BatchNorm statistics changed: BatchNorm layers normalised', page)

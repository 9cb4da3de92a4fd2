"""The torchdoctor pytest plugin, run for real: each case is a pytest session in a subprocess (``pytester``),
where the plugin loads through the ``pytest11`` entry point as it does for users. The cases are grouped into
few sessions because each one that measures imports torch (~2-3 s)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from torchdoctor.pytest_plugin import (
    DevicePeak,
    LimitError,
    MemoryLimit,
    limit_failure,
    limit_from_marker,
    summary_lines,
)

pytest_plugins = ["pytester"]

MiB = 2**20

MEASURED = '''
import pytest
import torch

MiB = 2**20


@pytest.fixture
def weights():
    return torch.zeros(32 * MiB, dtype=torch.uint8)


@pytest.mark.torch_memory(limit="16 MiB")
def test_over():
    x = torch.zeros(64 * MiB, dtype=torch.uint8)


@pytest.mark.torch_memory("128 MiB")
def test_under():
    x = torch.zeros(64 * MiB, dtype=torch.uint8)


@pytest.mark.torch_memory(limit=32 * MiB)
def test_freed_before_the_end():
    x = torch.zeros(64 * MiB, dtype=torch.uint8)
    del x
    y = torch.zeros(MiB, dtype=torch.uint8)


@pytest.mark.torch_memory(limit="48 MiB")
def test_fixture_tensors_count(weights):
    x = torch.zeros(32 * MiB, dtype=torch.uint8)


@pytest.mark.torch_memory(limit="1 MiB", device="cuda:0")
def test_other_device_only():
    x = torch.zeros(8 * MiB, dtype=torch.uint8)


@pytest.mark.torch_memory(limit="lots")
def test_bad_limit():
    pass


@pytest.mark.torch_memory
def test_missing_limit():
    pass


def test_unmarked():
    x = torch.zeros(2 * MiB, dtype=torch.uint8)


@pytest.mark.torch_memory(limit="1 MiB")
def test_zz_own_failure():  # last: pytest keeps the last failure's frames (and tensors) alive
    x = torch.zeros(4 * MiB, dtype=torch.uint8)
    assert False, "the test's own failure"
'''

UNMEASURED = '''
import sys


def test_torch_not_imported():
    assert "torchdoctor.pytest_plugin" in sys.modules
    assert "torch" not in sys.modules
'''


def _properties(junit_xml: str, test: str) -> dict[str, str]:
    case = next(c for c in ET.parse(junit_xml).iter("testcase") if c.get("name") == test)
    return {p.get("name"): p.get("value") for p in case.iter("property")}


# -- in subprocesses, as users run it --------------------------------------------------------------------
def test_marked_tests_are_measured_judged_and_reported(pytester: pytest.Pytester) -> None:
    # GIVEN tests with torch_memory limits, over and under them, and one unmarked test
    pytester.makepyfile(test_measured=MEASURED)

    # WHEN pytest runs them with the per-test report and a JUnit XML file
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-rA",
                                           "--torchdoctor-report", "--junitxml=junit.xml")

    # THEN over the limit fails with the measured figure; under it, or on another device, passes
    result.assert_outcomes(passed=3, failed=6)
    result.stdout.fnmatch_lines([
        "*_ test_over _*",
        "peak tensor memory 64.0 MiB on cpu exceeds the torch_memory limit 16.0 MiB (phase at the peak: other; "
        "breakdown: inputs/data 64.0 MiB)",
    ])
    # a tensor freed before the end still made the peak; fixtures' tensors count too
    result.stdout.fnmatch_lines(["peak tensor memory 64.0 MiB on cpu exceeds the torch_memory limit 32.0 MiB *"])
    result.stdout.fnmatch_lines(["peak tensor memory 64.0 MiB on cpu exceeds the torch_memory limit 48.0 MiB *"])
    # a bad marker fails its test in one line, without the plugin's traceback
    result.stdout.fnmatch_lines(["*_ test_bad_limit _*",
                                 "torch_memory marker: not a size: 'lots' (try 6GiB, 512MiB or 800MB)",
                                 "*_ test_missing_limit _*",
                                 "torch_memory marker: a limit is needed, *"])
    assert "pytest_plugin.py" not in result.stdout.str()
    # the test's own failure is not masked by the limit it also exceeded
    result.stdout.fnmatch_lines(["FAILED test_measured.py::test_zz_own_failure - AssertionError: the test's own*"])

    # AND the summary has one line per test, largest peak first, with the limit where there is one
    result.stdout.fnmatch_lines([
        "*= torchdoctor: peak tensor memory per test =*",
        "test_measured.py::test_fixture_tensors_count * 64.0 MiB  cpu  limit 48.0 MiB",
        "test_measured.py::test_freed_before_the_end * 64.0 MiB  cpu  limit 32.0 MiB",
        "test_measured.py::test_over * 64.0 MiB  cpu  limit 16.0 MiB",
        "test_measured.py::test_under * 64.0 MiB  cpu  limit 128.0 MiB",
        "test_measured.py::test_zz_own_failure * 4.0 MiB  cpu  limit 1.0 MiB",
        "test_measured.py::test_unmarked * 2.0 MiB  cpu",
        "test_measured.py::test_other_device_only * 0 B  cuda:0  limit 1.0 MiB",  # the limited device's peak
    ])
    assert "test_bad_limit  " not in result.stdout.str()  # never measured

    # AND the figure is in the JUnit XML
    props = _properties(str(pytester.path / "junit.xml"), "test_under")
    assert props == {"torch_memory_peak_bytes": str(64 * MiB), "torch_memory_peak_device": "cpu",
                     "torch_memory_limit_bytes": str(128 * MiB)}
    assert _properties(str(pytester.path / "junit.xml"), "test_unmarked")["torch_memory_peak_bytes"] == str(2 * MiB)


def test_unmarked_tests_without_the_option_are_untouched(pytester: pytest.Pytester) -> None:
    # GIVEN a session with no marked test and no --torchdoctor-report
    pytester.makepyfile(test_plain=UNMEASURED)

    # WHEN it runs
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist",
                                           "--junitxml=junit.xml")

    # THEN the plugin is loaded but imported no torch, measured nothing and printed nothing
    result.assert_outcomes(passed=1)
    assert "peak tensor memory" not in result.stdout.str()
    assert _properties(str(pytester.path / "junit.xml"), "test_torch_not_imported") == {}


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.torch_memory(limit, device=None): *"])


def test_report_under_xdist_is_printed_by_the_controller(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    # GIVEN two measured tests, WHEN they run in an xdist worker (one: each worker pays torch's import and its
    # first-dispatch-mode cost, ~6 s; the report's path, worker -> serialized report -> controller, is the same)
    pytester.makepyfile(test_two='''
import torch

def test_a():
    x = torch.zeros(2**20, dtype=torch.uint8)

def test_b():
    x = torch.zeros(3 * 2**20, dtype=torch.uint8)
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1", "--torchdoctor-report")

    # THEN the controller prints the summary, built from the worker's reports, once
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*= torchdoctor: peak tensor memory per test =*",
                                 "test_two.py::test_b * 3.0 MiB  cpu",
                                 "test_two.py::test_a * 1.0 MiB  cpu"])
    assert result.stdout.str().count("torchdoctor: peak tensor memory per test") == 1


# -- the pure parts, in process --------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    (("512 MiB",), {}, MemoryLimit(512 * MiB)),
    ((), {"limit": "1GiB", "device": "cuda:0"}, MemoryLimit(2**30, "cuda:0")),
    ((1000,), {}, MemoryLimit(1000)),
])
def test_limits_are_read_from_the_marker(args: tuple, kwargs: dict, expected: MemoryLimit) -> None:
    assert limit_from_marker(args, kwargs) == expected


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((), {}, "a limit is needed"),
    (("lots",), {}, "not a size: 'lots'"),
    ((0,), {}, "must be positive"),
    ((True,), {}, "not True"),
    ((1.5,), {}, "not 1.5"),
    (("1 MiB", "2 MiB"), {}, "give one limit"),
    (("1 MiB",), {"limit": "2 MiB"}, "give one limit"),
    (("1 MiB",), {"devices": "cpu"}, "unknown argument devices"),
    (("1 MiB",), {"device": "GPU 0"}, "device must be a torch device name"),
])
def test_bad_markers_are_explained(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(LimitError, match=message):
        limit_from_marker(args, kwargs)


def test_a_device_limit_applies_to_that_device_only() -> None:
    peaks = [DevicePeak("cuda:1", 3 * MiB, "forward", {"activations_other": 3 * MiB}),
             DevicePeak("cpu", 5 * MiB, "other", {"parameters": 5 * MiB})]
    assert limit_failure(peaks, MemoryLimit(4 * MiB, "cuda:0")) is None
    assert limit_failure(peaks, MemoryLimit(2 * MiB, "cuda")) == (
        "peak tensor memory 3.0 MiB on cuda:1 exceeds the torch_memory limit 2.0 MiB "
        "(phase at the peak: forward; breakdown: activations/other 3.0 MiB)")
    assert limit_failure(peaks, MemoryLimit(4 * MiB)).startswith("peak tensor memory 5.0 MiB on cpu")


def test_summary_lines_are_sorted_by_peak() -> None:
    lines = summary_lines([("t.py::small", 10, "cpu", None), ("t.py::big", 3 * MiB, "cuda:0", 4 * MiB)])
    assert lines == ["t.py::big       3.0 MiB  cuda:0  limit 4.0 MiB", "t.py::small        10 B  cpu"]
    assert summary_lines([]) == ["no test was measured"]


@pytest.mark.skipif(not __import__("tests.conftest", fromlist=["HAS_CXX"]).HAS_CXX,
                    reason="no C++ compiler to build the allocator probe")
def test_a_tests_peak_is_the_allocators_kernel_buffers_included(pytester: pytest.Pytester) -> None:
    # GIVEN an LSTM training step (its RNN workspaces are never an op's output) and, for comparison, the peak the
    # CPU allocator itself reported to torch.profiler for the same step in a plain python run
    import json
    import subprocess
    import sys
    from pathlib import Path

    probe = Path(__file__).resolve().parent.parent / "scripts" / "peak_probe.py"
    out = pytester.path / "profiled.json"
    subprocess.run([sys.executable, str(probe), "--model", "lstm", "--batch", "8", "--width", "256", "--steps", "1",
                    "--profile-out", str(out)], check=True, capture_output=True)
    expected = json.loads(out.read_text())["1"]
    pytester.makepyfile(peak_probe=probe.read_text(), test_lstm='''
import pytest
import peak_probe


@pytest.mark.torch_memory(limit="1 GiB")
def test_step():
    peak_probe.train(1, 8, 256, "lstm")
''')
    # WHEN the plugin measures the test
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    # THEN its figure is the allocator's, within 1%
    measured = int(_properties(str(pytester.path / "junit.xml"), "test_step")["torch_memory_peak_bytes"])
    assert abs(measured - expected) <= 0.01 * expected, (measured, expected)

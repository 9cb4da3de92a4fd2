"""torchdoctor's pytest plugin: a test's peak tensor memory, measured exactly, and a limit on it.

    @pytest.mark.torch_memory(limit="512 MiB")          # each device's peak must stay within 512 MiB
    def test_forward(): ...

    @pytest.mark.torch_memory("2 GiB", device="cuda:0")  # only cuda:0's peak is limited
    def test_step(): ...

    pytest --torchdoctor-report                         # measure every test; a summary of the peaks

The peak is the tensor memory live on a device while the test's body runs, as ``torch.cuda.max_memory_allocated``
would see it if the process started with the test: tensors alive when the test starts (fixtures' tensors,
module globals) plus everything the test allocates, each storage counted once, freed ones uncounted. It is
measured by torchdoctor's own accounting (a ``TorchDispatchMode``), so it is exact on the CPU too.

The plugin is loaded in every pytest session where torchdoctor is installed (the ``pytest11`` entry point), so
it costs nothing unless asked: importing it does not import torch, and an unmarked test without
``--torchdoctor-report`` runs untouched. See docs/pytest-plugin.md.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from torchdoctor.errors import UsageError
from torchdoctor.reporters.text import CATEGORY_SHORT_LABELS
from torchdoctor.sizes import format_bytes, parse_size

MARKER = "torch_memory"
PEAK_PROPERTY = "torch_memory_peak_bytes"  # in report.user_properties, so --junitxml and xdist carry it
DEVICE_PROPERTY = "torch_memory_peak_device"
LIMIT_PROPERTY = "torch_memory_limit_bytes"
_DEVICE = re.compile(r"^[a-z_]+(:[0-9]+)?$")
_MEASURER = pytest.StashKey["_Measurer"]()


# -- the marker ------------------------------------------------------------------------------------------
class LimitError(ValueError):
    """A ``torch_memory`` marker that cannot be understood; the test fails with this one line."""


@dataclass(frozen=True)
class MemoryLimit:
    """What a ``torch_memory`` marker asks: at most ``nbytes`` of tensors on each device (or on ``device``)."""

    nbytes: int
    device: str | None = None

    def applies_to(self, device: str) -> bool:
        """``device="cuda"`` limits every CUDA device; ``"cuda:0"`` only that one."""
        if self.device is None or device == self.device:
            return True
        return ":" not in self.device and device.split(":")[0] == self.device


def limit_from_marker(args: Sequence[Any], kwargs: dict[str, Any]) -> MemoryLimit:
    """``torch_memory("512 MiB")``, ``torch_memory(limit="512 MiB", device="cuda:0")`` or a number of bytes."""
    unknown = sorted(set(kwargs) - {"limit", "device"})
    if unknown:
        raise LimitError(f"unknown argument {', '.join(unknown)} (it takes limit and device)")
    if len(args) > 1 or (args and "limit" in kwargs):
        raise LimitError("give one limit, e.g. @pytest.mark.torch_memory(limit=\"512 MiB\")")
    value = args[0] if args else kwargs.get("limit")
    if value is None:
        raise LimitError("a limit is needed, e.g. @pytest.mark.torch_memory(limit=\"512 MiB\")")
    device = kwargs.get("device")
    if device is not None and not (isinstance(device, str) and _DEVICE.match(device)):
        raise LimitError(f"device must be a torch device name such as \"cpu\" or \"cuda:0\", not {device!r}")
    return MemoryLimit(_parse_limit(value), device)


def _parse_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise LimitError(f"the limit must be a size such as \"512 MiB\" or a number of bytes, not {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise LimitError(f"the limit must be positive: {value!r}")
        return value
    try:
        return parse_size(value)
    except UsageError as exc:
        raise LimitError(str(exc)) from None


# -- what a test measured, and the verdict ---------------------------------------------------------------
@dataclass(frozen=True)
class DevicePeak:
    """One device's peak during a test, with what held the memory at that moment."""

    device: str
    peak: int
    phase: str
    breakdown: dict[str, int]

    def describe(self) -> str:
        held = ", ".join(f"{CATEGORY_SHORT_LABELS.get(k, k)} {format_bytes(v)}"
                         for k, v in self.breakdown.items() if v > 0)
        return f"phase at the peak: {self.phase}; breakdown: {held or 'nothing'}"


def peaks_from_figures(figures: dict[str, dict[str, Any]]) -> list[DevicePeak]:
    """``TensorAccountant.figures()`` as peaks, largest first."""
    peaks = [DevicePeak(device, int(f["tensor_peak"]), str(f["peak_phase"]), dict(f["breakdown"]))
             for device, f in figures.items()]
    return sorted(peaks, key=lambda p: (-p.peak, p.device))


def headline(peaks: list[DevicePeak], limit: MemoryLimit | None) -> DevicePeak | None:
    """The figure a report shows: the largest peak among the devices the limit is about (all without one)."""
    relevant = [p for p in peaks if limit is None or limit.applies_to(p.device)]
    if relevant:
        return relevant[0]
    if limit is not None and limit.device is not None:  # measured: no tensor on the limited device
        return DevicePeak(limit.device, 0, "other", {})
    return None


def limit_failure(peaks: list[DevicePeak], limit: MemoryLimit) -> str | None:
    """The failure message when a device's peak exceeds the limit, else None."""
    over = [p for p in peaks if limit.applies_to(p.device) and p.peak > limit.nbytes]
    if not over:
        return None
    return "; ".join(f"peak tensor memory {format_bytes(p.peak)} on {p.device} exceeds the torch_memory limit "
                     f"{format_bytes(limit.nbytes)} ({p.describe()})" for p in over)


def _record(item: pytest.Item, peaks: list[DevicePeak], limit: MemoryLimit | None) -> None:
    """Attach the figure to the test: TestReport copies user_properties, junitxml writes them, xdist ships them."""
    top = headline(peaks, limit)
    item.user_properties.append((PEAK_PROPERTY, top.peak if top else 0))
    item.user_properties.append((DEVICE_PROPERTY, top.device if top else "-"))
    if limit is not None:
        item.user_properties.append((LIMIT_PROPERTY, limit.nbytes))


# -- measuring -------------------------------------------------------------------------------------------
class _Measurer:
    """The session's tensor accounting, opened around each measured test.

    One ``TensorAccountant`` for the whole session, as in ``torchdoctor run``: each storage gets one finalizer
    for its life, not one per test, and storages it already knows stay classified. A census at each test's start
    adds what was made while it was closed (fixtures, other tests' leftovers)."""

    def __init__(self) -> None:
        import torch

        from torchdoctor.agent.hooks.phases import PhaseTracker
        from torchdoctor.agent.memory import allocator_probe
        from torchdoctor.agent.memory.accounting import TensorAccountant
        from torchdoctor.agent.memory.measuring import MeasuredModels

        self.accountant = TensorAccountant()
        self.models = MeasuredModels(self.accountant)
        self.phases = PhaseTracker(self.accountant.set_phase, self.models.root_module)
        self.accountant.module_stack = self.phases.module_stack  # each storage labelled with the module making it
        self.phases.after_backward = self.models.gradients
        self._handles: list[Any] = []
        self.warned_stranded = False
        # the CPU's figures are the allocator's from here on (kernels' own buffers included); what is alive now
        # is counted by a census, the allocator never having seen it
        probe, _ = allocator_probe.start(torch)
        if probe is not None:
            self._census()
            self.accountant.attach_probe(probe)

    def start(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.models.modules.clear()
        self._census()
        self.phases.set("other")
        self.accountant.set_phase("other")
        self.accountant.reset_span()
        self.phases.install_module_hooks()
        self.phases.install_autograd_wrappers()  # layers: they stack with a watch() or ResilientStep in the test
        self._handles = [register_optimizer_step_pre_hook(self._step_pre),
                         register_optimizer_step_post_hook(self._step_post)]
        self.accountant.open()

    def stop(self) -> tuple[list[DevicePeak], bool]:
        """Close the accounting and remove the hooks; the peaks, and False if another dispatch mode left
        open by the test sat above ours (ours then stays on the stack as a pass-through)."""
        clean = self.accountant.close()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.phases.remove_autograd_wrappers()
        self.phases.remove_module_hooks()
        self.phases.in_step = False
        self.phases.set("other")
        return peaks_from_figures(self.accountant.figures()), clean

    def _census(self) -> None:
        """Count the tensors alive now (unreachable garbage collected first, so a figure does not depend on
        when the collector last ran): parameters and their gradients by kind, the rest as inputs and data."""
        from torchdoctor.agent.memory.accounting import INPUTS_DATA

        gc.collect()
        self.models.census((), INPUTS_DATA)

    def _step_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.phases.in_step = True
        self.phases.set("optimizer")
        self.models.step_began(optimizer)

    def _step_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.models.step_ended(optimizer)
        self.phases.in_step = False
        self.phases.set("other")


def _measurer(config: pytest.Config) -> _Measurer:
    """Created on the first measured test, so torch is imported only when something is measured."""
    measurer = config.stash.get(_MEASURER, None)
    if measurer is None:
        measurer = config.stash[_MEASURER] = _Measurer()
    return measurer


# -- hooks -----------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("torchdoctor")
    group.addoption("--torchdoctor-report", action="store_true", default=False,
                    help="measure every test's peak tensor memory (exact, per device) and print a summary")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(limit, device=None): fail the test when its peak tensor memory on a device "
                   "exceeds limit (\"512 MiB\" or bytes); device=\"cuda:0\" limits one device only (torchdoctor)")
    # Under xdist only the controller (no workerinput) prints; workers send their reports to it.
    if config.getoption("torchdoctor_report") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(PeakSummary(), "torchdoctor-peak-summary")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Measure the test's body (not its fixtures' setup: their tensors still alive are in the census).

    Over the limit, the test fails through ``pytest.fail.Exception`` raised here, so it is reported as the
    test's own failure with one line and no plugin traceback; a test that failed by itself keeps its error."""
    marker = item.get_closest_marker(MARKER)
    if marker is None and not item.config.getoption("torchdoctor_report"):
        return (yield)
    limit = None
    if marker is not None:
        try:
            limit = limit_from_marker(marker.args, dict(marker.kwargs))
        except LimitError as exc:
            raise pytest.fail.Exception(f"torch_memory marker: {exc}", pytrace=False) from None
    measurer = _measurer(item.config)
    measurer.start()
    try:
        result = yield
    finally:
        peaks, clean = measurer.stop()
        _record(item, peaks, limit)
        if not clean and not measurer.warned_stranded:
            measurer.warned_stranded = True  # once: every later test would repeat it
            item.warn(pytest.PytestWarning("torchdoctor: this test left a TorchDispatchMode entered above the "
                                           "torch_memory accounting, which stays under it as a pass-through; "
                                           "the figures stay exact"))
    failure = limit_failure(peaks, limit) if limit is not None else None
    if failure is not None:
        raise pytest.fail.Exception(failure, pytrace=False)
    return result


class PeakSummary:
    """``--torchdoctor-report``: collects each test's figure from its call report and prints a summary.

    Built from reports, not from the measurer, so that under xdist the controller sees every worker's tests
    (user_properties travel with the serialized report)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, str, int | None]] = []  # nodeid, peak, device, limit

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        props = {str(pair[0]): pair[1] for pair in report.user_properties if len(pair) == 2}
        if PEAK_PROPERTY in props:
            limit = props.get(LIMIT_PROPERTY)
            peak: Any = props[PEAK_PROPERTY]  # ints, as written by the measuring hook
            self.rows.append((report.nodeid, int(peak), str(props.get(DEVICE_PROPERTY, "-")),
                              int(limit) if isinstance(limit, int) else None))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("=", "torchdoctor: peak tensor memory per test")
        for line in summary_lines(self.rows):
            terminalreporter.write_line(line)


def summary_lines(rows: list[tuple[str, int, str, int | None]]) -> list[str]:
    """One line per test, largest peak first: nodeid, peak, device, and the limit where there is one."""
    if not rows:
        return ["no test was measured"]
    width = min(max(len(row[0]) for row in rows), 100)
    lines = []
    for nodeid, peak, device, limit in sorted(rows, key=lambda r: (-r[1], r[0])):
        tail = f"  limit {format_bytes(limit)}" if limit is not None else ""
        lines.append(f"{nodeid:<{width}}  {format_bytes(peak):>10}  {device}{tail}".rstrip())
    return lines

"""What the run's figures did not cover: peaks in spans that were not measured in detail. Pure: no torch, no I/O.

Sampled accounting measures some steps in detail (phases, breakdown, the largest tensors). With the CPU allocator
probe every span still has the allocator's peak, so the run's peak is never missed, but it can fall in a span with
no breakdown; without the probe an unmeasured span has no tensor figure at all, and only the process's resident
memory (its high-water mark over each span, Linux's VmHWM reset at every step) can show that more was used there
than on any measured step. Either way the report says so, with where, instead of showing a smaller peak as the run's.
"""

from __future__ import annotations

from typing import Any

from torchdoctor.sizes import format_bytes
from torchdoctor.supervisor.state import RunState

RSS_MARGIN_BYTES = 4 << 20  # resident memory also moves for reasons that are not tensors (caches, arenas)
RSS_MARGIN_SHARE = 0.05
EXACT_HINT = "--accounting exact measures every step"


def _where(step: int | None, span: str | None) -> str:
    if span == "tail":
        return "after the last step"
    return f"at step {step}" if step is not None else "between steps"


def unmeasured_peaks(state: RunState, cpu_figures: str | None) -> list[str]:
    """One sentence per peak that fell where the figures were not measured in detail."""
    if state.started is None or state.started.accounting == "off":
        return []
    notes = []
    for (device, kind), peak in sorted(state.peaks.items()):
        if kind == "tensor_bytes" and peak.breakdown is None:
            notes.append(f"the {device} tensor peak ({format_bytes(peak.bytes)}, {_where(peak.step, peak.span)}) "
                         f"fell in a span not measured in detail: its size is measured, its breakdown and phase "
                         f"are not ({EXACT_HINT})")
    if cpu_figures != "allocator":
        notes.extend(_rss_above_measured(state))
    return notes


def _rss_above_measured(state: RunState) -> list[str]:
    """Without the allocator's figures: a span whose resident-memory peak, less the most non-tensor memory seen
    on a measured span, is well above the largest measured tensor peak."""
    def rss_of(sample: Any) -> int | None:
        return sample.rss_peak_bytes or sample.rss_bytes

    figures = [(rss_of(s), _cpu_tensor_peak(s)) for s in state.samples if s.measured]
    measured = [(rss, tensors) for rss, tensors in figures if rss and tensors is not None]
    if not measured:
        return []
    other = max(rss - tensors for rss, tensors in measured)  # resident memory that is not tensors
    ceiling = max(tensors for _, tensors in measured)
    margin = max(RSS_MARGIN_BYTES, int(ceiling * RSS_MARGIN_SHARE))
    worst: tuple[int, str] | None = None
    for sample in state.samples:
        rss = rss_of(sample)
        if sample.measured or not rss:
            continue
        implied = rss - other
        if implied > ceiling + margin and (worst is None or implied > worst[0]):
            worst = (implied, _where(sample.step, sample.span))
    if worst is None:
        return []
    return [f"the process's resident memory {worst[1]} implies about {format_bytes(worst[0])} of tensors, above "
            f"the largest measured tensor peak ({format_bytes(ceiling)}): a peak may have gone unmeasured there "
            f"({EXACT_HINT})"]


def _cpu_tensor_peak(sample: Any) -> int | None:
    value = (sample.devices.get("cpu") or {}).get("tensor_peak")
    return value if isinstance(value, int) else None

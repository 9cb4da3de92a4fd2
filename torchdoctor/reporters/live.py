"""What the supervisor shows while the script runs: a rich live panel on a terminal, plain lines elsewhere."""

from __future__ import annotations

import threading
import time
from typing import IO, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from torchdoctor.reporters.text import format_duration
from torchdoctor.sizes import format_bytes
from torchdoctor.supervisor.state import RunState


def _tensor_line(state: RunState) -> tuple[str, str, str] | None:
    sample = state.last_measured
    if sample is None:
        return None
    figures = sample.devices.get("cpu")
    if not figures or figures.get("tensor_bytes") is None:
        return None
    peak = state.peaks.get(("cpu", "tensor_bytes"))
    at = f"step {sample.step}" if sample.span == "step" else "now"
    return (f"{format_bytes(figures['tensor_bytes'])} ({at})",
            format_bytes(peak.bytes) if peak else "n/a",
            f"step {peak.step}, {peak.phase}" if peak and peak.step is not None else "")


def status_table(state: RunState, capacity: dict[str, int | None]) -> Table:
    """One row per figure: current, peak and capacity, each labelled with what kind of number it is."""
    table = Table(show_edge=False, pad_edge=False, expand=False)
    table.add_column("device")
    table.add_column("figure")
    table.add_column("current", justify="right")
    table.add_column("peak", justify="right")
    table.add_column("capacity / when", justify="right")
    tensor = _tensor_line(state)
    if tensor:
        table.add_row("cpu", "tensor bytes", tensor[0], tensor[1], tensor[2])
    sample = state.samples[-1] if state.samples else None
    if sample is not None:
        for device, figures in sorted(sample.devices.items()):
            if "cuda_allocated" in figures:
                cap = format_bytes(capacity.get(device)) if capacity.get(device) else ""
                table.add_row(device, "CUDA allocated", format_bytes(figures["cuda_allocated"]),
                              format_bytes(state.peaks[(device, "cuda_allocated")].bytes), cap)
                table.add_row(device, "CUDA reserved", format_bytes(figures.get("cuda_reserved")),
                              format_bytes(state.peaks[(device, "cuda_reserved")].bytes), cap)
    process = state.last_process
    if process is not None:
        for device, used in sorted(process.device_used.items()):
            peak = state.peaks.get((device, "device_used"))
            table.add_row(device, "device used (NVML)", format_bytes(used), format_bytes(peak.bytes if peak else None),
                          format_bytes(capacity.get(device)))
    rss = process.rss_bytes if process else (sample.rss_bytes if sample else None)
    rss_peak = state.peaks.get(("host", "process_rss"))
    table.add_row("host", "process RSS", format_bytes(rss), format_bytes(rss_peak.bytes if rss_peak else None),
                  format_bytes(capacity.get("host")))
    if process is not None and process.children_rss_bytes:
        table.add_row("host", "workers RSS", format_bytes(process.children_rss_bytes), "", "")
    return table


def progress_line(state: RunState, elapsed: float) -> str:
    rate = state.steps_per_second
    parts = [f"{state.steps} steps", f"{rate:.1f} steps/s" if rate else "– steps/s", format_duration(elapsed)]
    if state.stalled and state.stall is not None:
        parts[1] = (f"stalled for {format_duration(time.time() - state.stall.since)} at "
                    f"{state.stall.where or 'an unknown place'}")
    return "  ·  ".join(parts)


class LiveView:
    """The rich live panel. ``print_output`` shows the script's own output above it."""

    def __init__(self, console: Console, target: str, capacity: dict[str, int | None]) -> None:
        from rich.live import Live

        self._console = console
        self._target = target
        self._capacity = capacity
        self._started = time.monotonic()
        self._live = Live(console=console, auto_refresh=False, transient=True, redirect_stdout=False,
                          redirect_stderr=False)
        self.forwarder: Any = None  # the script's output; its unfinished line (a progress bar) shows here
        self._last_draw = 0.0
        self._draw_lock = threading.Lock()

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def print_output(self, text: str) -> None:
        # Called from the output thread while the main thread redraws: one at a time, or a redraw that
        # interleaves with a print can leave a line on screen twice.
        with self._draw_lock:
            self._live.console.print(text, markup=False, highlight=False, soft_wrap=True, end="")

    def update(self, state: RunState) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.25:  # redraw 4 times a second at most: no flicker
            return
        self._last_draw = now
        elapsed = now - self._started
        header = Text(f"torchdoctor ▸ {self._target}   ", style="bold")
        header.append(progress_line(state, elapsed), style="cyan")
        last = Text(f"last: {state.last_notable or '–'}", style="dim")
        parts: list[Any] = [header, status_table(state, self._capacity), last]
        partial = self.forwarder.partial if self.forwarder is not None else ""
        if partial.strip():
            parts.insert(0, Text(partial, no_wrap=True, overflow="ellipsis"))
        with self._draw_lock:
            self._live.update(Group(*parts), refresh=True)


class PlainProgress:
    """Periodic one-line summaries for logs and CI (written to stderr, so stdout stays the script's)."""

    def __init__(self, stream: IO[str], interval: float) -> None:
        self._stream = stream
        self._interval = interval
        self._started = time.monotonic()
        self._last = self._started

    def update(self, state: RunState, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        parts = [progress_line(state, now - self._started)]
        tensor = _tensor_line(state)
        if tensor:
            parts.append(f"cpu tensors {tensor[0]}, peak {tensor[1]}")
        rss = state.peaks.get(("host", "process_rss"))
        if state.last_process and state.last_process.rss_bytes is not None:
            parts.append(f"RSS {format_bytes(state.last_process.rss_bytes)}"
                         + (f" (peak {format_bytes(rss.bytes)})" if rss else ""))
        for device, used in sorted((state.last_process.device_used if state.last_process else {}).items()):
            parts.append(f"{device} used {format_bytes(used)}")
        self._stream.write("[torchdoctor] " + "  ·  ".join(parts) + "\n")
        self._stream.flush()

"""``--tensorboard DIR``: each attempt as its own TensorBoard run, in TensorBoard's own event-file format."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from torchdoctor.errors import UsageError
from torchdoctor.events import Event
from torchdoctor.reporters.monitors import TENSORBOARD_INSTALL, require
from torchdoctor.reporters.monitors.entries import Clock, final_scalars, summary_markdown


class TensorBoardMonitor:
    """Writes each attempt as its own TensorBoard run: ``DIR/<run>`` for the first, ``DIR/<run>/attempt-N`` after.

    A relaunched attempt counts its optimizer steps from 1 again; in one run TensorBoard would take the smaller
    step for a restart and discard the first attempt's later points, so each attempt gets its own directory.
    """

    def __init__(self, log_dir: str, make_writer: Callable[[str], Any]) -> None:
        self.log_dir = log_dir
        self._make_writer = make_writer
        self._clock = Clock()
        self._writers: dict[int, Any] = {1: make_writer(log_dir)}
        self._last_step: dict[int, int] = {1: 0}

    def attempt_dir(self, attempt: int) -> str:
        return self.log_dir if attempt == 1 else os.path.join(self.log_dir, f"attempt-{attempt}")

    def event(self, event: Event) -> None:
        placed = self._clock.place(event)
        if placed is None:
            return
        if placed.attempt not in self._writers:
            self._writers[placed.attempt] = self._make_writer(self.attempt_dir(placed.attempt))
        self._last_step[placed.attempt] = placed.step
        writer, entry = self._writers[placed.attempt], placed.entry
        for tag, value in entry.scalars.items():
            writer.add_scalar(tag, value, placed.step, walltime=entry.wall_time)
        for tag, text in entry.texts.items():
            writer.add_text(tag, text, placed.step, walltime=entry.wall_time)

    def close(self, report: dict[str, Any]) -> None:
        """The summary and the final peaks go into the first attempt's run, where a reader looks first."""
        writer, step = self._writers[1], self._last_step[1]
        for tag, value in final_scalars(report).items():
            writer.add_scalar(tag, value, step)
        writer.add_text("summary", summary_markdown(report), step)
        for each in self._writers.values():
            each.close()  # flushes


class SummaryFileWriter:
    """The part of ``torch.utils.tensorboard.SummaryWriter`` used here (``add_scalar``, ``add_text``, ``close``),
    writing the same records through TensorBoard's own ``EventFileWriter``.

    Why not SummaryWriter itself: importing it imports torch into the supervisor, measured at 3.6 s and 234 MiB
    of RSS before the script can start, against 0.7 s and 52 MiB for this (2 cores, torch 2.13). The supervisor
    never imports torch, and it must keep its memory for surviving the script's.
    """

    def __init__(self, log_dir: str, flush_secs: float = 5) -> None:  # 5 s: a TensorBoard watching DIR is live
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
        from tensorboard.plugins.text import plugin_data_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._text_metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="text", content=plugin_data_pb2.TextPluginData(version=0).SerializeToString()))
        self._tensor, self._shape = tensor_pb2.TensorProto, tensor_shape_pb2.TensorShapeProto
        self._file = EventFileWriter(log_dir, flush_secs=flush_secs)

    def add_scalar(self, tag: str, value: float, step: int, walltime: float | None = None) -> None:
        self._add(self._summary.Value(tag=tag, simple_value=value), step, walltime)

    def add_text(self, tag: str, text: str, step: int, walltime: float | None = None) -> None:
        # as SummaryWriter.add_text: a one-string tensor under "<tag>/text_summary" for the text dashboard
        tensor = self._tensor(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                              tensor_shape=self._shape(dim=[self._shape.Dim(size=1)]))
        self._add(self._summary.Value(tag=f"{tag}/text_summary", metadata=self._text_metadata, tensor=tensor),
                  step, walltime)

    def _add(self, value: Any, step: int, walltime: float | None) -> None:
        event = self._event(summary=self._summary(value=[value]), step=int(step),
                            wall_time=time.time() if walltime is None else walltime)
        self._file.add_event(event)

    def close(self) -> None:
        self._file.close()  # flushes


def open_tensorboard(tensorboard_dir: str, name: str) -> TensorBoardMonitor:
    """The monitor writing into ``tensorboard_dir/name``; a directory it cannot write is the user's to fix."""
    require("tensorboard", "--tensorboard", TENSORBOARD_INSTALL)
    log_dir = os.path.join(tensorboard_dir, name)
    try:
        os.makedirs(log_dir, exist_ok=True)
        return TensorBoardMonitor(log_dir, SummaryFileWriter)  # creates the first event file
    except OSError as exc:
        raise UsageError(f"--tensorboard {tensorboard_dir}: cannot write there ({exc.strerror or exc})") from None

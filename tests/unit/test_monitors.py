"""The TensorBoard / W&B monitors: the pure event -> scalars mapping, step placement across attempts, failure
isolation, and a real TensorBoard event file read back with TensorBoard's own reader."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from torchdoctor.errors import UsageError
from torchdoctor.events import (
    Finding,
    MemorySample,
    Note,
    OutOfMemory,
    ProcessExited,
    ProcessSample,
    RunFinished,
    RunStarted,
)
from torchdoctor.reporters.monitors import Guarded, open_monitors
from torchdoctor.reporters.monitors.entries import Clock, entry_for, final_scalars, summary_markdown
from torchdoctor.reporters.monitors.to_tensorboard import TensorBoardMonitor, open_tensorboard
from torchdoctor.reporters.monitors.to_wandb import WandbMonitor

CPU = {"tensor_bytes": 2 * 2**20, "tensor_peak": 6 * 2**20, "peak_phase": "backward",
       "phase_peaks": {"forward": 4 * 2**20, "backward": 6 * 2**20},
       "breakdown": {"parameters": 2**20, "gradients": 2**20, "optimizer_state": 0, "activations_other": 4 * 2**20}}


def started(attempt=1):
    return RunStarted(pid=1, target="train.py", is_module=False, argv=["train.py", "--lr", "1"], python="3.11",
                      torch_version="2.13.0", cuda_version=None, cuda_devices=0, accounting="exact", sample_every=50,
                      attempt=attempt, t=100.0)


def step(n, devices=None, measured=True, rss=300 * 2**20, seconds=0.5, span="step"):
    return MemorySample(step=n, span=span, step_time_s=seconds, measured=measured, rss_bytes=rss,
                        devices={"cpu": dict(CPU)} if devices is None else devices, t=100.0 + n)


def oom(step_no=3, requested=2 * 2**20):
    return OutOfMemory(step=step_no, phase="backward", device="cpu", backend="torchdoctor-budget",
                       requested_bytes=requested, in_use_bytes=15 * 2**20, capacity_bytes=16 * 2**20,
                       message="CPU out of memory. Tried to allocate 2.00 MiB.", breakdown={"parameters": 2**20})


REPORT = {"outcome": "success", "exit_code": 0, "steps": 4, "mean_step_time_s": 0.25,
          "run": {"run_dir": "runs/a", "attempts": 2},
          "peaks": [{"device": "cpu", "kind": "tensor_bytes", "bytes": 6 * 2**20, "step": 2, "span": "step",
                     "phase": "backward"},
                    {"device": "host", "kind": "process_rss", "bytes": 300 * 2**20}],
          "recovery": {"recovered": True, "remedies": ["micro-batch"]}}


# -- the pure mapping ----------------------------------------------------------------------------------------
def test_a_measured_step_gives_every_figure_in_mib_at_its_step():
    entry = entry_for(step(2))
    assert entry.step == 2 and entry.wall_time == 102.0 and entry.texts == {}
    assert entry.scalars == {
        "memory/cpu/tensor_bytes_mib": 2.0, "memory/cpu/tensor_peak_mib": 6.0,
        "memory/cpu/phase/forward_mib": 4.0, "memory/cpu/phase/backward_mib": 6.0,
        "memory/cpu/breakdown/parameters_mib": 1.0, "memory/cpu/breakdown/gradients_mib": 1.0,
        "memory/cpu/breakdown/optimizer_state_mib": 0.0,  # measured as 0: a real figure, kept
        "memory/cpu/breakdown/activations_other_mib": 4.0,
        "memory/host/rss_mib": 300.0, "time/step_s": 0.5}


def test_an_unmeasured_step_invents_no_tensor_figure():
    # GIVEN a sampled-mode step the accounting did not cover, and one where nothing at all was read
    unmeasured = entry_for(step(5, devices={}, measured=False))
    nothing = entry_for(step(6, devices={}, measured=False, rss=None, seconds=None))
    # THEN only what was measured is logged: no memory/cpu tag, no zero in place of a missing figure
    assert unmeasured.scalars == {"memory/host/rss_mib": 300.0, "time/step_s": 0.5}
    assert nothing.scalars == {} and nothing.step == 6


def test_cuda_figures_are_logged_only_where_present():
    cuda = {"cuda_allocated": 3 * 2**20, "cuda_reserved": 8 * 2**20, "device_used": None}
    entry = entry_for(step(1, devices={"cuda:0": cuda}))
    memory = {tag: value for tag, value in entry.scalars.items() if tag.startswith("memory/cuda:0/")}
    assert memory == {"memory/cuda:0/cuda_allocated_mib": 3.0, "memory/cuda:0/cuda_reserved_mib": 8.0}


def test_the_tail_sample_has_its_own_tags_so_it_does_not_overwrite_the_last_step():
    entry = entry_for(step(4, span="tail", seconds=None))
    assert entry.step == 4
    assert entry.scalars["tail/memory/cpu/tensor_peak_mib"] == 6.0
    assert entry.scalars["tail/memory/cpu/phase/backward_mib"] == 6.0
    assert not [tag for tag in entry.scalars if not tag.startswith("tail/")]
    assert "tail/time/step_s" not in entry.scalars


def test_an_oom_is_a_point_at_its_step_with_the_sizes_and_a_text():
    entry = entry_for(oom())
    assert entry.step == 3
    assert entry.scalars == {"oom/events": 1.0, "oom/requested_mib": 2.0, "oom/in_use_mib": 15.0,
                             "oom/capacity_mib": 16.0, "oom/breakdown/parameters_mib": 1.0}
    text = entry.texts["oom"]
    assert "step 3, phase backward, device cpu (torchdoctor-budget)" in text and "requested 2.0 MiB" in text
    assert "Tried to allocate 2.00 MiB" in text


def test_an_oom_of_unknown_size_keeps_its_marker_and_invents_no_size():
    entry = entry_for(oom(requested=None))
    assert "oom/requested_mib" not in entry.scalars and entry.scalars["oom/events"] == 1.0
    assert "requested n/a" in entry.texts["oom"]


def test_probes_notes_findings_and_attempts():
    probe = entry_for(ProcessSample(rss_bytes=2**30, children_rss_bytes=None, device_used={"gpu0": 2**29}))
    assert probe.step is None  # placed at the latest step by the monitor
    assert probe.scalars == {"process/rss_mib": 1024.0, "process/gpu0/device_used_mib": 512.0}
    first = entry_for(started(2))
    assert first.attempt == 2 and first.step is None and "train.py --lr 1" in first.texts["run"]
    assert entry_for(Note(level="warning", message="slow", step=4)).texts == {"notes": "warning: slow"}
    finding = entry_for(Finding(id="TD101", severity="error", title="gradients not reset", location="t.py:9",
                                evidence="grad grew", fix="call zero_grad()"))
    assert finding.texts["findings/TD101"].startswith("**TD101** (error) gradients not reset at t.py:9")
    assert entry_for(RunFinished(exit_code=0, exception=None, message=None, steps=1, dropped_events=0)) is None
    assert entry_for(ProcessExited(returncode=0, exit_code=0, outcome="success")) is None


def test_the_final_report_gives_peak_scalars_and_a_summary_table():
    assert final_scalars(REPORT) == {"peak/cpu/tensor_bytes_mib": 6.0, "peak/host/process_rss_mib": 300.0,
                                     "run/steps": 4.0, "run/exit_code": 0.0, "run/attempts": 2.0,
                                     "time/mean_step_s": 0.25}
    text = summary_markdown(REPORT)
    assert text.startswith("**success** (exit 0) · 4 optimizer steps · 2 attempt(s) · recovered (micro-batch)")
    assert "| cpu | tensor_bytes | 6.0 MiB | 2 | backward |" in text and "Peaks of attempt 2" in text


# -- step placement in the monitors (fake writers) -----------------------------------------------------------
class FakeWriter:
    def __init__(self, path):
        self.path, self.scalars, self.texts, self.closed = path, [], [], False

    def add_scalar(self, tag, value, step, walltime=None):
        self.scalars.append((tag, step, value))

    def add_text(self, tag, text, step, walltime=None):
        self.texts.append((tag, step, text))

    def close(self):
        self.closed = True


def test_tensorboard_writes_each_attempt_to_its_own_run_and_the_summary_to_the_first():
    writers = {}
    monitor = TensorBoardMonitor("tb/a", lambda path: writers.setdefault(path, FakeWriter(path)))
    finished = RunFinished(exit_code=1, exception="OutOfMemoryError", message="", steps=2, dropped_events=0)
    relaunched = ProcessSample(rss_bytes=7 * 2**20, children_rss_bytes=None)  # before attempt 2 says it is one
    for event in (started(1), step(1), step(2), oom(3), ProcessSample(rss_bytes=2**20, children_rss_bytes=None),
                  finished, relaunched, started(2), ProcessSample(rss_bytes=2**20, children_rss_bytes=None), step(1),
                  step(2)):
        monitor.event(event)
    monitor.close(REPORT)
    first, second = writers["tb/a"], writers["tb/a/attempt-2"]
    assert not [value for writer in (first, second) for _, _, value in writer.scalars if value == 7.0]
    assert [s for t, s, _ in first.scalars if t == "memory/cpu/tensor_peak_mib"] == [1, 2]
    assert [s for t, s, _ in second.scalars if t == "memory/cpu/tensor_peak_mib"] == [1, 2]  # restarts at 1
    assert ("oom/requested_mib", 3, 2.0) in first.scalars
    assert ("process/rss_mib", 3, 1.0) in first.scalars  # a probe goes at the latest step of its attempt
    assert ("process/rss_mib", 0, 1.0) in second.scalars  # ...which is 0 before the new attempt's first step
    assert ("summary", 3) == first.texts[-1][:2] and ("peak/cpu/tensor_bytes_mib", 3, 6.0) in first.scalars
    assert first.closed and second.closed


class FakeConfig(dict):
    def update(self, data, allow_val_change=False):
        super().update(data)


def test_the_clock_gives_steps_within_an_attempt_and_rows_that_only_grow():
    clock = Clock()
    events = [started(1), step(1), step(2), oom(3), step(2, span="tail"), started(2),
              ProcessSample(rss_bytes=1, children_rss_bytes=None), step(1), step(2)]
    placed = [clock.place(event) for event in events]
    assert [(p.attempt, p.step, p.row) for p in placed] == [
        (1, 0, 0), (1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 3, 3),  # a tail after the OOM stays at the OOM's step
        (2, 0, 4), (2, 0, 4), (2, 1, 5), (2, 2, 6)]


class FakeRun:
    def __init__(self):
        self.rows, self.summary, self.finished, self.config = [], {}, None, FakeConfig()

    def log(self, data, step):
        self.rows.append((step, data))

    def finish(self, exit_code=None):
        self.finished = exit_code


def test_wandb_steps_keep_growing_across_attempts():
    run = FakeRun()
    monitor = WandbMonitor(run, table=lambda columns, data: ("table", columns, data))
    for event in (started(1), step(1), step(2), oom(3), started(2), step(1), step(2), step(2, span="tail")):
        monitor.event(event)
    monitor.close({**REPORT, "exit_code": 3})
    steps = [s for s, _ in run.rows]
    assert steps == sorted(steps)  # W&B drops a row whose step goes back
    peaks = [(s, d["run/attempt"]) for s, d in run.rows if "memory/cpu/tensor_peak_mib" in d]
    assert peaks == [(1, 1), (2, 1), (5, 2), (6, 2)]  # attempt 2 starts at row 4 (its step 0), one past the OOM
    assert (3, 1) == next((s, d["run/attempt"]) for s, d in run.rows if "oom" in d)
    table = run.rows[-1][1]["torchdoctor/events"]
    assert [row[:3] for row in table[2] if row[2] == "oom"] == [[3, 1, "oom"]]
    assert run.summary["peak/cpu/tensor_bytes_mib"] == 6.0 and run.summary["outcome"] == "success"
    assert run.finished == 3 and run.config["argv"] == ["train.py", "--lr", "1"]


# -- failures ------------------------------------------------------------------------------------------------
class Broken:
    calls = 0

    def event(self, event):
        self.calls += 1
        raise OSError("disk full")

    def close(self, report):
        self.calls += 1


def test_a_failing_monitor_warns_once_and_is_switched_off():
    stderr, broken = io.StringIO(), Broken()
    guarded = Guarded("tensorboard", broken, stderr=stderr)
    guarded.event(step(1))
    guarded.event(step(2))
    guarded.close(REPORT)
    assert broken.calls == 1
    assert stderr.getvalue().splitlines() == [
        "[torchdoctor] tensorboard: OSError: disk full; no more tensorboard logging for this run "
        "(the training goes on)"]


def test_a_missing_package_is_a_usage_error_before_anything_runs(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    with pytest.raises(UsageError, match=r'--tensorboard needs the tensorboard package: pip install '
                                         r'"torchdoctor\[tensorboard\]"') as caught:
        open_monitors(str(tmp_path / "tb"), False, run_dir=str(tmp_path / "run"), target="t.py")
    assert caught.value.exit_code == 2 and not (tmp_path / "tb").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UsageError, match="--wandb needs the wandb package: pip install wandb"):
        open_monitors(None, True, run_dir=str(tmp_path / "run"), target="t.py")


# -- a real event file ---------------------------------------------------------------------------------------
def test_tensorboard_event_files_hold_the_tags_and_values(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    # GIVEN the events of a run that ran out of memory at step 3 and recovered in a second attempt
    monitor = open_tensorboard(str(tmp_path / "tb"), "run-a")
    for event in (started(1), step(1), step(2, devices={}, measured=False), oom(3), started(2), step(1), step(2),
                  step(2, span="tail")):
        monitor.event(event)
    monitor.close(REPORT)

    # WHEN TensorBoard reads the directory back
    def load(path):
        acc = accumulator.EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        return acc

    first, second = load(tmp_path / "tb" / "run-a"), load(tmp_path / "tb" / "run-a" / "attempt-2")

    def points(acc, tag):
        return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]

    # THEN step 2 of the first attempt has no tensor figure (it was not measured), the OOM is a point and a text
    assert points(first, "memory/cpu/tensor_peak_mib") == [(1, 6.0)]
    assert points(first, "memory/host/rss_mib") == [(1, 300.0), (2, 300.0)]
    assert points(first, "oom/requested_mib") == [(3, 2.0)] and points(first, "oom/capacity_mib") == [(3, 16.0)]
    oom_text = first.Tensors("oom/text_summary")[0]
    assert oom_text.step == 3 and b"phase backward" in oom_text.tensor_proto.string_val[0]
    # the second attempt counts from 1 again, in its own run; the tail has its own tags
    assert points(second, "memory/cpu/phase/backward_mib") == [(1, 6.0), (2, 6.0)]
    assert points(second, "tail/memory/cpu/tensor_peak_mib") == [(2, 6.0)]
    # the run's summary and final peaks are in the first attempt's run
    assert points(first, "peak/cpu/tensor_bytes_mib") == [(3, 6.0)]
    summary = first.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert summary.startswith("**success** (exit 0)")


def test_the_event_records_are_those_of_torchs_summary_writer(tmp_path):
    # torchdoctor writes with TensorBoard's own EventFileWriter (the supervisor does not import torch): the
    # records must be byte for byte what torch.utils.tensorboard.SummaryWriter writes
    summary_writer = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    from torchdoctor.reporters.monitors.to_tensorboard import SummaryFileWriter

    def records(writer_class, path):
        writer = writer_class(str(path))
        writer.add_scalar("memory/cpu/tensor_peak_mib", 6.5, 3, walltime=10.0)
        writer.add_text("oom", "**out of memory** at step 3", 3, walltime=11.0)
        writer.close()
        [events_file] = path.glob("events.out.tfevents.*")
        events = list(loader.EventFileLoader(str(events_file)).Load())
        events[0].wall_time = 0  # the file header's creation time
        return [event.SerializeToString() for event in events]

    assert records(SummaryFileWriter, tmp_path / "ours") == records(summary_writer, tmp_path / "torch")


def test_opening_the_tensorboard_monitor_does_not_import_torch(tmp_path):
    code = ("import sys; from torchdoctor.reporters.monitors import open_monitors; "
            f"open_monitors({str(tmp_path / 'tb')!r}, False, run_dir='runs/a', target='t.py'); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "False\n" and (tmp_path / "tb" / "a").is_dir()

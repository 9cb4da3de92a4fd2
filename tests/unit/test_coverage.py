"""What the figures did not cover (torchdoctor/supervisor/coverage.py): pure logic over a folded event stream."""

from torchdoctor.events import MemorySample, RunStarted
from torchdoctor.supervisor.coverage import unmeasured_peaks
from torchdoctor.supervisor.state import fold

MiB = 1 << 20


def _started() -> RunStarted:
    return RunStarted(pid=1, target="train.py", is_module=False, argv=[], python="3.11", torch_version="2.13.0",
                      cuda_version=None, cuda_devices=0, accounting="sampled", sample_every=50)


def _sample(step: int, measured: bool, rss_peak: int, tensor_peak: int | None = None,
            span: str = "step") -> MemorySample:
    devices = {"cpu": {"tensor_peak": tensor_peak, "breakdown": {"parameters": tensor_peak}}} if measured else {}
    return MemorySample(step=step, span=span, step_time_s=0.01, measured=measured, rss_bytes=rss_peak,
                        devices=devices, rss_peak_bytes=rss_peak)


def test_a_resident_memory_rise_beyond_the_measured_tensors_is_reported_where_it_happened():
    events = [_started(), _sample(1, True, 300 * MiB, 10 * MiB), _sample(2, True, 301 * MiB, 10 * MiB),
              _sample(3, False, 301 * MiB), _sample(4, False, 340 * MiB), _sample(5, False, 302 * MiB)]
    notes = unmeasured_peaks(fold(events), "tensor outputs (no C++ compiler found)")
    assert len(notes) == 1 and "at step 4" in notes[0] and "49.0 MiB" in notes[0], notes


def test_resident_memory_within_the_margin_and_allocator_figures_raise_nothing():
    events = [_started(), _sample(1, True, 300 * MiB, 10 * MiB), _sample(2, False, 303 * MiB),
              _sample(3, False, 302 * MiB, span="tail")]
    assert unmeasured_peaks(fold(events), "tensor outputs (why)") == []
    # with the allocator's figures resident memory is not the evidence: the tensor peak itself is
    big = [_started(), _sample(1, True, 300 * MiB, 10 * MiB), _sample(2, False, 400 * MiB)]
    assert unmeasured_peaks(fold(big), "allocator") == []

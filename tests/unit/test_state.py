from torchdoctor.events import MemorySample, Note, ProcessSample, RunFinished
from torchdoctor.supervisor.state import fold


def sample(step, peak=None, span="step", t=0.0, rss=None, phase="backward", cuda=None):
    devices = {}
    if peak is not None:
        devices["cpu"] = {"tensor_bytes": peak // 2, "tensor_peak": peak, "peak_phase": phase,
                          "phase_peaks": {phase: peak}, "breakdown": {"parameters": peak // 4}}
    if cuda is not None:
        devices["cuda:0"] = {"cuda_allocated": cuda, "cuda_allocated_peak": cuda, "cuda_reserved": 2 * cuda,
                             "cuda_reserved_peak": 2 * cuda}
    return MemorySample(step=step, span=span, step_time_s=0.1, measured=peak is not None, rss_bytes=rss,
                        devices=devices, t=t)


def test_peak_keeps_the_largest_measurement_with_its_step_phase_and_breakdown():
    state = fold([sample(1, 100, t=1.0), sample(2, 300, t=2.0, phase="optimizer"), sample(3, None, t=3.0),
                  sample(4, 200, t=4.0)])
    peak = state.peaks[("cpu", "tensor_bytes")]
    assert (peak.bytes, peak.step, peak.phase) == (300, 2, "optimizer")
    assert peak.breakdown == {"parameters": 75}
    assert state.steps == 4 and state.measured_steps == 3


def test_unmeasured_steps_never_become_a_zero_peak():
    state = fold([sample(1, None, rss=10), sample(2, None, rss=20)])
    assert ("cpu", "tensor_bytes") not in state.peaks
    assert state.peaks[("host", "process_rss")].bytes == 20


def test_tail_span_and_cuda_figures_and_process_samples_are_folded():
    state = fold([
        sample(1, 100, cuda=50), sample(1, 500, span="tail"),
        ProcessSample(rss_bytes=7, children_rss_bytes=None, device_used={"gpu0": 900}),
        Note(level="info", message="hello"),
        RunFinished(exit_code=0, exception=None, message=None, steps=1, dropped_events=0),
    ])
    assert state.peaks[("cpu", "tensor_bytes")].span == "tail"
    assert state.step_peaks["cpu"].bytes == 100  # a whole step's peak: the tail is not a step
    assert state.peaks[("cuda:0", "cuda_allocated")].bytes == 50
    assert state.peaks[("cuda:0", "cuda_reserved")].bytes == 100
    assert state.peaks[("gpu0", "device_used")].bytes == 900
    assert state.last_note.message == "hello"
    assert state.finished.exit_code == 0


def test_steps_per_second_comes_from_step_sample_times():
    state = fold([sample(s, None, t=float(s) / 10) for s in range(1, 21)])
    assert abs(state.steps_per_second - 10.0) < 1e-9


def test_each_phases_peak_is_the_largest_over_all_steps_with_its_step():
    def at(step, forward, backward):
        return MemorySample(step=step, span="step", step_time_s=0.1, measured=True, rss_bytes=None, t=float(step),
                            devices={"cpu": {"tensor_bytes": 1, "tensor_peak": max(forward, backward),
                                             "peak_phase": "backward",
                                             "phase_peaks": {"forward": forward, "backward": backward}}})
    # step 1 holds the run's peak (its backward); step 2's forward is the largest forward
    state = fold([at(1, 7, 30), at(2, 21, 25)])
    assert state.peaks[("cpu", "tensor_bytes")].step == 1
    assert state.phase_peaks["cpu"]["forward"] == {"bytes": 21, "step": 2, "span": "step"}
    assert state.phase_peaks["cpu"]["backward"]["step"] == 1

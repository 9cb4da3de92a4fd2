import json

import pytest

from torchdoctor.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    BatchSource,
    Estimated,
    EventError,
    Finding,
    Heartbeat,
    MemorySample,
    Note,
    OutOfMemory,
    ProcessExited,
    ProcessSample,
    RanksFailed,
    Resume,
    RunFinished,
    RunStarted,
    Stall,
    TrainingFigures,
    event_from_dict,
    event_from_json,
)

EXAMPLES = [
    RunStarted(pid=1, target="train.py", is_module=False, argv=["train.py", "--lr", "1"], python="3.11.7",
               torch_version="2.13.0", cuda_version=None, cuda_devices=0, accounting="sampled", sample_every=50),
    MemorySample(step=3, span="step", step_time_s=0.01, measured=True, rss_bytes=100,
                 devices={"cpu": {"tensor_bytes": 10, "tensor_peak": 20, "peak_phase": "backward",
                                  "phase_peaks": {"forward": 15, "backward": 20},
                                  "breakdown": {"parameters": 5, "gradients": 5, "optimizer_state": 0,
                                                "activations_other": 10}}}),
    Note(level="warning", message="something", step=2),
    Finding(id="TD101", severity="error", title="t", location="train.py:3", evidence="e", fix="f"),
    OutOfMemory(step=3, phase="backward", device="cpu", backend="torchdoctor-budget", requested_bytes=10,
                in_use_bytes=90, capacity_bytes=95, message="CPU out of memory", breakdown={"parameters": 5}),
    BatchSource(index=0, source="dataloader", batch_size=256, training=True),
    ProcessSample(rss_bytes=5, children_rss_bytes=None, device_used={"gpu0": 7}),
    Resume(status="resumed", message="resumed from the checkpoint of step 15", step=15, checkpoint="c/ckpt.pt",
           seconds=1.5),
    TrainingFigures(updates=[{"name": "SGD #0", "steps": 2, "samples": {"64": 2}, "tokens": {}, "pending": None,
                              "first": [{"samples": 64, "backwards": 1, "iterations": 1, "loss": 2.3}]}],
                    step_calls=2, backwards=2, iterations=2, reductions={"mean": 2},
                    passes=[{"loader": 0, "number": 0, "batches": 2, "steps": 2, "exhausted": True, "length": 2}],
                    batchnorm=None, closure=False, settings={}, remedies={"deferred_steps": 2}),
    RunStarted(pid=2, target="train.py", is_module=False, argv=["train.py"], python="3.11.7", torch_version="2.13.0",
               cuda_version=None, cuda_devices=0, accounting="sampled", sample_every=50, rank=1, local_rank=1,
               world_size=2),
    RunFinished(exit_code=0, exception=None, message=None, steps=3, dropped_events=0),
    RanksFailed(failures=[{"rank": 1, "local_rank": 1, "pid": 7, "exit_code": -9, "signal": "SIGKILL",
                           "message": "Signal 9 (SIGKILL) received by PID 7"}]),
    ProcessExited(returncode=-9, exit_code=137, outcome="killed", signal="SIGKILL"),
    ProcessExited(returncode=-9, exit_code=124, outcome="stalled", signal="SIGKILL",
                  stop={"reason": "stall-timeout", "signals": ["SIGINT", "SIGTERM", "SIGKILL"], "grace_s": 10.0}),
    Heartbeat(where="train.py:12 in train", stacks_signal=41),
    Stall(since=1.5e9, seconds=61.0, where="train.py:12 in train", stacks="Thread 0x1 (most recent call first):"),
    Estimated(batch_size=32, steps=[{"peak_bytes": 10, "peak_phase": "forward", "held_bytes": 4,
                                     "by_phase": {"forward": 10}, "by_kind": {"parameters": 4}}],
              device="cpu", stand_ins=2, batch_option="--batch-size", steps_done=2),
]


def test_every_event_kind_has_an_example():
    assert {type(e).kind for e in EXAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.kind)
def test_events_round_trip_through_json(event):
    line = event.to_json()
    data = json.loads(line)
    assert data["v"] == SCHEMA_VERSION and data["kind"] == event.kind
    assert event_from_json(line) == event


def test_unknown_kind_and_version_are_refused():
    with pytest.raises(EventError, match="unknown event kind"):
        event_from_dict({"v": SCHEMA_VERSION, "kind": "nope"})
    with pytest.raises(EventError, match="version"):
        event_from_dict({**EXAMPLES[2].to_dict(), "v": SCHEMA_VERSION + 1})
    with pytest.raises(EventError, match="not JSON"):
        event_from_json("{broken")
    with pytest.raises(EventError, match="bad note"):
        event_from_dict({"v": SCHEMA_VERSION, "kind": "note", "t": 1.0})


def test_events_from_a_newer_minor_writer_ignore_unknown_fields():
    data = {**EXAMPLES[2].to_dict(), "extra_field": 1}
    assert event_from_dict(data) == EXAMPLES[2]

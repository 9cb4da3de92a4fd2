"""`torchdoctor run --tensorboard DIR` / `--wandb` end to end: real scripts, real event files read back."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from tests.conftest import REPO, SCRIPTS, read_report, run_torchdoctor

pytestmark = pytest.mark.e2e
MIB = 2**20


def load_tensorboard(path: Path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def points(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def text(acc, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{tag}/text_summary")]


def mib(n: int) -> float:
    return pytest.approx(n / MIB, rel=1e-6)  # TensorBoard keeps float32


def test_a_real_run_writes_its_memory_per_step_and_phase_for_tensorboard(tmp_path):
    # GIVEN a small training script measured exactly on every step
    result = run_torchdoctor(["run", "-q", "--accounting", "exact", "--run-dir", str(tmp_path / "run"),
                              "--tensorboard", str(tmp_path / "tb"), str(SCRIPTS / "tiny_train.py"), "--steps", "3"],
                             cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done 3 steps, eval output (4096, 4)\n"  # the script's stdout is still its own
    report = read_report(tmp_path / "run")
    # WHEN TensorBoard reads DIR/<run dir name>
    acc = load_tensorboard(tmp_path / "tb" / "run")
    # THEN each step's figures are there, equal to the report's samples
    steps = [s for s in report["samples"] if s["span"] == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert points(acc, "memory/cpu/tensor_peak_mib") == {s["step"]: mib(s["devices"]["cpu"]["tensor_peak"])
                                                        for s in steps}
    for phase in ("forward", "backward", "optimizer"):
        assert points(acc, f"memory/cpu/phase/{phase}_mib") == {
            s["step"]: mib(s["devices"]["cpu"]["phase_peaks"][phase]) for s in steps}
    assert points(acc, "memory/cpu/breakdown/parameters_mib")[3] == mib(
        steps[2]["devices"]["cpu"]["breakdown"]["parameters"])
    assert sorted(points(acc, "memory/host/rss_mib")) == [1, 2, 3] and set(points(acc, "time/step_s")) == {1, 2, 3}
    # the evaluation after the last step is the run's peak, under its own tags
    tail = next(s for s in report["samples"] if s["span"] == "tail")
    assert points(acc, "tail/memory/cpu/phase/evaluation_mib") == {3: mib(tail["devices"]["cpu"]["tensor_peak"])}
    peak = next(p for p in report["peaks"] if p["kind"] == "tensor_bytes")
    assert points(acc, "peak/cpu/tensor_bytes_mib") == {3: mib(peak["bytes"])}
    assert text(acc, "summary")[0][1].startswith("**success** (exit 0) · 3 optimizer steps")
    assert not (tmp_path / "tb" / "run" / "attempt-2").exists()


def test_an_oom_and_the_recovered_attempt_appear_in_tensorboard(tmp_path):
    # GIVEN a script that runs out of memory in backward under a 16 MiB budget, then recovers with micro-batches
    result = run_torchdoctor(["run", "-q", "--accounting", "exact", "--memory-budget", "16MiB", "--run-dir",
                              str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb"),
                              str(SCRIPTS / "oom" / "dataloader_mlp.py"), "--epochs", "1"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "run")
    failed = report["attempts"][0]["oom"]
    assert report["attempts"][0]["outcome"] == "oom" and failed["step"] == 2
    first, second = load_tensorboard(tmp_path / "tb" / "run"), load_tensorboard(tmp_path / "tb" / "run" / "attempt-2")
    # THEN the OOM is an event of the first attempt's run, at the step it failed in, with its sizes and words
    assert points(first, "oom/events") == {2: 1.0}
    assert points(first, "oom/requested_mib") == {2: mib(failed["requested_bytes"])}
    assert points(first, "oom/capacity_mib") == {2: 16.0}
    [(step, words)] = text(first, "oom")
    assert step == 2 and "phase backward, device cpu (torchdoctor-budget)" in words and "Tried to allocate" in words
    assert set(points(first, "memory/cpu/tensor_peak_mib")) == {1}  # the one step it finished
    # and the recovered attempt counts its own steps from 1, in its own run, with the report's figures
    steps = [s for s in report["samples"] if s["span"] == "step"]
    assert points(second, "memory/cpu/tensor_peak_mib") == {s["step"]: mib(s["devices"]["cpu"]["tensor_peak"])
                                                           for s in steps}
    assert sorted(points(second, "memory/cpu/tensor_peak_mib")) == [1, 2, 3, 4]
    assert any("micro-batches of" in words and "with gradient accumulation" in words
               for _, words in text(second, "notes"))
    summary = text(first, "summary")[0][1]
    assert "2 attempt(s) · recovered (micro-batch)" in summary


def wandb_records(path: Path):
    """The records of an offline run's ``.wandb`` file: W&B's transaction log, a LevelDB-format log (7-byte file
    header, 32 KiB blocks, chunks with a 7-byte header) of ``wandb_internal_pb2.Record`` protobufs; ``wandb sync``
    uploads exactly these."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the end of a block too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_the_same_history(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    # GIVEN a script that reports whether it inherited torchdoctor's W&B service
    script = tmp_path / "train.py"
    script.write_text(
        "import os, torch\n"
        "model = torch.nn.Linear(8, 2); opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(3):\n"
        "    opt.zero_grad(); model(torch.randn(4, 8)).sum().backward(); opt.step()\n"
        "print('service inherited:', 'WANDB_SERVICE' in os.environ)\n")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_PROJECT": "td-test",
           "WANDB_SILENT": "true"}
    # WHEN it runs with --wandb in offline mode
    result = run_torchdoctor(["run", "-q", "--accounting", "exact", "--run-dir", str(tmp_path / "run"), "--wandb",
                              str(script)], cwd=tmp_path, env_extra=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "service inherited: False\n"
    report = read_report(tmp_path / "run")
    [log] = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    history, summary, run, exit_code = {}, {}, None, None
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = row
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
        elif kind == "run":
            run = record.run
        elif kind == "exit":
            exit_code = record.exit.exit_code
    # THEN the W&B run is named after the run directory, in the user's project, with the same figures
    assert (run.project, run.display_name) == ("td-test", "run")
    steps = [s for s in report["samples"] if s["span"] == "step"]
    assert {s["step"]: history[s["step"]]["memory/cpu/tensor_peak_mib"] for s in steps} == {
        s["step"]: pytest.approx(s["devices"]["cpu"]["tensor_peak"] / MIB) for s in steps}
    assert history[1]["memory/cpu/phase/backward_mib"] == pytest.approx(
        steps[0]["devices"]["cpu"]["phase_peaks"]["backward"] / MIB)
    assert all(row["run/attempt"] == 1 for row in history.values())
    peak = next(p for p in report["peaks"] if p["kind"] == "tensor_bytes")
    assert summary["peak/cpu/tensor_bytes_mib"] == pytest.approx(peak["bytes"] / MIB)
    assert summary["outcome"] == "success" and summary["run/steps"] == 3
    assert exit_code == 0


def hiding(tmp_path: Path, package: str) -> dict[str, str]:
    """An environment where ``import package`` fails as if it were not installed."""
    fake = tmp_path / "hide" / package
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f'raise ImportError("No module named {package!r} (hidden by the test)")\n')
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "hide"), str(REPO)])}


@pytest.mark.parametrize("option, message", [
    (["--tensorboard", "tb"],
     'torchdoctor: error: --tensorboard needs the tensorboard package: pip install "torchdoctor[tensorboard]"'),
    (["--wandb"],
     'torchdoctor: error: --wandb needs the wandb package: pip install wandb (or pip install "torchdoctor[wandb]")'),
])
def test_a_missing_package_stops_before_the_script_runs_with_one_line(tmp_path, option, message):
    package = option[0].lstrip("-")
    result = run_torchdoctor(["run", "-q", *option, str(SCRIPTS / "tiny_train.py")], cwd=tmp_path,
                             env_extra=hiding(tmp_path, package))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
    assert result.stdout == ""  # the script never started
    assert not (tmp_path / "tb").exists()

"""The doctor under library trainers it did not write the loop of: transformers.Trainer (a tiny GPT-2, gradient
accumulation 1 and 2, evaluation every 3 steps), a Lightning Trainer (automatic optimization with
accumulate_grad_batches 1 and 2, manual optimization, a validation loop) and a plain accelerate loop (with and
without ``accelerator.accumulate``, evaluation over slices under no_grad). Correct code gets no finding; each broken
variant gets exactly the check that describes it, pointing at the script's own line, not at the library's.

The scripts are tests/scripts/library_doctor/*.py; each run is a few seconds (``slow``: `python -m pytest -m slow`).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import SCRIPTS, read_report, run_torchdoctor

pytestmark = pytest.mark.e2e
HERE = SCRIPTS / "library_doctor"
LIBRARY = {"hf_trainer.py": "transformers", "lightning_trainer.py": "lightning", "accelerate_loop.py": "accelerate"}

CLEAN = [
    ("hf_trainer.py", ["--accum", "1"]),
    ("hf_trainer.py", ["--accum", "2"]),
    ("lightning_trainer.py", ["--accum", "1"]),
    ("lightning_trainer.py", ["--accum", "2"]),
    ("lightning_trainer.py", ["--manual"]),
    ("accelerate_loop.py", ["--accum", "1"]),
    ("accelerate_loop.py", ["--accum", "2"]),
]

# (script, variant, the one finding expected, the script's line it points at: the text on that line)
BROKEN = [
    # the Trainer's optimizer holds a deep copy's parameters: the model's gradients are in no optimizer, the
    # optimizer's parameters never get one (TD115 says both; TD114's "in no optimizer" is not said again)
    ("hf_trainer.py", "optimizer-on-copy", "TD115", "optimizers"),
    ("hf_trainer.py", "kept-logits", "TD109", "super().compute_loss"),
    ("hf_trainer.py", "zero-grad-in-step", "TD102", "model.zero_grad()"),
    ("lightning_trainer.py", "manual-no-zero-grad", "TD101", "self.manual_backward(loss)"),
    ("lightning_trainer.py", "kept-losses", "TD109", "F.cross_entropy(self(x), y)"),
    ("lightning_trainer.py", "scheduler-per-batch", "TD107", "self.lr_schedulers().step()"),
    ("accelerate_loop.py", "no-zero-grad", "TD101", "accelerator.backward(loss)"),
    ("accelerate_loop.py", "undivided-accumulation", "TD104", "accelerator.backward(loss)"),
    ("accelerate_loop.py", "eval-with-grad", "TD110", "model(x[i:i + 32])"),
]


def doctor_run(tmp_path, script: str, args: list[str]) -> tuple[list[dict], int]:
    """The findings of ``torchdoctor run`` on the script, and the optimizer steps it counted."""
    pytest.importorskip(LIBRARY[script])
    run_dir = tmp_path / "run"
    result = run_torchdoctor(["run", "-q", "--run-dir", str(run_dir), str(HERE / script), *args], cwd=tmp_path,
                             timeout=240, env_extra={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_report(run_dir)
    return report["findings"], report["steps"]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args"), CLEAN, ids=[f"{s[:-3]}{''.join(a)}" for s, a in CLEAN])
def test_correct_library_training_gets_no_finding(tmp_path, script, args):
    findings, steps = doctor_run(tmp_path, script, args)
    assert findings == [], findings
    assert steps >= 6  # it trained: the doctor had steps to watch


@pytest.mark.slow
@pytest.mark.parametrize(("script", "variant", "check_id", "line_text"), BROKEN,
                         ids=[f"{s[:-3]}-{v}" for s, v, _, _ in BROKEN])
def test_a_broken_variant_gets_its_check_at_the_scripts_line(tmp_path, script, variant, check_id, line_text):
    extra = ["--steps", "10"] if variant == "kept-logits" else []  # anomaly mode needs a few steps to see the line
    findings, _ = doctor_run(tmp_path, script, ["--broken", variant, *extra])
    assert [f["id"] for f in findings] == [check_id], findings
    path, line = findings[0]["location"].rsplit(":", 1)
    assert os.path.samefile(tmp_path / path, HERE / script), findings[0]["location"]  # not the library's file
    assert line_text in (HERE / script).read_text().splitlines()[int(line) - 1]


@pytest.mark.slow
def test_lightning_self_log_runs_under_the_doctor(tmp_path):
    """torchmetrics' Metric.__hash__ fails while its __init__ runs (it once crashed the script under torchdoctor,
    whose record of where each module was made hashes every new module)."""
    findings, _ = doctor_run(tmp_path, "lightning_trainer.py", ["--log"])
    assert findings == []

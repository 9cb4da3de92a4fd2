"""Every error the command line can raise, reached and checked: one line ``torchdoctor: error: ...``, exit 2, no
traceback, nothing on stdout. The list of error paths is read from the source (every ``raise UsageError(...)`` and
``raise TorchDoctorError(...)`` the CLI can reach), so a new one without a case here fails this test; the few that
cannot be reached in-process name the test that covers them instead."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from tests.conftest import REPO
from torchdoctor.cli import main

PACKAGE = Path(REPO) / "torchdoctor"
SCANNED = ["cli/*.py", "sizes.py", "files.py", "gpus.py", "supervisor/*.py", "reporters/monitors/*.py"]
# Error paths not reachable by an in-process call with bad input, and where they are covered.
ELSEWHERE = {
    "cannot write --json": "tests/e2e/test_estimate.py (a full estimate run, then /dev/full)",
    "changing the batch size needs the script's batch-size option": "tests/e2e/test_estimate.py",
    "on fake tensors before its optimizer step": "tests/e2e/test_estimate.py",
    "the script ended before its optimizer step": "tests/e2e/test_estimate.py (a script that ends on fake tensors)",
    "on real tensors either": "tests/e2e/test_estimate.py (a script that fails on fake and on real tensors)",
    "cannot write the run directory": "also tests/e2e/test_full_disk.py (the plan cannot be written)",
    "needs the": "tests/unit/test_monitors.py (a monitor's package missing)",
    "cannot write there": "tests/unit/test_monitors.py (an unwritable TensorBoard directory)",
    "cannot read ": "a script the user cannot read: root reads any file, so only a non-root run reaches it",
    "is not a Python script (": "target.py's last resort for a file compile() refuses otherwise; not reachable",
}

REPORT = {"schema": "torchdoctor.report", "schema_version": 1}


def _scripts(tmp: Path) -> None:
    (tmp / "ok.py").write_text("print('ok')\n")
    (tmp / "bad_syntax.py").write_text("def f(:\n")
    (tmp / "data.bin").write_bytes(b"\x00\x01\x02binary")
    (tmp / "notes.txt").write_text("just text\n")
    (tmp / "adir").mkdir()
    (tmp / "done").mkdir()
    (tmp / "done" / "report.json").write_text("{}")
    (tmp / "empty-run").mkdir()
    (tmp / "empty-run" / "events.jsonl").write_text("")
    (tmp / "a-file").write_text("user data")
    os.mkfifo(tmp / "fifo")
    (tmp / "bad.json").write_text("{not json")
    (tmp / "other.json").write_text('{"schema": "something else"}')
    (tmp / "v99.json").write_text('{"schema": "torchdoctor.baseline", "schema_version": 99}')
    (tmp / "nofig.json").write_text('{"schema": "torchdoctor.baseline", "schema_version": 1, "figures": {"a": -1}}')
    (tmp / "r_bad.json").write_text("{not json")
    (tmp / "r_other.json").write_text('{"schema": "x"}')
    (tmp / "r_v99.json").write_text(json.dumps({**REPORT, "schema_version": 99}))
    (tmp / "r_types.json").write_text(json.dumps({**REPORT, "steps": "three"}))


CASES = [
    (["run", "nope.py"], "no such script: nope.py"),
    (["run", "adir"], "adir is a directory, not a Python script"),
    (["run", "data.bin"], "is not a Python script (it is a binary file)"),
    (["run", "notes.txt"], "is not a Python script (expected a .py file or a python shebang)"),
    (["run", "bad_syntax.py"], "syntax error in bad_syntax.py"),
    (["run", "-m", "not a module"], "not a module name"),
    (["run", "-m", "no_such_module_xyz"], "no module named 'no_such_module_xyz'"),
    (["run", "--remedies", ",", "ok.py"], "--remedies names no remedy"),
    (["run", "--remedies", "magic", "ok.py"], "unknown remedy 'magic'"),
    (["run", "--host-memory-limit", "1KB", "ok.py"], "--host-memory-limit 1KB is below"),
    (["run", "--stall-timeout", "nan", "ok.py"], "--stall-timeout must be a number of seconds"),
    (["run", "--memory-budget", "lots", "ok.py"], "not a size: 'lots'"),
    (["run", "--memory-budget", "0", "ok.py"], "a size must be positive"),
    (["run", "--memory-budget", "0.5", "ok.py"], "a size must be at least 1 byte"),
    (["run", "--run-dir", "done", "ok.py"], "run directory done already holds a run"),
    (["run", "--run-dir", "a-file/sub", "ok.py"], "cannot write the run directory a-file/sub"),
    (["run", "--run-dir", "fifo", "ok.py"], "run directory fifo exists and is not a directory"),
    (["run", "--nproc-per-node", "two", "ok.py"], "--nproc-per-node takes a number of processes of 1 or more"),
    (["run", "--nnodes", "3:1", "ok.py"], "--nnodes takes a number of nodes (2) or a range MIN:MAX"),
    (["run", "--node_rank", "first", "ok.py"], "--node-rank takes a whole number, not 'first'"),
    (["run", "--master-port", "70000", "ok.py"], "--master-port takes a number from 0 to 65535"),
    (["run", "--monitor-interval", "soon", "ok.py"], "--monitor-interval takes a number of seconds, not 'soon'"),
    (["run", "--monitor-interval", "0", "ok.py"], "--monitor-interval takes a positive number of seconds"),
    (["run", "--start-method", "thread", "ok.py"], "--start-method takes one of spawn, fork, forkserver"),
    (["run", "--nproc-per-node", "2", "--no-python", "ok.py"], "--no-python cannot be used"),
    (["run", "--nnodes", "1:2", "--nproc-per-node", "2", "--checkpoint-every", "5", "ok.py"],
     "--checkpoint-every works on one machine only, not --nnodes 1:2"),
    (["run", "--nproc-per-node", "2", "--rdzv-bogus", "x", "ok.py"], "no such option: --rdzv-bogus"),
    (["ci", "--max-increase", "lots", "ok.py"], "--max-increase must be a percentage such as 5%"),
    (["ci", "--max-increase", "-5%", "ok.py"], "--max-increase must be a percentage of 0 or more"),
    (["ci", "--baseline", "missing.json", "ok.py"], "no baseline at missing.json"),
    (["ci", "--baseline", "bad.json", "ok.py"], "baseline bad.json cannot be read"),
    (["ci", "--baseline", "other.json", "ok.py"], "other.json is not a torchdoctor baseline"),
    (["ci", "--baseline", "v99.json", "ok.py"], "baseline v99.json has schema version 99"),
    (["ci", "--baseline", "nofig.json", "ok.py"], "baseline nofig.json has no valid figures"),
    (["ci", "--markdown", "adir", "ok.py"], "--markdown adir is a directory (give a file name)"),
    (["ci", "--junit", "nowhere/junit.xml", "ok.py"], "the directory"),
    (["estimate", "--batch-sizes", "8,x", "ok.py"], "--batch-sizes takes whole numbers"),
    (["estimate", "--batch-sizes", "0", "ok.py"], "--batch-sizes takes batch sizes of 1 or more"),
    (["estimate", "--cuda-context", "300MiB", "ok.py"], "--cuda-context is the memory of a modelled GPU"),
    (["estimate", "--gpu", "a100", "ok.py"], "matches A100-80GB, A100-40GB: name one"),
    (["estimate", "--gpu", "banana", "ok.py"], "is not a GPU torchdoctor knows"),
    (["explain", "TD999"], "no check 'TD999'"),
    (["report", "missing"], "no report at missing"),
    (["report", "empty-run"], "report.json is missing and events.jsonl holds no event"),
    (["report", "r_bad.json"], "cannot read report r_bad.json"),
    (["report", "r_other.json"], "r_other.json is not a torchdoctor report"),
    (["report", "r_v99.json"], "r_v99.json has report schema version 99"),
    (["report", "r_types.json"], "is not a report torchdoctor can read"),
    (["report", "--html", "/dev/full", "r_ok.json"], "cannot write --html /dev/full"),
]


def _constant_texts(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    if isinstance(node, ast.BinOp):
        return _constant_texts(node.left) + _constant_texts(node.right)
    return []


def error_paths() -> dict[str, str]:
    """``file:line`` -> the longest literal piece of the message of every error the CLI can raise."""
    found = {}
    for pattern in SCANNED:
        for path in sorted(PACKAGE.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                        and getattr(node.exc.func, "id", None) in ("UsageError", "TorchDoctorError")):
                    continue
                texts = [t.strip(" :;,(") for arg in node.exc.args[:1] for t in _constant_texts(arg)]
                texts = [t for t in texts if len(t) >= 6]
                if texts:  # messages handed in by callers (files.read_versioned_json) are checked at the callers
                    found[f"{path.relative_to(PACKAGE)}:{node.lineno}"] = max(texts, key=len)
    return found


@pytest.fixture
def bad_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _scripts(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    run = tmp_path / "r_ok.json"
    run.write_text(json.dumps({**REPORT, "torchdoctor_version": "0", "run": {"target": "ok.py", "argv": ["ok.py"],
                                                                             "run_dir": None},
                               "outcome": "success", "exit_code": 0, "environment": {}, "accounting": {},
                               "steps": 0, "peaks": [], "samples": [], "events": [], "findings": []}))
    return tmp_path


def test_every_error_path_gives_one_line_and_exit_2_and_is_reached(bad_inputs, capsys):
    said = []
    for args, fragment in CASES:
        code = main(list(args))
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code in (1, 2) and out == "" and len(lines) == 1, (args, code, out, err)
        assert lines[0].startswith("torchdoctor: error: ") and fragment in lines[0], (args, lines[0])
        assert "Traceback" not in err
        said.append(lines[0])
    paths = error_paths()
    assert len(paths) >= 35  # the scan sees the error paths
    unreached = {where: text for where, text in paths.items()
                 if not any(text in line for line in said) and not any(key in text for key in ELSEWHERE)}
    assert unreached == {}

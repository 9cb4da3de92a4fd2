"""The bundled examples keep doing what their docstrings say."""

import pytest

from tests.conftest import REPO, run_python

pytestmark = pytest.mark.e2e


def test_library_example_recovers_a_real_oom_and_reloads_its_checkpoint(tmp_path):
    result = run_python([str(REPO / "examples" / "library_recovery.py")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step 2: loss 2.3050 (2 micro-batches per batch)" in result.stdout  # the same loss as the full batch
    assert "recovered: micro-batches 1 -> 2; memory back to baseline: True" in result.stdout
    assert "newest valid checkpoint: step 8" in result.stdout
    assert "out of memory" in result.stderr  # the recovery is logged, not hidden


def test_the_github_workflow_runs_its_memory_gate_and_memory_tests_as_written(tmp_path):
    """The example workflow's own commands, as written in it (only the install step is left out): they pass and
    write the reports it uploads."""
    import os
    import shlex
    import subprocess
    import sys

    import xmlschema
    import yaml

    workflow = yaml.safe_load((REPO / "examples" / "github-actions" / "memory.yml").read_text())
    steps = workflow["jobs"]["memory"]["steps"]
    commands = [s["run"] for s in steps if "run" in s and s["run"].split()[0] in ("torchdoctor", "pytest")]
    assert [c.split()[:2] for c in commands] == [["torchdoctor", "ci"], ["pytest", "examples/test_memory_limits.py"]]
    uploaded = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))["with"]["path"]
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the repository's layout, outputs in tmp_path
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    for command in commands:
        words = shlex.split(command)
        program = [sys.executable, "-m", words[0]] + (["-p", "no:cacheprovider"] if words[0] == "pytest" else [])
        result = subprocess.run(program + words[1:], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, command + "\n" + result.stdout + result.stderr
        if words[0] == "pytest":
            assert "torchdoctor: peak tensor memory per test" in result.stdout and "limit 32.0 MiB" in result.stdout
    schema = xmlschema.XMLSchema(str(REPO / "tests" / "data" / "junit.xsd"))
    for name in uploaded.split():
        assert (tmp_path / name).stat().st_size > 0, name
        if name.endswith(".xml"):
            schema.validate(tmp_path / name)


def test_the_readme_main_command_shows_an_oom_caught_and_the_training_kept(tmp_path):
    """The README's first command, as written there (after the install): the example runs out of memory, recovers,
    and its report says, measured, that it trained as asked; the script's own output agrees with a bare run."""
    import re
    import shlex

    from tests.conftest import read_report, run_torchdoctor

    readme = (REPO / "README.md").read_text()
    command = re.search(r"&& (torchdoctor run [^\n`]*examples/\S+)", readme).group(1)
    args = shlex.split(command)[1:]
    script = REPO / args[-1]
    result = run_torchdoctor([args[0], "--run-dir", str(tmp_path / "run"), *args[1:-1], str(script)], cwd=tmp_path,
                             timeout=300, env_extra={"COLUMNS": "100"})
    bare = run_python([str(script)], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ran out of memory" in result.stderr and "recovered with" in result.stderr
    assert "TRAINING CHANGED" not in result.stderr
    report = read_report(tmp_path / "run")
    assert report["attempts"][0]["outcome"] == "oom" and report["recovery"]["recovered"]
    assert {i["key"]: i["status"] for i in report["recovery"]["invariants"]} == {
        "optimizer_steps": "kept", "samples_per_step": "kept", "data_order": "kept", "numerics": "kept"}
    assert result.stdout == bare.stdout  # the same losses, printed by the script itself

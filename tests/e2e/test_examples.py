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

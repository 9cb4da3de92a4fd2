"""torchdoctor ci: a memory gate on the first steps of a real script, against a budget and a baseline."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import xmlschema

from tests.conftest import REPO, run_torchdoctor

SCRIPT = str(REPO / "tests" / "scripts" / "ci_model.py")
# The JUnit format as CI systems read it (tests/data/junit.xsd); pytest's own --junitxml output validates too.
JUNIT_SCHEMA = xmlschema.XMLSchema(str(REPO / "tests" / "data" / "junit.xsd"))
pytestmark = pytest.mark.e2e


def ci(tmp_path, *args, script_args=(), env=None):
    run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    result = run_torchdoctor(["ci", "--run-dir", str(run_dir), *args, SCRIPT, *script_args], cwd=tmp_path,
                             env_extra=env)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else None
    return result, report


def rendered_table(markdown: str) -> list[list[str]]:
    """The Markdown's table as a GitHub-flavoured renderer (markdown-it, rich's own) shows it: rows of cell texts."""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.rows[-1].append(self.cell.strip())
                self.cell = None

    html = MarkdownIt("commonmark").enable("table").render(markdown)
    assert html.count("<table>") == 1
    parser = Cells()
    parser.feed(html)
    return parser.rows


def peak(report):
    return next(p["bytes"] for p in report["peaks"] if p["kind"] == "tensor_bytes")


def test_within_budget_passes_and_over_budget_fails_with_the_figures(tmp_path):
    result, report = ci(tmp_path, "--steps", "3", "--budget", "64MiB", "--junit", "ci.xml", "--markdown", "ci.md",
                        "--html", "ci.html", env={"GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")})
    assert result.returncode == 0, result.stderr
    assert 'id="peak-figure">Peak tensor memory: <strong>' in (tmp_path / "ci.html").read_text()
    assert report["steps"] == 3 and "trained" not in result.stdout  # stopped after 3 steps
    assert "peak tensor bytes (cpu)" in result.stdout and "64.0 MiB" in result.stdout and " ok" in result.stdout
    assert "no baseline compared" in result.stdout
    suite = ET.parse(tmp_path / "ci.xml").getroot()
    JUNIT_SCHEMA.validate(tmp_path / "ci.xml")
    assert suite.tag == "testsuites" and suite.get("failures") == "0" and int(suite.get("tests")) == 3
    markdown = (tmp_path / "ci.md").read_text()
    assert markdown == (tmp_path / "summary.md").read_text()
    assert "passes" in markdown
    table = rendered_table(markdown)  # as GitHub shows it: a table with the figure, current and budget columns
    assert table[0] == ["figure", "current", "baseline", "budget", "change", "status"]
    assert ["peak tensor bytes (cpu)", "64.0 MiB", "ok"] == [table[1][0], table[1][3], table[1][5]]

    over, report2 = ci(tmp_path, "--steps", "3", "--budget", "100KiB", "--junit", "over.xml")
    assert over.returncode == 1
    assert "over the budget of 100.0 KiB" in over.stderr and "FAIL" in over.stdout
    failure = ET.parse(tmp_path / "over.xml").getroot().find(".//failure")
    assert failure is not None and "over the budget" in failure.get("message")
    JUNIT_SCHEMA.validate(tmp_path / "over.xml")
    assert peak(report2) == peak(report)  # exact accounting: the same figure on every run


def test_a_layer_added_over_the_baseline_fails_until_the_baseline_is_updated(tmp_path):
    # GIVEN a baseline recorded from the script as it is
    recorded, _ = ci(tmp_path, "--steps", "2", "--update-baseline")
    assert recorded.returncode == 0, recorded.stderr
    baseline = json.loads((tmp_path / ".torchdoctor" / "baseline.json").read_text())
    assert baseline["schema"] == "torchdoctor.baseline" and baseline["figures"]["tensor_bytes:cpu"] > 0
    # WHEN the same script runs again it passes; with one more layer it fails, naming the growth
    same, _ = ci(tmp_path, "--steps", "2")
    assert same.returncode == 0 and "+0.0%" in same.stdout
    grown, report = ci(tmp_path, "--steps", "2", script_args=["--extra-layer"])
    assert grown.returncode == 1
    assert "grew +" in grown.stderr and "over the baseline" in grown.stderr and "allowed +5.0%" in grown.stderr
    # updating the baseline makes it the new normal (a larger --max-increase is tested in tests/unit/test_ci_gate.py)
    assert ci(tmp_path, "--steps", "2", "--update-baseline", script_args=["--extra-layer"])[0].returncode == 0
    assert ci(tmp_path, "--steps", "2", script_args=["--extra-layer"])[0].returncode == 0
    assert json.loads((tmp_path / ".torchdoctor" / "baseline.json").read_text())["figures"]["tensor_bytes:cpu"] == \
        peak(report)


def test_a_run_that_measured_nothing_fails(tmp_path):
    result, _ = ci(tmp_path, "--budget", "1GiB", script_args=["--no-steps"])
    assert result.returncode == 1
    assert "nothing was measured" in result.stderr


@pytest.mark.parametrize("args,setup,message", [
    (["--baseline", "missing.json"], None, "no baseline at missing.json; record one with --update-baseline"),
    (["--baseline", "bad.json"], "{not json", "baseline bad.json cannot be read"),
    (["--baseline", "other.json"], '{"schema": "something else"}', "other.json is not a torchdoctor baseline"),
    (["--budget", "lots"], None, "lots"),
    (["--max-increase", "a bit"], None, "--max-increase must be a percentage such as 5%, not 'a bit'"),
    (["--junit", "missing/ci.xml"], None, "--junit missing/ci.xml: the directory"),
])
def test_bad_input_is_one_line_and_exit_2_before_the_script_runs(tmp_path, args, setup, message):
    if setup is not None:
        (tmp_path / args[1]).write_text(setup)
    result = run_torchdoctor(["ci", *args, SCRIPT], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchdoctor: error:") and message in lines[0]
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("torchdoctor-runs*"))
    if setup is not None:
        assert (tmp_path / args[1]).read_text() == setup  # the user's file is untouched


def test_the_junit_schema_accepts_what_ci_systems_accept_and_rejects_what_they_reject(tmp_path):
    # pytest's own report (read by Jenkins, GitLab and GitHub test-report actions) is valid...
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--junitxml",
                             str(tmp_path / "pytest.xml"), str(REPO / "tests" / "unit" / "test_sizes.py")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    JUNIT_SCHEMA.validate(tmp_path / "pytest.xml")
    # ...and a report those systems would drop is not: a test case without a name, a count that is not a number
    for broken in ('<testsuites><testsuite name="s" tests="1"><testcase/></testsuite></testsuites>',
                   '<testsuites><testsuite name="s" tests="one"/></testsuites>',
                   '<testsuites><testcase name="outside a suite"/></testsuites>'):
        assert not JUNIT_SCHEMA.is_valid(broken)


def test_fail_on_fails_the_gate_on_findings_and_lists_them_in_every_output(tmp_path):
    script = REPO / "tests" / "doctor_corpus" / "td101_no_zero_grad.py"
    run_dir = tmp_path / "run"
    result = run_torchdoctor(["ci", "--run-dir", str(run_dir), "--steps", "6", "--fail-on", "error", "--junit",
                              "ci.xml", "--markdown", "ci.md", str(script)], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL: TD101 error" in result.stderr
    JUNIT_SCHEMA.validate(tmp_path / "ci.xml")
    case = next(c for c in ET.parse(tmp_path / "ci.xml").getroot().iter("testcase")
                if c.get("name") == "training-loop checks")
    assert case.find("failure").get("message").startswith("TD101 error") and "TD101" in case.find("system-out").text
    assert "**TD101** (error)" in (tmp_path / "ci.md").read_text()
    # without --fail-on the findings are listed but the memory gate alone decides
    quiet = run_torchdoctor(["ci", "--run-dir", str(tmp_path / "run2"), "--steps", "6", str(script)], cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr

"""The command line in-process: options, help, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.conftest import REPO
from torchdoctor.cli import cli, main


def run_main(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["report", "--help"], ["env", "--help"],
                                  ["explain", "--help"], ["ci", "--help"]])
def test_help_answers_without_importing_torch(args):
    code = ("import sys; from torchdoctor.cli import main; rc = main(%r); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)" % (args,))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0
    assert result.stdout.strip().endswith("NO-TORCH")
    assert "Usage:" in result.stdout


def test_run_help_lists_the_options():
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--run-dir", "--quiet", "--accounting", "--sample-every", "--live", "SCRIPT|MODULE"):
        assert option in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "torchdoctor" in result.output


def assert_one_line_error(code, out, err, *fragments):
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("torchdoctor: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_script(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run_main(capsys, ["run", "nope.py"]), "no such script: nope.py")
    assert not (tmp_path / "torchdoctor-runs").exists()  # nothing was created for a run that never started


def test_directory_instead_of_script(capsys, tmp_path):
    assert_one_line_error(*run_main(capsys, ["run", str(tmp_path)]), "is a directory")


def test_non_python_file(capsys, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    assert_one_line_error(*run_main(capsys, ["run", str(data)]), "not a Python script")
    binary = tmp_path / "weights.py"
    binary.write_bytes(b"\x00\x01\x02")
    assert_one_line_error(*run_main(capsys, ["run", str(binary)]), "binary")
    assert data.read_text() == "a,b\n1,2\n"


def test_syntax_error_names_file_and_line(capsys, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("x = 1\ndef f(:\n")
    assert_one_line_error(*run_main(capsys, ["run", str(script)]), "syntax error", "broken.py:2")


def test_unknown_torchdoctor_option(capsys, tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("")
    assert_one_line_error(*run_main(capsys, ["run", "--bogus", str(script)]), "no such option: --bogus")


def test_options_after_the_script_belong_to_the_script(capsys, tmp_path):
    # --bogus after the script is the script's business, not an error of torchdoctor's
    script = tmp_path / "args.py"
    script.write_text("import sys, json\nprint(json.dumps(sys.argv[1:]))\n")
    code = main(["run", "-q", "--run-dir", str(tmp_path / "r"), str(script), "--bogus", "--quiet", "x"])
    assert code == 0
    assert (tmp_path / "r" / "report.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (["run", "--accounting", "always", "x.py"], "always"),
    (["run", "--sample-every", "0", "x.py"], "sample-every"),
    (["run", "--log-interval", "abc", "x.py"], "log-interval"),
    (["run"], "missing argument"),
    (["frobnicate"], "no such command"),
])
def test_bad_option_values(capsys, args, fragment):
    assert_one_line_error(*run_main(capsys, args), fragment)


def test_missing_module(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run_main(capsys, ["run", "-m", "no_such_package_xyz.train"]), "no module named")
    assert_one_line_error(*run_main(capsys, ["run", "-m", "not a name"]), "not a module name")


def test_unwritable_run_directory(capsys, tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("user data")
    assert_one_line_error(*run_main(capsys, ["run", "--run-dir", str(blocker / "sub"), str(script)]),
                          "cannot write the run directory")
    assert_one_line_error(*run_main(capsys, ["run", "--run-dir", str(blocker), str(script)]), "is a file")
    assert blocker.read_text() == "user data"


def test_run_directory_of_an_earlier_run_is_never_overwritten(capsys, tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "report.json").write_text('{"earlier": true}')
    assert_one_line_error(*run_main(capsys, ["run", "--run-dir", str(run_dir), str(script)]), "already holds a run")
    assert json.loads((run_dir / "report.json").read_text()) == {"earlier": True}


@pytest.mark.parametrize("content, fragment", [
    (None, "no report at"),
    ("{not json", "cannot read report"),
    ('{"schema": "something else"}', "not a torchdoctor report"),
    ('{"schema": "torchdoctor.report", "schema_version": 99}', "schema version 99"),
])
def test_report_of_a_bad_path(capsys, tmp_path, content, fragment):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    assert_one_line_error(*run_main(capsys, ["report", str(path)]), fragment)


def test_env_says_plainly_when_there_is_no_gpu(capsys):
    code, out, err = run_main(capsys, ["env"])
    assert code == 0
    assert "torch " in out
    assert "CPU memory figures: " in " ".join(out.split())  # the allocator's, or tensor outputs and why
    try:
        import pynvml

        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        has_gpu = False
    if not has_gpu:
        assert "No GPU" in out


@pytest.mark.parametrize("args, fragment", [
    (["run", "--memory-budget", "lots", "x.py"], "not a size"),
    (["run", "--memory-budget", "0", "x.py"], "must be positive"),
    (["run", "--host-memory-limit", "1 parsec", "x.py"], "not a size"),
    (["run", "--remedies", "micro-batch,pray", "x.py"], "unknown remedy 'pray'"),
    (["run", "--max-retries", "-1", "x.py"], "max-retries"),
    (["run", "--min-batch-size", "0", "x.py"], "min-batch-size"),
])
def test_bad_recovery_options(capsys, args, fragment):
    assert_one_line_error(*run_main(capsys, args), fragment)


def test_explain_prints_the_check_with_a_before_and_after_snippet(capsys):
    code, out, err = run_main(capsys, ["explain", "td102"])
    assert code == 0 and err == ""
    assert out.startswith("TD102 (error): zero_grad() between backward() and step()")
    assert "Before:\n    loss.backward()\n    optimizer.zero_grad()" in out and "After:\n" in out


def test_explain_of_an_unknown_id_is_one_line(capsys):
    code, out, err = run_main(capsys, ["explain", "TD999"])
    assert code == 2 and out == ""
    assert err == "torchdoctor: error: no check 'TD999'; the checks are TD101–TD119 (torchdoctor explain lists them)\n"


def test_explain_without_an_id_lists_every_check_with_its_severity(capsys):
    from torchdoctor.checks import CATALOG

    code, out, _ = run_main(capsys, ["explain"])
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(CATALOG) >= 19
    assert lines[0].startswith("TD101  error") and any(line.startswith("TD105  warning") for line in lines)


@pytest.mark.parametrize("script,flags,expected", [
    ("td102_zero_between.py", ["--fail-on", "error"], 1),
    ("td102_zero_between.py", [], 0),
    ("td102_zero_between.py", ["--fail-on", "warning", "--no-doctor"], 0),
    ("clean_zero_between_fixed.py", ["--fail-on", "warning"], 0),
])
def test_fail_on_turns_findings_into_a_failing_exit_code(tmp_path, script, flags, expected):
    from tests.conftest import run_torchdoctor
    from tests.doctor_corpus.evaluate import HERE

    result = run_torchdoctor(["run", "-q", "--run-dir", str(tmp_path / "r"), *flags, str(HERE / script)],
                             cwd=tmp_path)
    assert result.returncode == expected, result.stderr
    findings = json.loads((tmp_path / "r" / "report.json").read_text())["findings"]
    if expected:
        assert "[torchdoctor] exit 1: 1 finding(s) at or above error (TD102; --fail-on error)" in result.stderr
    if "--no-doctor" in flags or script.startswith("clean"):
        assert findings == []
    else:
        assert [f["id"] for f in findings] == ["TD102"]
        assert "1 finding (TD102: torchdoctor explain ID)" in result.stderr


def test_errors_keep_what_the_user_typed_and_a_bare_call_shows_the_help_as_written(capsys):
    code, out, err = run_main(capsys, ["run", "--accounting", "EXACT", "train.py"])
    assert code == 2 and err.count("\n") == 1 and "'EXACT' is not one of" in err
    code, out, err = run_main(capsys, [])
    assert code == 2 and "Usage: torchdoctor" in err and "PyTorch training runs" in err and "error" not in err


@pytest.mark.parametrize("args, said", [
    (["ci", "--max-increase", "nan", "train.py"], "'nan'"),
    (["ci", "--max-increase", "inf%", "train.py"], "'inf%'"),
    (["run", "--memory-budget", "0.5", "train.py"], "at least 1 byte"),
    (["run", "--log-interval", "nan", "train.py"], "--log-interval"),
    (["run", "--remedies", ",", "train.py"], "names no remedy"),
    (["run", "--host-memory-limit", "1KB", "train.py"], "below 64MiB"),
])
def test_values_that_would_switch_a_gate_off_are_refused_in_one_line(capsys, tmp_path, monkeypatch, args, said):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("print('ran')\n")
    code, out, err = run_main(capsys, args)
    assert code == 2 and err.count("\n") == 1 and said in err, err
    assert "ran" not in out and not (tmp_path / "torchdoctor-runs").exists()


def test_a_report_with_a_valid_header_but_wrong_fields_or_deep_nesting_is_refused_in_one_line(capsys, tmp_path):
    header = '{"schema": "torchdoctor.report", "schema_version": 1'
    wrong_types = tmp_path / "types.json"
    wrong_types.write_text(header + ', "steps": "x", "peaks": "oops"}')
    wrong_items = tmp_path / "items.json"
    wrong_items.write_text(header + ', "peaks": [{"device": "cpu", "kind": "tensor_bytes", "bytes": "big"}]}')
    deep = tmp_path / "deep.json"
    deep.write_text(header + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for path, said in ((wrong_types, "'steps' is str"), (wrong_items, "peaks[0].bytes is str"),
                       (deep, "nested too deeply")):
        for extra in ([], ["--html", str(tmp_path / "page.html")]):
            code, out, err = run_main(capsys, ["report", *extra, str(path)])
            assert code == 2 and err.count("\n") == 1 and said in err and "Traceback" not in err, err
    assert not (tmp_path / "page.html").exists()

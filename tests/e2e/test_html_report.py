"""`torchdoctor report RUN --html`: a real run that ran out of memory and recovered, written as one page that a real
headless browser (Chromium) renders with its charts; the page without the plotting extra; bad output paths."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO, read_report, run_torchdoctor
from torchdoctor.reporters.charts import OOM_COLOUR, TENSOR_PEAK_COLOUR
from torchdoctor.sizes import format_bytes

pytestmark = pytest.mark.e2e
SCRIPT = REPO / "tests" / "scripts" / "oom" / "dataloader_mlp.py"


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def recovered_run(tmp_path_factory):
    """A script that runs out of memory in backward under a 16 MiB budget and recovers with micro-batches."""
    where = tmp_path_factory.mktemp("html")
    result = run_torchdoctor(["run", "-q", "--memory-budget", "16MiB", "--run-dir", str(where / "run"), str(SCRIPT),
                              "--out", str(where / "w.pt")], cwd=where, timeout=300)
    assert result.returncode == 0, result.stderr
    return where, read_report(where / "run")


def test_report_html_writes_one_offline_page_with_the_charts_the_peak_and_the_oom(recovered_run):
    pytest.importorskip("matplotlib")
    where, report = recovered_run
    result = run_torchdoctor(["report", str(where / "run"), "--html", str(where / "report.html")], cwd=where)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "HTML report written to" in result.stderr
    page = (where / "report.html").read_text()
    peak = next(p for p in report["peaks"] if p["kind"] == "tensor_bytes")
    assert f"Peak tensor memory: <strong>{format_bytes(peak['bytes'])}</strong>" in page
    assert re.search(r'<figure class="chart" id="chart-memory"><svg', page)
    assert "torchdoctor-budget" in page and "recovered with micro-batch" in page
    assert 'id="top-tensors-cpu"' in page and "<td>2.weight</td>" in page  # named, among the largest
    assert "<script" not in page and "<link" not in page


@pytest.mark.skipif(chromium() is None, reason="no Chromium: install Debian's chromium package to run this test")
def test_a_headless_browser_renders_the_page_with_its_chart_and_peak_figure(recovered_run):
    pytest.importorskip("matplotlib")
    from PIL import Image  # matplotlib's own dependency

    where, report = recovered_run
    page = where / "browser.html"
    assert run_torchdoctor(["report", str(where / "run"), "--html", str(page)], cwd=where).returncode == 0
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={where / 'chromium-profile'}"]
    # the DOM as the browser built it: the chart is an <svg> with drawn paths, the peak figure is on the page
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    chart = re.search(r'<figure class="chart" id="chart-memory">(.*?)</figure>', dom, re.DOTALL)
    assert chart is not None and "<svg" in chart.group(1) and chart.group(1).count("<path") > 10
    peak = next(p for p in report["peaks"] if p["kind"] == "tensor_bytes")
    assert re.search(rf'id="peak-figure">Peak tensor memory: <strong>{re.escape(format_bytes(peak["bytes"]))}', dom)
    # what a person sees: a screenshot holds the tensor-peak line and the out-of-memory marker, in their colours
    shot = where / "page.png"
    subprocess.run([*browser, "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = Image.open(shot).convert("RGB")
    counts = {colour: 0 for colour in (TENSOR_PEAK_COLOUR, OOM_COLOUR)}
    wanted = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)): c for c in counts}
    for rgb, n in ((rgb, n) for n, rgb in pixels.getcolors(maxcolors=1 << 20)):
        for target, name in wanted.items():
            if all(abs(a - b) <= 8 for a, b in zip(rgb, target)):
                counts[name] += n
    assert counts[TENSOR_PEAK_COLOUR] > 150, counts  # the solid tensor-peak line, drawn (its legend key alone: ~60)
    assert counts[OOM_COLOUR] > 30, counts  # the dotted line where attempt 1 ran out of memory


def test_without_matplotlib_the_report_has_tables_and_an_install_hint(recovered_run, tmp_path):
    where, _ = recovered_run
    hidden = tmp_path / "hide"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    result = run_torchdoctor(["report", str(where / "run"), "--html", str(tmp_path / "plain.html")], cwd=tmp_path,
                             env_extra={"PYTHONPATH": f"{hidden}:{REPO}"})
    assert result.returncode == 0, result.stderr
    assert 'tables only: pip install "torchdoctor[html]" adds the charts' in result.stderr
    page = (tmp_path / "plain.html").read_text()
    assert "<svg" not in page and "Charts need matplotlib" in page and "Peak tensor memory: <strong>" in page


@pytest.mark.parametrize("target, fragment", [
    ("missing-dir/out.html", "does not exist"),
    (".", "is a directory"),
])
def test_an_html_path_that_cannot_be_written_is_one_line_and_exit_2(recovered_run, tmp_path, target, fragment):
    where, _ = recovered_run
    result = run_torchdoctor(["report", str(where / "run"), "--html", target], cwd=tmp_path)
    assert result.returncode == 2 and fragment in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr

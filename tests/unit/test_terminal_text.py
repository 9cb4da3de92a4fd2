import pytest

from torchdoctor.reporters.text import NOT_MEASURED, format_duration, sparkline
from torchdoctor.supervisor.terminal import settle


@pytest.mark.parametrize("line, shown", [
    ("plain", "plain"),
    ("crlf line\r", "crlf line"),  # a Windows-style line ending must not erase the line
    ("10%|#    \r50%|###  \r100%|#####", "100%|#####"),
    ("abcdef\rXY", "XYcdef"),  # a shorter redraw overwrites only its own columns, as a terminal does
    ("", ""),
])
def test_settle_shows_what_a_terminal_would(line, shown):
    assert settle(line) == shown


def test_sparkline_marks_unmeasured_steps_and_scales_between_min_and_max():
    assert sparkline([1, None, 3]) == "▁" + NOT_MEASURED + "█"
    assert sparkline([None, None]) == NOT_MEASURED * 2
    assert sparkline([]) == ""
    assert len(sparkline(list(range(1000)), width=40)) == 40
    flat = sparkline([5, 5, 5])
    assert len(set(flat)) == 1 and NOT_MEASURED not in flat


def test_format_duration():
    assert format_duration(None) == "n/a"
    assert format_duration(1.25) == "1.2 s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3725) == "1h02m05s"

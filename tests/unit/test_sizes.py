import pytest

from torchdoctor.errors import UsageError
from torchdoctor.sizes import format_bytes, parse_size


@pytest.mark.parametrize("text, expected", [
    ("6GiB", 6 * 1024**3), ("512MB", 512 * 1000**2), ("512 MiB", 512 * 1024**2), ("1.5gib", int(1.5 * 1024**3)),
    ("1048576", 1048576), ("2k", 2000), ("3TB", 3 * 1000**4),
])
def test_parse_size_understands_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "6 parsecs", "-1GiB", "0", "1..2MB", "six GiB"])
def test_parse_size_rejects_non_sizes_with_a_usage_error(text):
    with pytest.raises(UsageError) as err:
        parse_size(text)
    assert err.value.exit_code == 2


def test_format_bytes_never_turns_unknown_into_zero():
    assert format_bytes(None) == "n/a"
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(5 * 1024**3) == "5.0 GiB"
    assert format_bytes(-2 * 1024**2) == "-2.0 MiB"

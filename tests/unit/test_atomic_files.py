"""One atomic-write path for every file torchdoctor writes, which leaves the user's files what they were."""

import os
import stat

from torchdoctor.files import write_atomic, write_text_atomic


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "real.pt"
    real.write_bytes(b"old")
    link = tmp_path / "latest.pt"
    link.symlink_to(real)
    write_atomic(str(link), lambda handle: handle.write(b"new"))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "real.pt"]  # no temporary left


def test_an_existing_file_keeps_its_mode_and_a_new_one_gets_the_umask_default(tmp_path):
    private = tmp_path / "private.json"
    private.write_text("{}")
    os.chmod(private, 0o600)
    write_text_atomic(str(private), "[]")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and private.read_text() == "[]"
    fresh = tmp_path / "fresh.md"
    umask = os.umask(0o022)
    try:
        write_text_atomic(str(fresh), "# table")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o644


def test_what_is_not_a_regular_file_is_written_in_place_never_replaced(tmp_path):
    link = tmp_path / "sink"
    link.symlink_to(os.devnull)  # a character device behind a link the script saves to
    write_atomic(str(link), lambda handle: handle.write(b"discarded"))
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode) and link.is_symlink()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("kept")

    def fail(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    try:
        write_atomic(str(path), fail)
    except OSError:
        pass
    assert path.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_every_new_file_follows_the_umask_as_a_plain_open_would(tmp_path):
    from torchdoctor.files import write_json_atomic

    umask = os.umask(0o027)
    try:
        write_json_atomic(str(tmp_path / "report.json"), {"a": 1})
        write_atomic(str(tmp_path / "checkpoint.pt"), lambda handle: handle.write(b"x"))
    finally:
        os.umask(umask)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "report.json": 0o640, "checkpoint.pt": 0o640}

import sys

from torchdoctor.agent.import_hook import TorchImportWatcher


def test_callback_runs_right_after_the_module_is_imported_and_not_before(tmp_path, monkeypatch):
    (tmp_path / "watched_pkg_td.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    watcher = TorchImportWatcher(lambda: seen.append(sys.modules["watched_pkg_td"].VALUE), name="watched_pkg_td")
    watcher.install()
    try:
        assert seen == []
        import watched_pkg_td  # noqa: F401

        assert seen == [42]  # the module had finished executing when the callback ran
        assert watcher not in sys.meta_path  # one-shot
    finally:
        watcher.remove()
        sys.modules.pop("watched_pkg_td", None)


def test_already_imported_module_fires_at_once():
    seen = []
    TorchImportWatcher(lambda: seen.append(True), name="json").install()
    assert seen == [True]


def test_other_imports_pass_through_untouched():
    watcher = TorchImportWatcher(lambda: None, name="not_a_real_module_td")
    assert watcher.find_spec("json") is None

"""The zygote's parts that need no server: the environment check, the message channel, the hidden modules."""

from __future__ import annotations

import os
import socket
import sys
import types

import pytest

from torchdoctor.agent.hidden_modules import HiddenModules
from torchdoctor.channel import Channel, ChannelClosed
from torchdoctor.supervisor.zygote import import_time_differences


def test_only_variables_read_at_start_up_or_import_time_count_as_differences():
    base = {"OMP_NUM_THREADS": "1", "PATH": "/bin", "TORCHDOCTOR_PLAN": "/a", "LD_PRELOAD": "x"}
    assert import_time_differences(base, {**base, "PATH": "/usr/bin", "TORCHDOCTOR_PLAN": "/b"}) == []
    assert import_time_differences(base, {**base, "OMP_NUM_THREADS": "4"}) == ["OMP_NUM_THREADS"]
    changed = {**base, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "NVIDIA_VISIBLE_DEVICES": "0"}
    del changed["LD_PRELOAD"]  # unset counts as a change too
    assert import_time_differences(base, changed) == ["LD_PRELOAD", "NVIDIA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF"]


def test_channel_carries_messages_and_file_descriptors_in_order():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender, receiver = Channel(left), Channel(right)
    read_end, write_end = os.pipe()
    try:
        sender.send({"type": "first", "n": 1})
        sender.send({"type": "with-fd", "text": "é\n"}, [write_end])
        assert receiver.wait(5.0)
        messages = receiver.receive()
        assert [m["type"] for m in messages] == ["first", "with-fd"]
        assert messages[0]["_fds"] == [] and messages[1]["text"] == "é\n"
        (passed,) = messages[1]["_fds"]
        assert passed != write_end
        os.write(passed, b"through the socket")  # the received descriptor is the same pipe
        os.close(passed)
        assert os.read(read_end, 100) == b"through the socket"
        assert receiver.receive() == []  # nothing more, and no blocking
        sender.close()
        assert receiver.wait(5.0)
        with pytest.raises(ChannelClosed):
            receiver.receive()
    finally:
        os.close(read_end)
        os.close(write_end)
        receiver.close()


def test_hidden_modules_come_back_as_the_same_objects_when_imported(monkeypatch):
    package = types.ModuleType("td_hidden_pkg")
    package.__path__ = []  # a package
    sub = types.ModuleType("td_hidden_pkg.sub")
    other = types.ModuleType("td_hidden_other")
    spec = object()
    other.__spec__ = None
    package.__spec__ = None
    sub.marker = spec
    baseline = frozenset(sys.modules)
    monkeypatch.setitem(sys.modules, "td_hidden_pkg", package)
    monkeypatch.setitem(sys.modules, "td_hidden_pkg.sub", sub)
    monkeypatch.setitem(sys.modules, "td_hidden_other", other)
    hidden = HiddenModules.install(baseline, [])
    try:
        assert "td_hidden_pkg" not in sys.modules and "td_hidden_pkg.sub" not in sys.modules
        assert sys.meta_path[0] is hidden
        import td_hidden_pkg.sub  # noqa: F401 - brings back the package and its submodule

        assert sys.modules["td_hidden_pkg"] is package and sys.modules["td_hidden_pkg.sub"] is sub
        assert sys.modules["td_hidden_pkg.sub"].marker is spec
        assert package.__spec__ is None  # what the import system stamped on it was taken back
        assert "td_hidden_other" not in sys.modules  # another package stays hidden until imported
        import td_hidden_other  # noqa: F401

        assert sys.modules["td_hidden_other"] is other
        assert hidden not in sys.meta_path  # nothing left to hide
    finally:
        if hidden in sys.meta_path:
            sys.meta_path.remove(hidden)

"""The zygote's socket protocol, used by both sides: the supervisor's client (``torchdoctor.supervisor.zygote``)
and the server in the process that has imported torch (``torchdoctor.agent.zygote_server``). Standard library only.
"""

from __future__ import annotations

import collections
import json
import os
import select
import socket
from collections.abc import Sequence
from typing import Any

_MAX_FDS = 16  # file descriptors taken from one read; a request carries 3, a reply none


class ChannelClosed(ConnectionError):
    """The other end of the socket is gone."""


class Channel:
    """JSON messages, one per line, over a Unix stream socket; file descriptors ride along with SCM_RIGHTS.

    Both sides use it. A message that carries descriptors says how many (``"fds": n``); the kernel delivers the
    descriptors no later than the bytes of the message they were sent with, so the reader queues them in order
    and hands each message its own. The socket is non-blocking: every wait has a timeout.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._buffer = b""
        self._fds: collections.deque[int] = collections.deque()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any], fds: Sequence[int] = (), timeout: float = 10.0) -> None:
        """Send one message (and ``fds``), waiting at most ``timeout`` seconds for room in the socket."""
        data = (json.dumps({**message, "fds": len(fds)}, separators=(",", ":")) + "\n").encode()
        self.sock.settimeout(timeout)
        try:
            sent = socket.send_fds(self.sock, [data], list(fds)) if fds else self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed(str(exc)) from exc
        finally:
            self.sock.setblocking(False)

    def wait(self, timeout: float) -> bool:
        """True when there is something to read (or the other end closed) within ``timeout`` seconds."""
        try:
            readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for signal handlers that raise
            return False
        return bool(readable)

    def receive(self) -> list[dict[str, Any]]:
        """Every complete message that has arrived, without blocking; raises ChannelClosed at end of stream
        (after the messages before it have been returned by earlier calls)."""
        closed = False
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, 1 << 16, _MAX_FDS)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                closed = True
                break
            self._fds.extend(fds)
            if flags & getattr(socket, "MSG_CTRUNC", 0):
                raise ChannelClosed("file descriptors were lost in transit (control data truncated)")
            if not data:
                closed = True
                break
            self._buffer += data
        messages = []
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            count = message.pop("fds", 0)
            if count > len(self._fds):
                raise ChannelClosed(f"a message announced {count} file descriptors, {len(self._fds)} arrived")
            message["_fds"] = [self._fds.popleft() for _ in range(count)]
            messages.append(message)
        if closed and not messages:
            raise ChannelClosed("end of stream")
        return messages  # when closed, the next call raises: the end of stream is still there

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popleft())
        self.sock.close()

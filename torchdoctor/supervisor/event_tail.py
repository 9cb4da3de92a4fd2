"""The supervisor's end of the event stream: the JSON lines the agent appends to ``events.jsonl``."""

from __future__ import annotations

from typing import Any

from torchdoctor.events import EventError, event_from_json


class EventTail:
    """Reads complete JSON lines appended to the event file since the last call."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self.bad_lines = 0

    def read(self) -> list[Any]:
        try:
            with open(self._path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                events.append(event_from_json(line.decode("utf-8")))
            except (EventError, UnicodeDecodeError):
                self.bad_lines += 1
        return events

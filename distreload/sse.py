"""Reading a text/event-stream: the one parser behind ``distreload listen --url`` and the test suite's
stream reader (browsers use their own EventSource)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


class EventStreamParser:
    """Fed one line at a time (its line end taken off), it gives back an event at the blank line that ends
    one, as the HTML standard's event-stream rules say: ``data`` lines joined by newlines, one space after
    the colon dropped, comments (``:``) and unknown fields ignored, a block without data dispatched as
    nothing, and the last ``id`` kept for the events after it."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            return ServerSentEvent(event, "\n".join(data), self.last_id) if data else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None

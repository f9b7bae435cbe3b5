"""A minimal Server-Sent Events reader over a raw socket, run in a thread: what the tests read streams with
(httpx's ASGITransport and Starlette's TestClient buffer whole bodies, so endless streams need a real
server and a real socket)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from distreload.sse import EventStreamParser


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSEReader:
    port: int
    path: str = "/---distreload---/events"
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    closed: threading.Event = field(default_factory=threading.Event)
    heartbeats: list[float] = field(default_factory=list)  # when each ": heartbeat" comment arrived
    complete: bool = False  # the response ended properly (its last chunk), not by a cut connection
    closed_at: float | None = None  # time.monotonic() when the response or the connection ended
    host: str = "127.0.0.1"  # a server in a network namespace listens on its own address

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._parser = EventStreamParser()
        self._sock = socket.create_connection((self.host, self.port), timeout=30)
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Accept: text/event-stream\r\n{extra}\r\n"
        )
        self._sock.sendall(request.encode())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while b"\r\n\r\n" not in buffer:
                chunk = self._sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.response_headers[name.strip().lower()] = value.strip()
            chunked = self.response_headers.get("transfer-encoding") == "chunked"
            text = ""
            raw = buffer
            while True:
                if chunked:
                    decoded, raw, finished = _dechunk(raw)
                    text += decoded
                else:
                    text += raw.decode()
                    raw, finished = b"", False
                while "\n\n" in text:
                    block, text = text.split("\n\n", 1)
                    self._parse(block)
                if finished:
                    self.complete = True
                    return
                chunk = self._sock.recv(65536)
                if not chunk:
                    return
                raw += chunk
        except OSError:
            return
        finally:
            self.closed_at = time.monotonic()
            self.closed.set()
            with self._lock:
                self._lock.notify_all()

    def _parse(self, block: str) -> None:
        if block.startswith(": heartbeat"):
            with self._lock:
                self.heartbeats.append(time.monotonic())
                self._lock.notify_all()
            return
        for line in block.split("\n"):
            self._parser.feed(line)
        parsed = self._parser.feed("")  # the blank line that ended the block
        if parsed is None:
            return  # retry: lines only
        with self._lock:
            self.events.append(Event(parsed.event, parsed.data, parsed.id))
            self._lock.notify_all()

    def of(self, kind: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.event == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [e for e in self.events if e.event == kind]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.closed.is_set() and len(found) < count):
                    raise TimeoutError(f"saw {len(found)} {kind!r} events, wanted {count}: {self.events}")
                self._lock.wait(min(remaining, 0.1))

    def wait_for_heartbeats(self, count: int, timeout: float = 10.0) -> list[float]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.heartbeats) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    raise TimeoutError(
                        f"saw {len(self.heartbeats)} heartbeats, wanted {count}: {self.events}"
                    )
                self._lock.wait(min(remaining, 0.1))
            return list(self.heartbeats)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _dechunk(raw: bytes) -> tuple[str, bytes, bool]:
    out = b""
    while True:
        line_end = raw.find(b"\r\n")
        if line_end == -1:
            return out.decode(), raw, False
        size = int(raw[:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            return out.decode(), b"", True
        if len(raw) < line_end + 2 + size + 2:
            return out.decode(), raw, False
        out += raw[line_end + 2 : line_end + 2 + size]
        raw = raw[line_end + 2 + size + 2 :]

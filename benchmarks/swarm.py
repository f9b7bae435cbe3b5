"""A lean client for thousands of streams: raw non-blocking sockets on one epoll loop, no parsing beyond
looking for two byte strings. Timestamps are taken as the bytes arrive, so the figures are the server's.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import percentile


@dataclass(frozen=True)
class StreamProtocol:
    """Where a server's stream lives and how its bytes read: subscribed (ready) and reloaded (event)."""

    path: str
    ready_marker: bytes
    event_marker: bytes
    worker_pattern: re.Pattern[bytes] | None = None


# distreload: "event: hello" is written once the stream is registered with the hub; its data names the worker.
DISTRELOAD_STREAM = StreamProtocol(
    "/---distreload---/events", b"event: hello", b"event: reload", re.compile(rb'"worker": ?"([^"]+)"')
)
# fastapi-reloader: a text/plain stream sent chunked; "0\n" first (the queue is registered by then) and every
# second, "1\n" for a reload. In chunked framing a line "1\n" is always preceded by its size line's CRLF.
FASTAPI_RELOADER_STREAM = StreamProtocol("/---fastapi-reloader---", b"\r\n0\n", b"\r\n1\n")


@dataclass
class FanoutResult:
    clients: int
    delivered: int
    latencies_ms: list[float]
    trigger_response_ms: float
    per_worker: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        values = self.latencies_ms
        return {
            "clients": self.clients,
            "delivered": self.delivered,
            "p50_ms": round(percentile(values, 0.50), 2),
            "p90_ms": round(percentile(values, 0.90), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "max_ms": round(max(values), 2) if values else None,
            "trigger_response_ms": round(self.trigger_response_ms, 2),
            "per_worker": dict(sorted(self.per_worker.items())),
        }


class Swarm:
    """``count`` open streams to one server; ``fire()`` triggers a reload and times its arrival everywhere."""

    def __init__(self, port: int, protocol: StreamProtocol) -> None:
        self.port = port
        self.protocol = protocol
        self.epoll = select.epoll()
        self.sockets: dict[int, socket.socket] = {}
        self.tails: dict[int, bytes] = {}
        self.ready: set[int] = set()
        self.workers: dict[int, str] = {}
        self.request = (
            f"GET {protocol.path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, count: int, *, batch: int = 200, timeout: float = 120.0) -> None:
        """Open ``count`` streams, ``batch`` at a time, each batch subscribed before the next is opened (the
        server's accept queue never overflows, and no connection waits on a SYN retry)."""
        deadline = time.monotonic() + timeout
        while len(self.sockets) < count:
            wanted = len(self.sockets) + min(batch, count - len(self.sockets))
            while len(self.sockets) < wanted:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(self.request)
                sock.setblocking(False)
                fd = sock.fileno()
                self.sockets[fd] = sock
                self.tails[fd] = b""
                self.epoll.register(fd, select.EPOLLIN)
            while len(self.ready) < wanted:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self.ready)} of {count} streams subscribed within {timeout} s")
                self._read_until_ready(0.5)

    def _read_until_ready(self, timeout: float) -> None:
        marker = self.protocol.ready_marker
        for fd, _ in self.epoll.poll(timeout):
            data = self._read(fd)
            if fd in self.ready:
                continue
            buffer = self.tails[fd] + data
            index = buffer.find(marker)
            if index == -1:
                self.tails[fd] = buffer
                continue
            self.ready.add(fd)
            pattern = self.protocol.worker_pattern
            if pattern is not None:
                match = pattern.search(buffer, index)
                if match is not None:
                    self.workers[fd] = match.group(1).decode()
            self.tails[fd] = b""

    def _read(self, fd: int) -> bytes:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return b""
        if not data:
            self.epoll.unregister(fd)
            raise ConnectionError(f"the server closed stream {fd} ({len(self.ready)} subscribed)")
        return data

    def drain(self, seconds: float) -> int:
        """Keep reading (heartbeats) for ``seconds`` as a browser would; returns the bytes read."""
        total = 0
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for fd, _ in self.epoll.poll(min(left, 0.5)):
                total += len(self._read(fd))
        return total

    def fire(self, trigger_path: str = "/trigger", *, timeout: float = 30.0) -> FanoutResult:
        """POST the trigger on a connection opened beforehand; time the reload on every stream from just
        before the request is written."""
        marker = self.protocol.event_marker
        keep = len(marker) - 1
        trigger = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        trigger.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = (
            f"POST {trigger_path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        arrived: dict[int, float] = {}
        tails = dict.fromkeys(self.sockets, b"")
        pending = set(self.sockets)
        trigger_answered = float("nan")
        self.drain(0.05)  # nothing queued from before the trigger may count
        try:
            trigger.setblocking(False)
            trigger_fd = trigger.fileno()
            self.epoll.register(trigger_fd, select.EPOLLIN)
            started = time.perf_counter()
            trigger.send(request)
            deadline = started + timeout
            clock = time.perf_counter
            while pending or trigger_answered != trigger_answered:
                left = deadline - clock()
                if left <= 0:
                    break
                for fd, _ in self.epoll.poll(min(left, 1.0)):
                    if fd == trigger_fd:
                        with contextlib.suppress(BlockingIOError):
                            trigger.recv(65536)
                        if trigger_answered != trigger_answered:
                            trigger_answered = clock()
                        continue
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    now = clock()
                    if fd not in pending:
                        if not data:
                            self.epoll.unregister(fd)  # fastapi-reloader ends its stream after a reload
                        continue
                    buffer = tails[fd] + data
                    if marker in buffer:
                        arrived[fd] = now
                        pending.discard(fd)
                    elif not data:
                        self.epoll.unregister(fd)
                        pending.discard(fd)
                    else:
                        tails[fd] = buffer[-keep:]
        finally:
            with contextlib.suppress(OSError):
                self.epoll.unregister(trigger.fileno())
            trigger.close()
        latencies = [(at - started) * 1000 for at in arrived.values()]
        per_worker: dict[str, int] = {}
        for fd in self.sockets:
            worker = self.workers.get(fd, "worker")
            per_worker[worker] = per_worker.get(worker, 0) + 1
        return FanoutResult(
            len(self.sockets), len(arrived), latencies, (trigger_answered - started) * 1000, per_worker
        )

    def close(self) -> None:
        for sock in self.sockets.values():
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()
        self.tails.clear()
        self.ready.clear()
        self.epoll.close()

"""Many open streams: ordinary requests keep being served, a reload reaches them all, and a worker holding
a thousand of them still stops at once.

The streams are raw non-blocking sockets driven by one selector loop in the test process (a thread per
stream would measure the test, not the server). Figures are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import resource
import selectors
import signal
import socket
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from ..conftest import ServerFactory, ServerProcess, cli_published, missing
from .test_cluster import wait_for_workers

pytestmark = [pytest.mark.slow, pytest.mark.redis]

APP = "tests.apps.cluster_app:app"
EVENTS = "/---distreload---/events"
BATCH = 250  # connections opened at once: stays well inside the server's listen backlog
_HELLO_WORKER = re.compile(rb'event: hello\nid: [^\n]*\ndata: \{[^\n]*"worker": ?"([^"]+)"')


@pytest.fixture(autouse=True)
def enough_file_descriptors() -> Iterator[None]:
    """Raise the soft limit on open files to the hard limit (the servers started here inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if wanted < 12000:
        missing(f"about 12000 open files (the hard limit is {hard})")  # fails under CI, skips elsewhere
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class StreamSwarm:
    """Thousands of SSE streams held open by one selector loop, with what each one received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.received: dict[socket.socket, bytearray] = {}
        self.request = (
            f"GET {EVENTS} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        self.closed_by_server = 0

    def open(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            batch = []
            for _ in range(min(BATCH, count - len(self.received))):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", self.port))
                self.received[sock] = bytearray()
                self.selector.register(sock, selectors.EVENT_WRITE)
                batch.append(sock)
            self.pump_until(
                lambda batch=batch: all(b"event: hello" in self.received[s] for s in batch),
                deadline - time.monotonic(),
                "a batch of streams saying hello",
            )

    def pump_until(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        started = time.monotonic()
        while not done():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what}: not within {timeout:.0f} s")
            for key, events in self.selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if events & selectors.EVENT_WRITE:
                    sock.sendall(self.request)  # a few bytes into an empty buffer: never blocks
                    self.selector.modify(sock, selectors.EVENT_READ)
                    continue
                try:
                    chunk = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self.selector.unregister(sock)
                    self.closed_by_server += 1
                    continue
                self.received[sock] += chunk
        return time.monotonic() - started

    def count(self, marker: bytes) -> Counter[int]:
        """How many streams saw ``marker`` how many times."""
        return Counter(bytes(data).count(marker) for data in self.received.values())

    def workers(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for data in self.received.values():
            match = _HELLO_WORKER.search(bytes(data))
            found[match.group(1).decode() if match else "?"] += 1
        return found

    def statuses(self) -> Counter[bytes]:
        return Counter(bytes(data[:12]) for data in self.received.values())

    def close(self) -> None:
        for sock in self.received:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()
        self.selector.close()


@pytest.fixture
def swarm() -> Iterator[Callable[[int], StreamSwarm]]:
    made: list[StreamSwarm] = []

    def make(port: int) -> StreamSwarm:
        made.append(StreamSwarm(port))
        return made[-1]

    yield make
    for one in made:
        one.close()


def request_latencies(server: ServerProcess, count: int = 200) -> list[float]:
    """Milliseconds for ``count`` GETs of /json, each on a new connection as a new page's requests would."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request("GET", "/json")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 200 and b"pid" in body
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def test_5000_streams_on_two_workers_leave_ordinary_requests_fast(
    start_server: ServerFactory, swarm: Callable[[int], StreamSwarm], shared_redis_url: str, namespace: str
) -> None:
    server = start_server(
        APP, workers=2, env={"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    )
    wait_for_workers(shared_redis_url, namespace, 2)
    request_latencies(server, 20)  # warm up both workers
    idle = request_latencies(server)

    streams = swarm(server.port)
    started = time.monotonic()
    streams.open(5000)
    opened_in = time.monotonic() - started
    assert streams.statuses() == Counter({b"HTTP/1.1 200": 5000})
    assert streams.closed_by_server == 0
    per_worker = streams.workers()
    busy = request_latencies(server)

    assert cli_published(shared_redis_url, namespace)["receivers"] == 2
    fan_out = streams.pump_until(lambda: streams.count(b"event: reload")[1] == 5000, 60, "the reload")
    assert streams.count(b"event: reload") == Counter({1: 5000})
    assert streams.closed_by_server == 0
    assert "Traceback" not in server.log()

    idle_p50, idle_p99 = statistics.median(idle), percentile(idle, 0.99)
    busy_p50, busy_p99 = statistics.median(busy), percentile(busy, 0.99)
    print(f"\n5000 streams opened in {opened_in:.1f} s; per worker: {dict(per_worker)}")
    print(f"GET /json idle:         p50 {idle_p50:.2f} ms, p99 {idle_p99:.2f} ms")
    print(f"GET /json 5000 streams: p50 {busy_p50:.2f} ms, p99 {busy_p99:.2f} ms")
    print(f"ratio with/without streams: p50 {busy_p50 / idle_p50:.2f}x, p99 {busy_p99 / idle_p99:.2f}x")
    print(f"one reload reached all 5000 streams within {fan_out * 1000:.0f} ms of the publish returning")
    assert len([worker for worker in per_worker if worker != "?"]) == 2  # both workers hold streams
    assert busy_p50 < 10 * idle_p50


def test_stopping_a_worker_with_1000_open_streams_is_prompt(
    start_server: ServerFactory, swarm: Callable[[int], StreamSwarm], shared_redis_url: str, namespace: str
) -> None:
    env = {"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    server = start_server(APP, env=env)
    wait_for_workers(shared_redis_url, namespace, 1)
    streams = swarm(server.port)
    streams.open(1000)
    assert streams.statuses() == Counter({b"HTTP/1.1 200": 1000})

    # Keep reading while the server stops, as browsers would: a client that reads nothing is another test.
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    took = streams.pump_until(lambda: server.process.poll() is not None, 15, "the server exiting")
    streams.pump_until(lambda: streams.closed_by_server == 1000, 10, "every stream closed")
    print(
        f"\nSIGTERM to exit with 1000 open streams: {took:.2f} s "
        f"({time.monotonic() - started:.2f} s until every stream was closed)"
    )
    # uvicorn finishes its shutdown, then exits by the signal it received.
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()
    assert "Finished server process" in server.log() and "Traceback" not in server.log()
    assert streams.count(b"event: shutdown") == Counter({1: 1000})
    assert took < 3, server.log()

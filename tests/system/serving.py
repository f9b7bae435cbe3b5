"""The checks every ASGI server and framework must pass, shared by test_servers.py and test_frameworks.py.

A configuration is one app (tests/apps/...) on one server with some workers. One server process serves
every check of its configuration: the page gets exactly one tag, JSON is untouched, a stream receives every
reload published long after its heartbeats began, and SIGTERM with streams open stops the server within
2 s, each stream ended with ``event: shutdown``. The figures measured are printed (run with ``-s``).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distreload import send_reload_signal

from ..conftest import ServerLauncher, ServerProcess, missing, unique_namespace
from ..sse import SSEReader
from .test_cluster import wait_for_workers

PREFIX = "/---distreload---"
HEARTBEAT_INTERVAL = 0.3
# The tag before </body>, with nothing else changed: the endpoint, the script's version, the cluster's
# version and the build the page was rendered at.
TAG = re.compile(
    rb'<script src="/---distreload---/client\.js\?v=[0-9a-f]{16}" data-distreload="/---distreload---" '
    rb'data-distreload-version="[0-9a-f]{16}-\d+" data-distreload-build="[0-9a-f]{12}" async></script>'
    rb"(?=</body>)"
)
STOP_BOUND = 2.0  # seconds from SIGTERM to the server gone (the bound)
SERVERS_WITHOUT_LIFESPAN = {"daphne"}
# What uvicorn, hypercorn and granian say when an app fails the lifespan protocol.
LIFESPAN_COMPLAINTS = re.compile(r".*(?:lifespan' protocol|Lifespan error|Lifespan errored).*")


@dataclass(frozen=True)
class Configuration:
    """One app on one server: ``processes`` is how many worker processes serve it."""

    name: str
    app: str
    server: str
    workers: int = 1
    extra_args: tuple[str, ...] = ()

    @property
    def processes(self) -> int:
        return max(self.workers, 1)


@dataclass
class Served:
    configuration: Configuration
    server: ServerProcess
    redis_url: str
    namespace: str
    readers: list[SSEReader] = field(default_factory=list)

    def open_reader(self) -> SSEReader:
        reader = SSEReader(self.server.port)
        self.readers.append(reader)
        return reader


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    def comparable_headers(self, *ignored: str) -> list[tuple[str, str]]:
        skip = {"date", *ignored}
        return [(key.lower(), value) for key, value in self.headers if key.lower() not in skip]


def get(port: int, path: str, timeout: float = 10) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return Response(answer.status, answer.getheaders(), answer.read())
    finally:
        connection.close()


def worker_of(reader: SSEReader) -> str:
    return str(reader.wait_for("hello")[0].json()["worker"])


def every_worker_answering(served: Served, path: str = PREFIX, key: str = "worker") -> dict[str, Any]:
    """Ask ``path`` over fresh connections until each worker process has answered; the answers by
    worker. (A server without lifespan, daphne, starts distreload on a worker's first request.)"""
    answers: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while len(answers) < served.configuration.processes:
        assert time.monotonic() < deadline, f"only {sorted(answers)} answered:\n{served.server.log()}"
        answer = get(served.server.port, path)
        assert answer.status == 200, answer
        found = json.loads(answer.body)
        answers[str(found[key])] = found
    return answers


def readers_on_every_worker(served: Served, per_worker: int = 2, attempts: int = 200) -> list[SSEReader]:
    """Open streams until each worker process holds ``per_worker`` of them (the kernel hands a shared
    listening socket's connections out unevenly)."""
    wanted = served.configuration.processes
    counts: dict[str, int] = {}
    opened: list[SSEReader] = []
    for _ in range(attempts):
        reader = served.open_reader()
        worker = worker_of(reader)
        if counts.get(worker, 0) >= per_worker:
            reader.close()
            served.readers.remove(reader)
            continue
        counts[worker] = counts.get(worker, 0) + 1
        opened.append(reader)
        if len(counts) == wanted and all(count >= per_worker for count in counts.values()):
            return opened
    raise AssertionError(f"streams reached {counts}, wanted {per_worker} on each of {wanted} workers")


@contextlib.contextmanager
def serving(
    configuration: Configuration,
    directory: Path,
    redis_url: str,
    *,
    cwd: Path | None = None,
    extra_args: tuple[str, ...] = (),
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
) -> Iterator[Served]:
    """``configuration`` served on a free port with Redis and a namespace of its own, every worker
    subscribed; every process and stream is gone afterwards."""
    launcher = ServerLauncher(directory)
    namespace = unique_namespace()
    env = {
        "DISTRELOAD_REDIS_URL": redis_url,
        "DISTRELOAD_NAMESPACE": namespace,
        "TEST_HEARTBEAT_INTERVAL": str(heartbeat_interval),
    }
    readers: list[SSEReader] = []
    try:
        server = launcher.start(
            configuration.app,
            server=configuration.server,
            workers=configuration.workers,
            env=env,
            extra_args=[*configuration.extra_args, *extra_args],
            cwd=cwd,
        )
        served = Served(configuration, server, redis_url, namespace, readers)
        if configuration.server in SERVERS_WITHOUT_LIFESPAN:
            every_worker_answering(served)  # distreload starts on a worker's first request there
        # Elsewhere every worker subscribes at start-up, before any request: through the lifespan, which
        # distreload answers itself for an app that refuses it (Django).
        wait_for_workers(redis_url, namespace, configuration.processes)
        complaints = LIFESPAN_COMPLAINTS.findall(server.log())
        assert not complaints, server.log()
        every_worker_answering(served)
        yield served
    finally:
        for reader in readers:
            reader.close()
        launcher.stop_all()


# --- the checks ------------------------------------------------------------------------------------------


def check_page_gets_exactly_one_tag(served: Served, expected_page: bytes) -> None:
    port = served.server.port
    page, plain = get(port, "/page"), get(port, "/plain/page")
    assert (page.status, plain.status) == (200, 200)
    assert plain.body == expected_page
    assert page.body.count(b"data-distreload=") == 1, page.body
    tag = TAG.search(page.body)
    assert tag is not None, page.body
    assert page.body[: tag.start()] + page.body[tag.end() :] == expected_page
    # The framework's own headers are kept; only the length changed, to the new body's.
    assert page.comparable_headers("content-length") == plain.comparable_headers("content-length")
    length = page.header("content-length")
    assert length is None or int(length) == len(page.body)
    print(f"\n{served.configuration.name}: one tag, {len(page.body) - len(plain.body)} bytes added")


def check_json_is_untouched(served: Served, expected_json: bytes) -> None:
    port = served.server.port
    answer, plain = get(port, "/json"), get(port, "/plain/json")
    assert (answer.status, plain.status) == (200, 200)
    assert answer.body == plain.body == expected_json
    assert answer.comparable_headers() == plain.comparable_headers()
    assert (answer.header("content-type") or "").startswith("application/json")


def check_late_reloads_all_arrive(served: Served) -> None:
    """Reloads published a second and more after the heartbeats began, each a heartbeat apart, reach
    every stream on every worker; a client that left meanwhile is dropped, and deafens no one."""
    readers = readers_on_every_worker(served)
    leaving = readers_on_every_worker(served, per_worker=1)
    first_beats = [reader.wait_for_heartbeats(2)[0] for reader in readers]
    for reader in leaving:
        reader.close()  # gone without a word: the next write to it fails, or the server says disconnect
    time.sleep(max(0.0, max(first_beats) + 1.0 - time.monotonic()))
    versions = []
    for _ in range(3):
        result = send_reload_signal(redis_url=served.redis_url, namespace=served.namespace)
        assert result.receivers == served.configuration.processes
        versions.append(str(result.version))
        time.sleep(HEARTBEAT_INTERVAL * 1.5)
    published_after = min(time.monotonic() - beat for beat in first_beats) - HEARTBEAT_INTERVAL * 4.5
    for reader in readers:
        assert [event.id for event in reader.wait_for("reload", 3)] == versions, reader.events
        beats = len(reader.heartbeats)
        reader.wait_for_heartbeats(beats + 2)  # still served after the reloads: not dropped, not deaf
    time.sleep(HEARTBEAT_INTERVAL)
    assert all(len(reader.of("reload")) == 3 for reader in readers)
    open_by_worker: dict[str, int] = {}
    for reader in readers:
        open_by_worker[worker_of(reader)] = open_by_worker.get(worker_of(reader), 0) + 1
    streams = {worker: info["streams"] for worker, info in every_worker_answering(served).items()}
    assert streams == open_by_worker, "the streams of clients that left were not all dropped"
    print(
        f"\n{served.configuration.name}: {len(readers)} streams on {len(open_by_worker)} workers got all 3 "
        f"reloads, the first published {published_after:.1f} s after their heartbeats began; "
        f"{len(leaving)} that left were dropped"
    )


def check_writes_ran_in_their_own_requests(served: Served) -> None:
    """Every message written to a stream (heartbeats, reloads, farewells) was sent in the context of the
    stream's own request (tests/apps/server_app.py's probe counts those that were not)."""
    probes = every_worker_answering(served, "/probe", key="pid")
    assert all(probe["writes"] > 0 and probe["foreign"] == 0 for probe in probes.values()), probes


def check_sigterm_stops_promptly(served: Served) -> float:
    """SIGTERM with streams open on every worker: the server is gone within STOP_BOUND, every stream
    ended properly with ``event: shutdown`` first."""
    readers_on_every_worker(served)
    readers = [reader for reader in served.readers if not reader.closed.is_set()]
    signalled = time.monotonic()
    took = served.server.stop(signal.SIGTERM, timeout=15)
    log = served.server.log()
    assert took < STOP_BOUND, f"{served.configuration.name} took {took:.2f} s to stop:\n{log[-3000:]}"
    for reader in readers:
        assert reader.closed.wait(2), reader.events
        assert [event.event for event in reader.events][-1:] == ["shutdown"], (reader.events, log[-3000:])
        assert reader.complete, f"a stream was cut, not ended:\n{log[-3000:]}"
    left = served.server.leftovers()
    assert left == [], f"still running: {left}\n{log[-3000:]}"
    ended = max(reader.closed_at or signalled for reader in readers) - signalled
    print(
        f"\n{served.configuration.name}: {len(readers)} streams open, SIGTERM to the last stream ended "
        f"{ended:.2f} s, to the server gone {took:.2f} s"
    )
    return took


@dataclass(frozen=True)
class StopSignal:
    """How a server is told to stop: ``group`` sends the signal to its whole process group, as systemd
    (``KillMode=control-group``) and a terminal's Ctrl-C do; else to its main process alone, as
    ``docker stop`` and Kubernetes do."""

    name: str
    signum: int
    group: bool


STOP_SIGNALS = [
    StopSignal("sigterm-master", signal.SIGTERM, group=False),
    StopSignal("sigterm-group", signal.SIGTERM, group=True),
    StopSignal("sigint-group", signal.SIGINT, group=True),
]


def stop_and_time(server: ServerProcess, how: StopSignal, timeout: float = 15.0) -> float:
    """Send ``how`` and wait until every process of the server is gone; seconds taken (``timeout`` and
    more when it had to be killed)."""
    import psutil

    main = psutil.Process(server.process.pid)
    processes = [main, *main.children(recursive=True)]
    started = time.monotonic()
    if how.group:
        os.killpg(server.process.pid, how.signum)
    else:
        server.process.send_signal(how.signum)
    try:
        server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill_group()
        server.process.wait(5)
        return time.monotonic() - started
    deadline = started + timeout
    while time.monotonic() < deadline:
        if not any(_alive(process) for process in processes[1:]):
            break
        time.sleep(0.01)
    return time.monotonic() - started


def _alive(process: object) -> bool:
    import psutil

    assert isinstance(process, psutil.Process)
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def require(module: str) -> None:
    """The framework a configuration needs (conftest's rule: skip locally, fail under CI)."""
    if importlib.util.find_spec(module) is None:
        missing(f"the {module} package")

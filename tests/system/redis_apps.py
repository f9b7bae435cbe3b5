"""Real app servers on a Redis topology, seen through real event streams: what the Redis system tests
(test_redis_cluster.py, test_redis_sentinel.py, test_redis_acl.py) measure with.

A ``Fleet`` is a few uvicorn processes serving tests.apps.cluster_app, each given its own Redis URL (any
cluster node, a Sentinel URL, an ACL user's URL) through DISTRELOAD_REDIS_URL, with SSE readers on every
worker process. ``Ledger`` records publishes (what was published, when, with what result) and checks what
each stream received against them: a reload counts as delivered to a stream when that stream received,
after the publish started, a reload of the same or a later version.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from distreload.protocol import ClusterVersion

from ..conftest import ServerFactory, ServerProcess, wait_for_port
from ..sse import SSEReader

APP = "tests.apps.cluster_app:app"
PREFIX = "/---distreload---"
TOKEN = "fleet-token"


def info(server: ServerProcess) -> dict[str, object]:
    """The reload endpoint's readiness answer, from whichever worker the kernel hands the connection."""
    with urllib.request.urlopen(server.base_url + PREFIX, timeout=10) as response:
        answer: dict[str, object] = json.load(response)
        return answer


def version_of(text: str | None) -> ClusterVersion:
    parsed = ClusterVersion.parse(text)
    assert parsed is not None, f"not a version: {text!r}"
    return parsed


@dataclass
class Fleet:
    """App servers (each with its own Redis URL), and SSE readers on every one of their workers.

    A thread notes when each event arrived (the readers keep no times), so that how long a reload took to
    reach every stream is measured, not how long the test waited before it looked.
    """

    servers: list[ServerProcess]
    readers: list[SSEReader]
    workers: list[str]  # host:pid of every worker process
    reader_worker: dict[int, str]  # id(reader) -> the worker it is connected to
    arrivals: list[list[float]] = field(default_factory=list)  # per reader: when each event arrived

    def __post_init__(self) -> None:
        self.arrivals = [[] for _ in self.readers]
        threading.Thread(target=self._note_arrivals, name="fleet arrivals", daemon=True).start()

    def _note_arrivals(self) -> None:
        while not all(reader.closed.is_set() for reader in self.readers):
            now = time.monotonic()
            for reader, times in zip(self.readers, self.arrivals, strict=True):
                times.extend([now] * (len(reader.events) - len(times)))
            time.sleep(0.005)

    def ids(self, reader: SSEReader) -> list[str | None]:
        return [event.id for event in reader.of("reload")]

    def received(self) -> dict[str, list[str | None]]:
        """The reload versions each stream received, keyed by 'worker #n'."""
        return {
            f"{self.reader_worker[id(reader)]} #{index}": self.ids(reader)
            for index, reader in enumerate(self.readers)
        }

    def wait_all_reach(self, version: ClusterVersion, since: Sequence[int], timeout: float) -> float:
        """Wait until every stream received, after its event number ``since[i]``, a reload of ``version``
        or later; returns when the last of them arrived (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                _reached(reader, start, version) for reader, start in zip(self.readers, since, strict=True)
            ]
            missing = [index for index in found if index is None]
            arrived = [
                times[index]
                for times, index in zip(self.arrivals, found, strict=True)
                if index is not None and index < len(times)
            ]
            if not missing and len(arrived) == len(self.readers):
                return max(arrived)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(missing)} of {len(self.readers)} streams did not receive {version} within "
                    f"{timeout:g} s: {self.received()}"
                )
            time.sleep(0.02)

    def marks(self) -> list[int]:
        """How many events each stream has received so far (what ``since`` takes)."""
        return [len(reader.events) for reader in self.readers]

    def logs(self) -> str:
        return "\n".join(server.log() for server in self.servers)

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.logs().splitlines() if text in line]


def _reached(reader: SSEReader, start: int, version: ClusterVersion) -> int | None:
    """The number of the first event from ``start`` on that is a reload of ``version`` or later."""
    for index, event in enumerate(reader.events[start:], start):
        if event.event != "reload" or event.id is None:
            continue
        seen = ClusterVersion.parse(event.id)
        if seen is not None and seen.epoch == version.epoch and seen.number >= version.number:
            return index
    return None


def start_fleet(
    start_server: ServerFactory,
    open_sse: Callable[..., SSEReader],
    urls: Sequence[str],
    namespace: str,
    *,
    workers: int = 2,
    env: dict[str, str] | None = None,
    connected_within: float = 30.0,
) -> Fleet:
    """One uvicorn server per URL (started in parallel), ``workers`` processes each; returns once every
    worker is subscribed and holds at least one stream."""
    servers = [
        start_server(
            APP,
            workers=workers,
            env={
                "DISTRELOAD_REDIS_URL": url,
                "DISTRELOAD_NAMESPACE": namespace,
                "DISTRELOAD_TOKEN": TOKEN,
                **(env or {}),
            },
            wait=False,
        )
        for url in urls
    ]
    for server in servers:
        try:
            wait_for_port(server.port, 60, server.process)
        except Exception:
            raise RuntimeError(f"uvicorn did not start:\n{server.log()}") from None
    readers: list[SSEReader] = []
    reader_worker: dict[int, str] = {}
    all_workers: list[str] = []
    for server in servers:
        connected = _wait_connected(server, workers, connected_within)
        all_workers += connected
        seen: set[str] = set()
        for _ in range(300):
            reader = open_sse(server.port)
            worker = str(reader.wait_for("hello")[0].json()["worker"])
            readers.append(reader)
            reader_worker[id(reader)] = worker
            seen.add(worker)
            if seen == set(connected):
                break
        else:
            raise AssertionError(f"streams reached only {sorted(seen)} of {connected}")
    return Fleet(servers, readers, sorted(all_workers), reader_worker)


def _wait_connected(server: ServerProcess, workers: int, timeout: float) -> list[str]:
    """Ask the readiness endpoint until each of the server's workers said it is subscribed."""
    connected: set[str] = set()
    answered: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(connected) < workers:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(connected)} of {workers} workers subscribed (answered: {sorted(answered)}):\n"
                f"{server.log()[-3000:]}"
            )
        answer = info(server)
        answered.add(str(answer["worker"]))
        if answer["redis_connected"]:
            connected.add(str(answer["worker"]))
        else:
            time.sleep(0.05)
    return sorted(connected)


def trigger(server: ServerProcess) -> dict[str, object]:
    """Publish from inside one worker (send_reload_signal_async, the worker's own Redis link)."""
    request = urllib.request.Request(server.base_url + "/trigger", method="POST")
    with urllib.request.urlopen(request, timeout=20) as response:
        answer: dict[str, object] = json.load(response)
        return answer


def publish_over_http(server: ServerProcess) -> dict[str, object]:
    """POST <prefix>/publish with the fleet's token: the endpoint CI runners use."""
    request = urllib.request.Request(
        server.base_url + PREFIX + "/publish",
        data=b'{"kind": "reload"}',
        method="POST",
        headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        answer: dict[str, object] = json.load(response)
        return answer


@dataclass
class Attempt:
    """One publish: when it started, by which path, and what came of it."""

    started: float
    path: str
    marks: list[int]
    version: ClusterVersion | None = None
    error: str | None = None


@dataclass
class Ledger:
    """Publishes made while something happens to Redis, and the check that none was silently lost."""

    fleet: Fleet
    attempts: list[Attempt] = field(default_factory=list)

    def publish(self, path: str, publish: Callable[[], dict[str, object]]) -> Attempt:
        attempt = Attempt(time.monotonic(), path, self.fleet.marks())
        try:
            attempt.version = version_of(str(publish()["version"]))
        except urllib.error.HTTPError as exc:
            with exc:
                attempt.error = f"HTTP {exc.code}: {exc.read(300).decode(errors='replace')}"
        except Exception as exc:
            attempt.error = f"{exc.__class__.__name__}: {str(exc)[:300]}"
        self.attempts.append(attempt)
        return attempt

    def keep_publishing(
        self, paths: dict[str, Callable[[], dict[str, object]]], every: float
    ) -> Callable[[], None]:
        """Publish in a thread, taking turns between ``paths``, until the returned function is called."""
        stop = threading.Event()
        names = list(paths)

        def run() -> None:
            turn = 0
            while not stop.is_set():
                name = names[turn % len(names)]
                self.publish(name, paths[name])
                turn += 1
                stop.wait(every)

        thread = threading.Thread(target=run, name="ledger", daemon=True)
        thread.start()

        def finish() -> None:
            stop.set()
            thread.join(60)

        return finish

    @property
    def succeeded(self) -> list[Attempt]:
        return [a for a in self.attempts if a.version is not None]

    @property
    def failed(self) -> list[Attempt]:
        return [a for a in self.attempts if a.error is not None]

    def assert_none_lost(self, timeout: float) -> None:
        """Every publish that reported success reached every stream (itself, or a later reload that came
        after it started); the ones that failed said so (that is the loud failure)."""
        for attempt in self.succeeded:
            assert attempt.version is not None
            self.fleet.wait_all_reach(attempt.version, attempt.marks, timeout)

    def summary(self, since: float) -> str:
        """Each publish (time from ``since``, path, outcome), then what each stream received."""
        rows = []
        for a in self.attempts:
            outcome = str(a.version) if a.version is not None else f"FAILED ({a.error})"
            rows.append(f"{a.started - since:+6.2f}s {a.path:>8}: {outcome}")
        for stream, ids in self.fleet.received().items():
            numbers = [str(version_of(i).number) for i in ids]
            rows.append(f"stream of {stream}: {len(ids)} reloads, versions {' '.join(numbers)}")
        return "\n".join(rows)


# --- The ACL rules the README documents ------------------------------------------------------------------


# What the scripts run (TYPE, HMGET, DEL, HSET, HGET, HINCRBY and a publish) is checked too.
SCRIPTS = "+eval +type +hmget +hget +hset +hincrby +del"
# Plain pub/sub on one server; sharded pub/sub, the slot map (CLUSTER SLOTS, COMMAND) and ASK on a cluster.
ONE_SERVER = "+subscribe +publish"
CLUSTER = "+ssubscribe +spublish +cluster|slots +command +asking"


def worker_rule(namespace: str, *, cluster: bool = False) -> list[str]:
    """ACL SETUSER arguments (after the user's name) for a worker: what the README gives. ``+set`` (with
    the presence keys) is the one optional right."""
    commands = f"+ping {SCRIPTS} +set {CLUSTER if cluster else ONE_SERVER}"
    return [
        "resetkeys",
        "resetchannels",
        "-@all",
        *commands.split(),
        f"~distreload:{{{namespace}}}:state",
        f"%W~distreload:{{{namespace}}}:presence:*",
        f"&distreload:{{{namespace}}}:reload",
        f"&distreload:{{{namespace}}}:reload:observers",
    ]


def cli_rule(namespace: str, *, cluster: bool = False) -> list[str]:
    """ACL SETUSER arguments for ``distreload publish``, ``status`` and ``listen``."""
    commands = f"{SCRIPTS} +scan +mget {CLUSTER if cluster else ONE_SERVER}"
    return [
        "resetkeys",
        "resetchannels",
        "-@all",
        *commands.split(),
        f"~distreload:{{{namespace}}}:state",
        f"%R~distreload:{{{namespace}}}:presence:*",
        f"&distreload:{{{namespace}}}:reload",
        f"&distreload:{{{namespace}}}:reload:observers",
    ]


def pages_worker_rule(namespace: str) -> list[str]:
    """What a worker's rule gains for page reports (``publish --wait``, ``status --pages``, the fleet page):
    its round summaries and page table, and the inboxes of the workers that share its port."""
    kinds = ("wait", "pages", "inbox")
    keys = [f"~distreload:{{{namespace}}}:{kind}:*" for kind in kinds]
    commands = ["+hset", "+expire", "+set", "+del", "+rpush", "+ltrim", "+llen", "+lrange", "+multi", "+exec"]
    return [*commands, *keys]


def pages_reader_rule(namespace: str) -> list[str]:
    """What reads the page reports gains: the command line, and a worker that serves the fleet page or
    ``POST <prefix>/publish`` with a wait (which also reads the presence keys, as ``status`` does)."""
    keys = [f"~distreload:{{{namespace}}}:{kind}:*" for kind in ("wait", "pages")]
    return ["+hgetall", "+scan", "+mget", *keys, f"%R~distreload:{{{namespace}}}:presence:*"]


def set_user(nodes: Sequence[object], name: str, password: str, rule: Sequence[str]) -> None:
    """Create (or replace) an ACL user on every node (ACL rules are not replicated)."""
    for node in nodes:
        node.command("ACL", "DELUSER", name)  # type: ignore[attr-defined]
        node.command("ACL", "SETUSER", name, "on", f">{password}", *rule)  # type: ignore[attr-defined]


def with_user(url: str, user: str, password: str) -> str:
    """A node's redis:// URL with this user's credentials."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[-1]}"

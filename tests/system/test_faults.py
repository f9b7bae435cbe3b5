"""Real faults against real processes: Redis down, restarted, frozen, cut off; garbage on the channel.

Every test owns its redis-server (the ``own_redis`` fixture, on a free port) and its uvicorn processes, so
it may stop, freeze or flood them. Figures worth knowing (how fast a fault is noticed, how long recovery
takes) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from distreload.protocol import MAX_MESSAGE_BYTES, ClusterVersion, channel_name, state_key

from ..conftest import RedisProcess, ServerFactory, ServerProcess, cli_publish
from ..sse import SSEReader
from ..waiting import wait_until
from .test_cluster import readers_on_every_worker, wait_for_workers

pytestmark = [pytest.mark.redis, pytest.mark.slow]

APP = "tests.apps.cluster_app:app"
PREFIX = "/---distreload---"


def readers_everywhere(
    open_sse: Callable[..., SSEReader], server: ServerProcess, workers: int = 2
) -> list[SSEReader]:
    """SSE readers on every worker process of ``server``.

    A worker accepts connections only after its start-up (which subscribes first), and the kernel hands a
    shared listening socket's connections out unevenly: wait until each worker has answered, then allow
    many tries."""
    every_worker_answering(server, workers)
    return readers_on_every_worker(open_sse, server, workers, attempts=200)


def every_worker_answering(server: ServerProcess, workers: int, timeout: float = 30) -> None:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {sorted(seen)} of {workers} workers answered"
        with urllib.request.urlopen(server.base_url + PREFIX, timeout=10) as response:
            seen.add(json.load(response)["worker"])
        time.sleep(0.01)


LOST = "lost the connection to"
CANNOT_REACH = "cannot reach"
NOT_REACHABLE_YET = "not reachable yet"
BACK = "connected to Redis at"
IGNORED = "ignored a message"


# --- helpers -----------------------------------------------------------------------------------------------


def publish_ok(redis_url: str, namespace: str) -> dict[str, object]:
    done = cli_publish(redis_url, namespace)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def publish_now(redis_url: str, namespace: str) -> dict[str, object]:
    """Publish from this process (no interpreter to start first: for races with a reconnect)."""
    from distreload import send_reload_signal

    result = send_reload_signal(redis_url=redis_url, namespace=namespace)
    return {"version": str(result.version), "receivers": result.receivers}


def worker_of(reader: SSEReader) -> str:
    return str(reader.wait_for("hello")[0].json()["worker"])


def log_count(servers: list[ServerProcess], worker: str, text: str) -> int:
    """How many lines of the servers' logs mention ``worker`` and ``text``."""
    return sum(
        1
        for server in servers
        for line in server.log().splitlines()
        if f"worker {worker}" in line and text in line
    )


def reload_ids(reader: SSEReader) -> list[str | None]:
    return [event.id for event in reader.of("reload")]


def info(server: ServerProcess) -> dict[str, object]:
    with urllib.request.urlopen(server.base_url + PREFIX, timeout=10) as response:
        answer: dict[str, object] = json.load(response)
        return answer


def versions_by_worker(server: ServerProcess, workers: int, attempts: int = 300) -> dict[str, str]:
    """Ask the info endpoint over fresh connections until every worker process of ``server`` answered."""
    seen: dict[str, str] = {}
    for _ in range(attempts):
        answer = info(server)
        seen[str(answer["worker"])] = str(answer["version"])
        if len(seen) == workers:
            return seen
    raise AssertionError(f"only {len(seen)} of {workers} workers answered")


def page_is_served(server: ServerProcess) -> bool:
    with urllib.request.urlopen(server.base_url + "/", timeout=10) as response:
        return response.status == 200 and b"data-distreload" in response.read()


def shared_state(redis_url: str, namespace: str) -> ClusterVersion:
    with redis.Redis.from_url(redis_url) as client:
        epoch, number = client.hmget(state_key(namespace), ["epoch", "version"])
    return ClusterVersion(epoch.decode(), int(number))


class Cluster:
    """Two uvicorn processes x two workers on one Redis, with SSE readers on every worker."""

    def __init__(
        self,
        start_server: ServerFactory,
        open_sse: Callable[..., SSEReader],
        redis_url: str,
        namespace: str,
        *,
        wait: bool = True,
    ) -> None:
        env = {"DISTRELOAD_REDIS_URL": redis_url, "DISTRELOAD_NAMESPACE": namespace}
        self.redis_url, self.namespace = redis_url, namespace
        self.servers = [start_server(APP, workers=2, env=env) for _ in range(2)]
        if wait:
            wait_for_workers(redis_url, namespace, 4)
        self.readers = [r for server in self.servers for r in readers_everywhere(open_sse, server)]
        self.workers = sorted({worker_of(reader) for reader in self.readers})
        assert len(self.workers) == 4

    def assert_reloads(self, expected: list[str | None], settle: float = 0.5) -> None:
        """Every stream saw exactly these reloads, each once, in order."""
        for reader in self.readers:
            if expected:
                reader.wait_for("reload", len(expected), timeout=20)
        time.sleep(settle)
        for reader in self.readers:
            assert reload_ids(reader) == expected, reader.events

    def log_count(self, worker: str, text: str) -> int:
        return log_count(self.servers, worker, text)

    def wait_for_log(self, text: str, timeout: float) -> float:
        return wait_until(
            lambda: all(self.log_count(w, text) >= 1 for w in self.workers),
            timeout,
            f"every worker logging {text!r}",
        )


@pytest.fixture
def cluster(
    start_server: ServerFactory, open_sse: Callable[..., SSEReader], own_redis: RedisProcess, namespace: str
) -> Cluster:
    return Cluster(start_server, open_sse, own_redis.url, namespace)


class Partition:
    """A TCP relay in front of Redis that can be cut: while cut, it answers nothing and drops what it reads,
    and new connections are accepted but never relayed, like a host whose network went away.

    ``heal`` closes every connection made before or during the cut (they are dead, as after a real
    partition) and relays new ones again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.cut_off = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._sockets.append(client)
            if self.cut_off.is_set():
                continue  # held open and never answered
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.append(upstream)
            for source, destination in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, destination), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, destination: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self.cut_off.is_set():
                continue  # lost on the way
            try:
                destination.sendall(data)
            except OSError:
                break
        for sock in (source, destination):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off.set()

    def heal(self) -> None:
        with self._lock:
            stale, self._sockets = self._sockets, []
        self.cut_off.clear()
        for sock in stale:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._stopping.set()
        # The accept thread first: a worker reconnecting meanwhile would otherwise be accepted after heal()
        # took the list of sockets to close, and its two sockets would be left open.
        self._threads[0].join(5)
        self.heal()
        for thread in self._threads[1:]:
            thread.join(5)
        self.listener.close()


@pytest.fixture
def partition(own_redis: RedisProcess) -> Iterator[Partition]:
    relay = Partition(own_redis.port)
    try:
        yield relay
    finally:
        relay.close()


# --- Redis down, restarted, killed ----------------------------------------------------------------------


def test_redis_down_at_start_pages_served_and_cluster_works_once_it_is_up(
    start_server: ServerFactory, open_sse: Callable[..., SSEReader], own_redis: RedisProcess, namespace: str
) -> None:
    own_redis.stop()
    env = {"DISTRELOAD_REDIS_URL": own_redis.url, "DISTRELOAD_NAMESPACE": namespace}
    servers = []
    for _ in range(2):
        started = time.monotonic()
        server = start_server(APP, workers=2, env=env)
        wait_until(lambda server=server: _answers(server), 30, "the app answering with Redis down")
        startup = time.monotonic() - started
        print(f"\nRedis down: a server with 2 workers served its first page {startup:.2f} s after its start")
        assert startup < 15  # the broker waits only briefly (2 s) for Redis before serving
        servers.append(server)
    for server in servers:
        assert page_is_served(server)
        assert info(server)["redis_connected"] is False

    readers = [r for server in servers for r in readers_everywhere(open_sse, server)]
    workers = {worker_of(reader) for reader in readers}
    assert len(workers) == 4

    own_redis.start()
    took = wait_until(lambda: _subscribers(own_redis.url, namespace) == 4, 20, "every worker subscribed")
    print(f"Redis up: all 4 workers subscribed {took:.2f} s later")
    result = publish_ok(own_redis.url, namespace)
    assert result["receivers"] == 4
    for reader in readers:
        reader.wait_for("reload", timeout=10)
    time.sleep(0.5)
    assert all(reload_ids(reader) == [result["version"]] for reader in readers)

    for worker in workers:  # one line for the outage, one for the recovery, however many retries
        assert log_count(servers, worker, CANNOT_REACH) + log_count(servers, worker, NOT_REACHABLE_YET) == 1
        assert log_count(servers, worker, BACK) == 1


def _answers(server: ServerProcess) -> bool:
    try:
        with urllib.request.urlopen(server.base_url + "/json", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _subscribers(redis_url: str, namespace: str) -> int:
    channel = channel_name(namespace)
    with redis.Redis.from_url(redis_url) as client:
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])


def test_redis_restart_without_persistence_recovers_without_a_reload(
    cluster: Cluster, own_redis: RedisProcess
) -> None:
    first = publish_ok(cluster.redis_url, cluster.namespace)
    cluster.assert_reloads([str(first["version"])])

    own_redis.stop()
    cluster.wait_for_log(LOST, 10)
    for server in cluster.servers:  # workers keep serving while Redis is away
        assert page_is_served(server)
    time.sleep(3)  # several reconnect attempts while it is down
    own_redis.start()
    took = wait_until(lambda: _subscribers(cluster.redis_url, cluster.namespace) == 4, 20, "resubscribed")
    print(f"\nRedis restarted: all 4 workers resubscribed {took:.2f} s after it came back")

    # The workers put back the state the restart erased: same epoch, same version, nothing to reload.
    assert str(shared_state(cluster.redis_url, cluster.namespace)) == first["version"]
    cluster.assert_reloads([str(first["version"])], settle=1.0)

    second = publish_ok(cluster.redis_url, cluster.namespace)
    assert second["receivers"] == 4
    assert ClusterVersion.parse(str(second["version"])) == ClusterVersion(
        str(first["version"]).split("-")[0], 2
    )
    cluster.assert_reloads([str(first["version"]), str(second["version"])])

    for worker in cluster.workers:
        assert cluster.log_count(worker, LOST) == 1
        assert cluster.log_count(worker, CANNOT_REACH) == 0  # the retries themselves log nothing
        assert cluster.log_count(worker, BACK) == 1


def test_publish_racing_a_redis_restart_reaches_every_stream_exactly_once(
    cluster: Cluster, own_redis: RedisProcess
) -> None:
    own_redis.stop()
    own_redis.start()
    # Published before the workers are back: a new epoch, received by none or some of them over pub/sub;
    # the others must get it from the state they read when they resubscribe.
    result = publish_now(cluster.redis_url, cluster.namespace)
    print(f"\npublish right after a restart: {result['receivers']} of 4 workers had resubscribed")
    cluster.assert_reloads([str(result["version"])], settle=1.0)
    wait_until(lambda: _subscribers(cluster.redis_url, cluster.namespace) == 4, 20, "resubscribed")
    after = publish_ok(cluster.redis_url, cluster.namespace)
    assert after["receivers"] == 4
    cluster.assert_reloads([str(result["version"]), str(after["version"])])


def test_killed_subscriptions_come_back_and_lose_nothing(cluster: Cluster, own_redis: RedisProcess) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        killed = client.client_kill_filter(_type="pubsub")
        result = publish_now(cluster.redis_url, cluster.namespace)  # at once: pub/sub alone would lose it
    assert killed == 4
    print(f"\nCLIENT KILL TYPE pubsub, then publish at once: {result['receivers']} of 4 received it live")
    cluster.assert_reloads([str(result["version"])], settle=1.0)
    wait_until(lambda: _subscribers(cluster.redis_url, cluster.namespace) == 4, 20, "resubscribed")
    for worker in cluster.workers:
        assert cluster.log_count(worker, LOST) == 1
        assert cluster.log_count(worker, BACK) == 1


# --- Redis frozen, connection half-open -----------------------------------------------------------------

FREEZE_SECONDS = 10


@pytest.mark.parametrize("how", ["sigstop", "debug-sleep", "client-pause"])
def test_frozen_redis_is_detected_by_the_ping_deadline_and_recovered(
    start_server: ServerFactory,
    open_sse: Callable[..., SSEReader],
    own_redis: RedisProcess,
    namespace: str,
    how: str,
) -> None:
    if how == "debug-sleep":  # Redis 7 refuses DEBUG unless told otherwise
        own_redis.stop()
        own_redis.extra_args = ["--enable-debug-command", "local"]
        own_redis.start()
    cluster = Cluster(start_server, open_sse, own_redis.url, namespace)
    first = publish_ok(cluster.redis_url, cluster.namespace)
    cluster.assert_reloads([str(first["version"])])
    time.sleep(1)

    sleeper: threading.Thread | None = None
    frozen_at = time.monotonic()
    if how == "sigstop":
        own_redis.freeze()
    elif how == "debug-sleep":

        def sleep_redis() -> None:
            with redis.Redis.from_url(own_redis.url, socket_timeout=FREEZE_SECONDS + 10) as client:
                client.execute_command("DEBUG", "SLEEP", FREEZE_SECONDS)

        sleeper = threading.Thread(target=sleep_redis)
        sleeper.start()
    else:
        with redis.Redis.from_url(own_redis.url) as client:
            client.execute_command("CLIENT", "PAUSE", FREEZE_SECONDS * 1000, "ALL")

    detected = cluster.wait_for_log(LOST, FREEZE_SECONDS - 1)
    print(f"\n{how}: every worker noticed the frozen Redis after {detected:.2f} s")
    assert detected < FREEZE_SECONDS - 1  # noticed while still frozen, by the PING deadline (about 5 s)

    if how == "sigstop":
        time.sleep(max(0.0, FREEZE_SECONDS - (time.monotonic() - frozen_at)))
        own_redis.thaw()
    elif sleeper is not None:
        sleeper.join(FREEZE_SECONDS + 15)
    recovered = cluster.wait_for_log(BACK, 30)
    print(
        f"{how}: every worker resubscribed {recovered:.2f} s after Redis answered again "
        f"(backoff capped at 5 s)"
    )

    cluster.assert_reloads([str(first["version"])])  # the freeze alone reloads nothing
    second = publish_ok(cluster.redis_url, cluster.namespace)
    assert second["receivers"] == 4
    cluster.assert_reloads([str(first["version"]), str(second["version"])])
    for worker in cluster.workers:
        assert cluster.log_count(worker, LOST) == 1
        assert cluster.log_count(worker, BACK) == 1


def test_half_open_connection_is_detected_and_a_reload_sent_meanwhile_is_caught_up(
    start_server: ServerFactory,
    open_sse: Callable[..., SSEReader],
    own_redis: RedisProcess,
    partition: Partition,
    namespace: str,
) -> None:
    direct = start_server(
        APP, workers=2, env={"DISTRELOAD_REDIS_URL": own_redis.url, "DISTRELOAD_NAMESPACE": namespace}
    )
    behind = start_server(
        APP, workers=1, env={"DISTRELOAD_REDIS_URL": partition.url, "DISTRELOAD_NAMESPACE": namespace}
    )
    wait_for_workers(own_redis.url, namespace, 3)
    direct_readers = readers_everywhere(open_sse, direct)
    cut_off_reader = open_sse(behind.port)
    cut_off_worker = worker_of(cut_off_reader)

    partition.cut()
    cut_at = time.monotonic()
    result = publish_ok(own_redis.url, namespace)
    # Redis still counts the cut-off worker's subscription: a receiver count cannot reveal a deaf worker.
    assert result["receivers"] == 3
    for reader in direct_readers:
        assert [e.id for e in reader.wait_for("reload")] == [result["version"]]
    time.sleep(0.5)
    assert cut_off_reader.of("reload") == []

    wait_until(lambda: log_count([behind], cut_off_worker, LOST) == 1, 15, "the cut-off worker noticing")
    detected = time.monotonic() - cut_at
    print(f"\nhalf-open connection noticed after {detected:.2f} s")
    assert detected < 10

    partition.heal()
    healed_at = time.monotonic()
    assert [e.id for e in cut_off_reader.wait_for("reload", timeout=20)] == [result["version"]]
    print(
        f"the reload published during the cut reached the cut-off worker's stream "
        f"{time.monotonic() - healed_at:.2f} s after the network came back"
    )

    after = publish_ok(own_redis.url, namespace)
    assert after["receivers"] == 3
    for reader in [*direct_readers, cut_off_reader]:
        reader.wait_for("reload", 2)
    time.sleep(0.5)
    for reader in [*direct_readers, cut_off_reader]:
        assert reload_ids(reader) == [result["version"], after["version"]]
    assert log_count([behind], cut_off_worker, LOST) == 1
    assert log_count([behind], cut_off_worker, BACK) == 1


# --- Publishing while Redis is away fails loudly ------------------------------------------------------------


def test_publish_while_redis_is_down_raises_and_the_cli_exits_non_zero(
    own_redis: RedisProcess, namespace: str
) -> None:
    from distreload import PublishError, send_reload_signal

    own_redis.stop()
    with pytest.raises(PublishError, match=f"127.0.0.1:{own_redis.port}"):
        send_reload_signal(redis_url=own_redis.url, namespace=namespace)

    done = cli_publish(own_redis.url, namespace)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("distreload publish: could not publish to Redis at")
    assert "Traceback" not in done.stderr


def test_publish_to_a_frozen_redis_times_out_loudly(own_redis: RedisProcess, namespace: str) -> None:
    own_redis.freeze()
    try:
        started = time.monotonic()
        done = cli_publish(own_redis.url, namespace)
        took = time.monotonic() - started
    finally:
        own_redis.thaw()
    print(f"\npublish to a frozen Redis failed after {took:.2f} s")
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no answer in time" in done.stderr


def test_http_publish_while_redis_is_down_answers_503(
    start_server: ServerFactory, own_redis: RedisProcess, namespace: str
) -> None:
    server = start_server(
        APP,
        env={
            "DISTRELOAD_REDIS_URL": own_redis.url,
            "DISTRELOAD_NAMESPACE": namespace,
            "DISTRELOAD_TOKEN": "s3cret-token",
        },
    )
    own_redis.stop()
    request = urllib.request.Request(
        server.base_url + PREFIX + "/publish",
        data=b"{}",
        method="POST",
        headers={"Authorization": "Bearer s3cret-token"},
    )
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request, timeout=20)
    with failure.value as response:
        assert response.code == 503
        assert "could not publish" in json.load(response)["error"]
    assert page_is_served(server)


# --- Garbage on the channel -------------------------------------------------------------------------------


def garbage(epoch: str, number: int) -> list[bytes]:
    """Everything distreload must ignore, including well-formed claims the state does not back."""

    def message(**fields: object) -> bytes:
        base: dict[str, object] = {"epoch": epoch, "version": number + 1, "kind": "reload", "paths": []}
        base.update(fields)
        return json.dumps(base).encode()

    return [
        b"",
        b"not json",
        b"{",
        b"[]",
        b"null",
        b"42",
        b'"reload"',
        b"\xff\xfe\x00garbage",
        b'{"epoch": "' + epoch.encode() + b'", "version": 1\xff}',
        message(epoch=5),
        message(epoch="ZZZZZZZZ"),
        message(epoch="<script>alert(1)</script>"),
        message(version="3"),
        message(version=1.5),
        message(version=-1),
        message(version=0),
        message(version=True),
        message(version=2**60),
        b'{"epoch":"' + epoch.encode() + b'","version":1' + b"0" * 400 + b"}",
        message(kind="boom"),
        message(kind=None),
        message(paths="/x.css"),
        message(paths=[123]),
        message(kind="css", paths=["//evil.example/x.css"]),
        message(kind="css", paths=["javascript:alert(1)"]),
        message(kind="css", paths=["/a\nb.css"]),
        message(paths=["/" + "x" * 100] * 1000),  # over the size limit
        b"{" + b" " * (4 * MAX_MESSAGE_BYTES) + b"}",
        message(),  # one ahead of the state: not written by the publish script
        message(version=number + 1000),
        message(epoch="0123456789abcdef", version=1),  # another epoch the state does not hold
    ]


def test_garbage_on_the_channel_is_ignored_and_the_cluster_keeps_working(
    cluster: Cluster, own_redis: RedisProcess
) -> None:
    first = publish_ok(cluster.redis_url, cluster.namespace)
    cluster.assert_reloads([str(first["version"])])
    state = shared_state(cluster.redis_url, cluster.namespace)

    junk = garbage(state.epoch, state.number)
    with redis.Redis.from_url(own_redis.url) as client:
        for payload in junk:
            assert client.publish(channel_name(cluster.namespace), payload) == 4

    time.sleep(1.5)
    cluster.assert_reloads([str(first["version"])])  # nothing reached a page
    for server in cluster.servers:  # no worker moved, forwards or backwards
        assert set(versions_by_worker(server, 2).values()) == {str(first["version"])}
    assert _subscribers(own_redis.url, cluster.namespace) == 4  # every listener survived
    for server in cluster.servers:
        log = server.log()
        # Rate-limited: one warning per worker process for the whole burst of garbage.
        assert sum(IGNORED in line for line in log.splitlines()) == 2, log
        assert "Traceback" not in log
    assert shared_state(cluster.redis_url, cluster.namespace) == state

    second = publish_ok(cluster.redis_url, cluster.namespace)
    assert second["receivers"] == 4
    cluster.assert_reloads([str(first["version"]), str(second["version"])])


def test_a_state_key_overwritten_with_junk_is_replaced_and_reloads_keep_working(
    cluster: Cluster, own_redis: RedisProcess
) -> None:
    first = publish_ok(cluster.redis_url, cluster.namespace)
    cluster.assert_reloads([str(first["version"])])
    key = state_key(cluster.namespace)
    with redis.Redis.from_url(own_redis.url) as client:
        client.hset(key, mapping={"epoch": '"><script>alert(1)</script>', "version": "-7"})
        second = publish_ok(cluster.redis_url, cluster.namespace)
        # A new epoch: pages that saw the old one reload once, as after a Redis that lost its data.
        assert str(second["version"]).endswith("-1")
        cluster.assert_reloads([str(first["version"]), str(second["version"])])
        client.delete(key)
        client.set(key, "not a hash")
        third = publish_ok(cluster.redis_url, cluster.namespace)
    cluster.assert_reloads([str(first["version"]), str(second["version"]), str(third["version"])])
    for server in cluster.servers:
        assert "alert(1)" not in _page(server)


def _page(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.base_url + "/", timeout=10) as response:
        return str(response.read().decode())


# --- Clients that misbehave, settings that are wrong --------------------------------------------------------


def test_clients_that_stop_reading_or_vanish_mid_event_harm_no_one(
    start_server: ServerFactory, open_sse: Callable[..., SSEReader], own_redis: RedisProcess, namespace: str
) -> None:
    server = start_server(APP, env={"DISTRELOAD_REDIS_URL": own_redis.url, "DISTRELOAD_NAMESPACE": namespace})
    wait_for_workers(own_redis.url, namespace, 1)
    good = open_sse(server.port)
    good.wait_for("hello")
    stalled = [_stalled_stream(server.port) for _ in range(5)]
    # CSS swaps with long paths: the stalled streams' buffers fill and the server's send has to wait.
    paths = [f"/static/{i:03d}-" + "x" * 1800 + ".css" for i in range(30)]
    versions = []
    for _ in range(6):
        done = cli_publish(own_redis.url, namespace, "--css", *paths)
        assert done.returncode == 0, done.stderr
        versions.append(json.loads(done.stdout)["version"])
    good.wait_for("reload", 6, timeout=20)
    for sock in stalled:  # vanish with a reset while sends to them are still waiting
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    last = publish_ok(own_redis.url, namespace)
    good.wait_for("reload", 7, timeout=20)
    assert reload_ids(good) == [*versions, last["version"]]
    assert good.of("reload")[0].json()["paths"] == paths
    assert page_is_served(server)
    assert info(server)["streams"] == 1
    assert "Traceback" not in server.log() and "Exception" not in server.log()


def _stalled_stream(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {PREFIX}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    sock.recv(1024)  # the response has started; from now on it reads nothing
    return sock


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISTRELOAD_REDIS_URL", "http://127.0.0.1:6379"),
        ("DISTRELOAD_REDIS_URL", "redis://127.0.0.1:notaport/0"),
        ("DISTRELOAD_NAMESPACE", "no spaces allowed"),
        ("DISTRELOAD_ENABLED", "maybe"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_error_naming_it(
    start_server: ServerFactory, variable: str, value: str, tmp_path: Path
) -> None:
    env = {"DISTRELOAD_REDIS_URL": "redis://127.0.0.1:1/0", variable: value}
    server = start_server(APP, env=env, wait=False)
    assert server.process.wait(30) != 0
    log = server.log()
    errors = [line for line in log.splitlines() if line.startswith(f"distreload: {variable}: ")]
    assert len(errors) == 1, log
    assert errors[0].endswith("; not starting")
    assert "Traceback" not in log


def test_stopping_a_worker_during_an_outage_is_prompt(cluster: Cluster, own_redis: RedisProcess) -> None:
    own_redis.freeze()
    try:
        took = cluster.servers[0].stop(signal.SIGTERM)
    finally:
        own_redis.thaw()
    print(f"\nSIGTERM to exit with a frozen Redis and open streams: {took:.2f} s")
    assert took < 5, cluster.servers[0].log()

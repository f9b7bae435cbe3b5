"""Hostile input on the channel, in the state, in publish bodies, in presence records and in Last-Event-IDs:
a real worker (a RedisBroker on its own event loop) subscribed on a redis-server of this test's own, fed
random and adversarial messages, states, HTTP publish bodies, records under the namespace's presence
prefix and stream requests' Last-Event-IDs (hypothesis, bounded). Whatever it reads, it must keep its
subscription (the same pub/sub connection throughout for messages, bodies, presence and stream requests;
subscribed again after a reconnect for states), count as a receiver of the next real publish and deliver
it, and say so in rate-limited warnings, never as a lost connection; the publish endpoint answers 200 or
400, never fails; every stream request is answered 200 and gets the next real reload; ``distreload
status`` exits 0 and skips, with one line each, exactly the records that no worker wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Message

from distreload import DistReload
from distreload.broker import RedisBroker
from distreload.cli import main
from distreload.config import Target
from distreload.presence import BadPresence, parse_presence
from distreload.protocol import (
    MAX_VERSION,
    RELOAD_KINDS,
    ClusterVersion,
    Reload,
    ReloadRequest,
    State,
    channel_name,
    presence_prefix,
    state_key,
)
from distreload.publisher import publish_blocking

from ..asgi import Client, complete, raw_app, request
from ..conftest import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# What JSON can hold, nested a little; numbers include what no float holds.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**1000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ADVERSARIAL = [  # each under the 64 KiB a message may have, so that it reaches the parser
    b'{"epoch": "%s", "version": 99, "kind": "reload", "spread": ' + b"9" * 400 + b"}",
    b'{"epoch": "%s", "version": 99, "kind": "reload", "spread": 1e999}',
    b'{"epoch": "%s", "version": 99, "kind": "reload", "paths": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"epoch": "%s", "version": 99, "kind": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b"[" * 60000,
    b'{"epoch": "%s", "version": 99, "kind": "\xff\xfe\xc0\x80"}',
    b'{"epoch": "%s", "version": 99, "kind": "\\ud800"}',
    b'{"epoch": "%s", "version": 99, "kind": "reload", "match": "/' + b"*" * 60000 + b'"}',
    b'{"epoch": "%s", "version": 99, "kind": "css", "paths": [' + b'"/a",' * 200 + b'"/b"]}',
    b'{"epoch": "%s", "version": ' + b"9" * 5000 + b"}",
]


def crafted_messages(epoch: str) -> st.SearchStrategy[bytes]:
    """Bytes, JSON of any shape, messages of the right shape with wrong contents, and known attacks."""
    shaped = st.fixed_dictionaries(
        {"epoch": st.just(epoch) | st.text(max_size=40), "version": st.integers() | JSON_VALUES},
        optional={
            "kind": st.sampled_from(RELOAD_KINDS) | JSON_VALUES,
            "paths": JSON_VALUES,
            "spread": JSON_VALUES,
            "match": JSON_VALUES,
        },
    )
    return st.one_of(
        st.binary(max_size=512),
        JSON_VALUES.map(lambda value: json.dumps(value).encode()),
        shaped.map(lambda value: json.dumps(value).encode()),
        st.sampled_from(ADVERSARIAL).map(lambda raw: raw.replace(b"%s", epoch.encode())),
    )


class CountedBroker(RedisBroker):
    """A RedisBroker that counts its reads of the state after a subscribe.

    A test that drops the subscription must wait for that read: redis-py's failure callback reconnects and
    resubscribes a pub/sub connection before the worker hears of the error and closes it, so one subscriber
    on the server (and ``connected`` not yet cleared) does not mean the worker has subscribed again.
    """

    catch_ups = 0

    def _catch_up(self, state: State, *, first_contact: bool) -> None:
        super()._catch_up(state, first_contact=first_contact)
        self.catch_ups += 1


class Worker:
    """A RedisBroker on an event loop of its own thread, and the reloads it delivered."""

    def __init__(self, target: Target, *, presence_interval: float = 5.0) -> None:
        self.broker = CountedBroker(
            target,
            ping_interval=0.5,
            ping_timeout=2.0,
            backoff_initial=0.05,
            presence_interval=presence_interval,
        )
        self.delivered: list[Reload] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed worker", daemon=True)

    def deliver(self, reload: Reload) -> None:
        self.delivered.append(reload)

    def __len__(self) -> int:
        return 0

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def __enter__(self) -> Worker:
        self.thread.start()
        self.run(self.broker.hold(self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.run(self.broker.release(self))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def subscribers(admin: redis.Redis) -> list[str]:
    """The ids of the pub/sub connections on the server: the worker's subscription."""
    return [str(client["id"]) for client in admin.client_list(_type="pubsub")]


@pytest.fixture
def fuzzed(own_redis: RedisProcess, namespace: str) -> Iterator[tuple[Worker, redis.Redis, Target]]:
    target = Target(own_redis.url, namespace)
    admin = redis.Redis.from_url(own_redis.url)
    try:
        with Worker(target) as worker:
            assert worker.broker.connected
            yield worker, admin, target
    finally:
        admin.close()


def serves_a_real_reload(worker: Worker, target: Target) -> None:
    result = publish_blocking(target, ReloadRequest("css", ("/site.css",)))
    assert result.receivers == 1, "the worker was not subscribed when a real reload went out"
    assert wait_until(lambda: bool(worker.delivered) and worker.delivered[-1].version == result.version)
    assert worker.delivered[-1] == Reload(result.version, "css", ("/site.css",))


def test_no_message_on_the_channel_costs_a_worker_its_subscription(
    fuzzed: tuple[Worker, redis.Redis, Target], caplog: pytest.LogCaptureFixture
) -> None:
    worker, admin, target = fuzzed
    channel = channel_name(target.namespace)
    epoch = worker.broker.version.epoch
    (subscription,) = subscribers(admin)
    started = time.monotonic()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(raw=crafted_messages(epoch))
    def feed(raw: bytes) -> None:
        admin.publish(channel, raw)

    with caplog.at_level(logging.WARNING, logger="distreload"):
        feed()
        for raw in ADVERSARIAL:  # every known attack, whatever hypothesis drew
            admin.publish(channel, raw.replace(b"%s", epoch.encode()))
        serves_a_real_reload(worker, target)
    assert subscribers(admin) == [subscription], "the worker subscribed again: it lost its subscription"
    lines = [record.getMessage() for record in caplog.records]
    assert not [line for line in lines if "connection" in line or "cannot reach" in line], lines
    ignored = [line for line in lines if "ignored a message" in line]
    # Rate-limited: one warning per 10 s at most, however many messages were ignored.
    assert 1 <= len(ignored) <= 1 + (time.monotonic() - started) // 10, ignored


def test_no_state_in_redis_keeps_a_worker_off_its_subscription(
    fuzzed: tuple[Worker, redis.Redis, Target],
) -> None:
    worker, admin, target = fuzzed
    key = state_key(target.namespace)
    epoch = worker.broker.version.epoch

    def read_after_a_resubscribe(last: bytes, fields: dict[str, bytes]) -> None:
        admin.hset(key, mapping={"last": last, **fields})
        # The state is read after every subscribe: drop the subscription so that the worker reads it.
        read_before = worker.broker.catch_ups
        admin.client_kill_filter(_type="pubsub")
        assert wait_until(
            lambda: (
                worker.broker.catch_ups > read_before
                and worker.broker.connected
                and len(subscribers(admin)) == 1
            ),
            timeout=5,
        ), f"the worker did not subscribe again after reading the state's last {last[:60]!r}"
        serves_a_real_reload(worker, target)

    for raw in ADVERSARIAL:  # every known attack first, then what hypothesis draws
        read_after_a_resubscribe(raw.replace(b"%s", epoch.encode()), {})

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        last=crafted_messages(epoch),
        fields=st.dictionaries(
            st.sampled_from(["epoch", "version", "mode"]), st.binary(max_size=40) | st.just(b"9" * 400)
        ),
    )
    def feed(last: bytes, fields: dict[str, bytes]) -> None:
        read_after_a_resubscribe(last, fields)

    feed()


PUBLISH_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(RELOAD_KINDS) | JSON_VALUES,
        "paths": st.lists(st.text(max_size=20).map(lambda path: "/" + path), max_size=3) | JSON_VALUES,
        "spread": st.floats(0, 10) | JSON_VALUES,
        "match": st.just("/tv/*") | JSON_VALUES,
    },
)
PUBLISH_BODIES = st.one_of(
    st.binary(max_size=256),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    PUBLISH_FIELDS.map(lambda value: json.dumps(value).encode()),
)
ADVERSARIAL_BODIES = [
    b'{"spread": ' + b"9" * 400 + b"}",
    b'{"paths": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"kind": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"kind": "\xff"}',
    b'{"spread": 1e999}',
]


def test_no_publish_body_fails_the_endpoint_or_the_worker(fuzzed: tuple[Worker, redis.Redis, Target]) -> None:
    worker, admin, target = fuzzed
    app = DistReload(raw_app(), enabled=True, broker=worker.broker, token="t0ken", build_id="fuzz")
    worker.run(app.ensure_started())
    (subscription,) = subscribers(admin)
    answered: list[int] = []

    async def publish(body: bytes) -> int:
        headers = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
        sent = request(app, "POST", "/---distreload---/publish", headers=headers, body=body)
        try:
            return (await complete(sent)).status
        except Exception:
            return 500  # what a server answers for an app that raised

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=PUBLISH_BODIES)
    def feed(body: bytes) -> None:
        status = worker.run(publish(body))
        answered.append(status)
        assert status in (200, 400), (status, body[:80])

    try:
        for body in ADVERSARIAL_BODIES:  # every known attack first, then what hypothesis draws
            status = worker.run(publish(body))
            assert status == 400, (status, body[:80])
        feed()
        serves_a_real_reload(worker, target)
    finally:
        worker.run(app.shutdown())
    assert subscribers(admin) == [subscription], "the worker subscribed again: it lost its subscription"
    assert 400 in answered


# --- Presence records -------------------------------------------------------------------------------------

PRESENCE_FIELDS = st.fixed_dictionaries(
    {"host": st.text(max_size=20) | JSON_VALUES, "pid": st.integers() | JSON_VALUES},
    optional={
        "streams": st.integers() | JSON_VALUES,
        "started": st.floats() | JSON_VALUES,
        "version": st.text(max_size=20) | JSON_VALUES,
        "build": st.text(max_size=20) | JSON_VALUES,
    },
)
PRESENCE_VALUES = st.one_of(
    st.binary(max_size=256),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    PRESENCE_FIELDS.map(lambda value: json.dumps(value).encode()),
)
ADVERSARIAL_PRESENCE = [
    b"[" * 60000,
    b'{"host": "h", "pid": ' + b"9" * 5000 + b"}",
    b'{"host": "h", "pid": 1, "started": 1e999}',
    b'{"host": "h", "pid": 1, "streams": -1}',
    b'{"host": "h", "pid": true}',
    b'{"host": "\\u001b[2J\\u001b]0;owned\\u0007", "pid": 7, "version": "\\u001b[31mred"}',
    b'{"host": "' + b"h" * 60000 + b'", "pid": 8}',
    b'{"host": "\xff\xfe", "pid": 9}',
    b'{"host": "\\ud800", "pid": 10}',
    b"",
]
# Key names under the prefix: glob characters SCAN must not read as a pattern, bytes that are no UTF-8.
PRESENCE_KEY_SUFFIXES = st.binary(max_size=40) | st.sampled_from(
    [b"*", b"?", b"[a-", b"\\", b"\xff", b"x" * 5000, b"host:1"]
)
OTHER_TYPES = st.sampled_from(["hash", "list", "set"])


@pytest.fixture
def present(own_redis: RedisProcess, namespace: str) -> Iterator[tuple[Worker, redis.Redis, Target]]:
    """A worker that rewrites its presence twice a second, so that a record overwritten comes back soon."""
    target = Target(own_redis.url, namespace)
    admin = redis.Redis.from_url(own_redis.url)
    try:
        with Worker(target, presence_interval=0.5) as worker:
            assert worker.broker.connected
            yield worker, admin, target
    finally:
        admin.close()


def own_record_is_back(admin: redis.Redis, key: bytes, pid: int) -> bool:
    """Whether the worker has written its presence record again, over whatever was there."""
    if admin.type(key) != b"string":
        return False
    try:
        return parse_presence(admin.get(key)).pid == pid  # type: ignore[arg-type]
    except BadPresence:
        return False


def status_of(target: Target, capsys: pytest.CaptureFixture[str], *options: str) -> tuple[str, str]:
    """``distreload status`` run in this process: its stdout and stderr; it must exit 0."""
    capsys.readouterr()
    status = main(["status", "--redis-url", target.redis_url, "--namespace", target.namespace, *options])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out, err


def test_no_presence_record_fails_status_or_the_worker(
    present: tuple[Worker, redis.Redis, Target],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker, admin, target = present
    prefix = presence_prefix(target.namespace).encode()
    own_key = prefix + str(worker.broker.identity).encode()
    own = (worker.broker.identity.host, worker.broker.identity.pid)
    (subscription,) = subscribers(admin)

    def status_reads(records: list[tuple[bytes, bytes]], others: list[tuple[bytes, str]]) -> list[int]:
        """Write these records, run status; the pids of the records it listed besides the worker's."""
        garbage = [prefix + suffix for suffix, _ in records] + [prefix + suffix for suffix, _ in others]
        garbage = [key for key in garbage if key != own_key]
        if garbage:
            admin.delete(*garbage)
        written: dict[bytes, bytes] = {}
        for suffix, value in records:
            if prefix + suffix != own_key:
                admin.set(prefix + suffix, value)
                written[prefix + suffix] = value
        for suffix, kind in others:
            key = prefix + suffix
            if key == own_key:
                continue
            written.pop(key, None)
            admin.delete(key)
            if kind == "hash":
                admin.hset(key, "host", "h")
            elif kind == "list":
                admin.rpush(key, b"{}")
            else:
                admin.sadd(key, b"{}")
        readable, unreadable = [], 0
        for value in written.values():
            try:
                record = parse_presence(value)
            except BadPresence:
                unreadable += 1
            else:
                readable.append((record.host, record.pid))
        out, err = status_of(target, capsys, "--json")
        listed = json.loads(out)
        assert sorted((w["host"], w["pid"]) for w in listed["workers"]) == sorted([own, *readable])
        assert listed["skipped"] == unreadable, err
        assert len(err.splitlines()) == unreadable, err
        out, err = status_of(target, capsys)
        said = out + err
        # What a record holds is shown, never obeyed: no escape code reaches the terminal.
        assert all(line.isprintable() for line in said.split("\n")), said[:300]
        assert len([line for line in err.splitlines() if line.startswith("distreload status: skipped")]) == (
            unreadable
        ), err
        if garbage:
            admin.delete(*garbage)
        return sorted(pid for _, pid in readable)

    with caplog.at_level(logging.WARNING, logger="distreload"):
        # Every known attack first, then what hypothesis draws.
        attacks = [(b"attack:%d" % index, raw) for index, raw in enumerate(ADVERSARIAL_PRESENCE)]
        # Only the records of a worker's shape are listed: escape codes, a long host name and a lone
        # surrogate are text a worker could have written, shown escaped and cut short.
        assert status_reads(attacks, [(b"attack:hash", "hash"), (b"attack:list", "list")]) == [7, 8, 10]

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(
            records=st.lists(st.tuples(PRESENCE_KEY_SUFFIXES, PRESENCE_VALUES), max_size=5),
            others=st.lists(st.tuples(PRESENCE_KEY_SUFFIXES, OTHER_TYPES), max_size=2),
        )
        def feed(records: list[tuple[bytes, bytes]], others: list[tuple[bytes, str]]) -> None:
            status_reads(records, others)

        feed()
        # The worker's own record overwritten with a value of another type, then with junk: the worker
        # writes its record again and status lists it.
        for overwrite in (lambda: admin.hset(own_key, "host", "h"), lambda: admin.set(own_key, b"[" * 1000)):
            admin.delete(own_key)
            overwrite()
            assert wait_until(lambda: own_record_is_back(admin, own_key, own[1]), timeout=5)
            out, _ = status_of(target, capsys, "--json")
            assert [(w["host"], w["pid"]) for w in json.loads(out)["workers"]] == [own]
        serves_a_real_reload(worker, target)
    assert subscribers(admin) == [subscription], "the worker subscribed again: it lost its subscription"
    lines = [record.getMessage() for record in caplog.records]
    assert not [line for line in lines if "connection" in line or "cannot" in line], lines


# --- Last-Event-IDs ---------------------------------------------------------------------------------------


def last_event_ids(epoch: str) -> st.SearchStrategy[bytes]:
    """Header values: any bytes, any text, and versions of every near-miss shape around the worker's."""
    epochs = st.sampled_from([epoch, epoch.upper(), "f" * 16, epoch[:7], epoch + "0" * 17]) | st.text(
        alphabet="0123456789abcdef-", max_size=40
    )
    numbers = st.integers(min_value=-5, max_value=5) | st.integers(min_value=-(10**20), max_value=10**20)
    versions = st.builds(lambda e, n: f"{e}-{n}".encode(), epochs, numbers)
    padded = st.builds(
        lambda space, version: space + version + space, st.sampled_from([b" ", b"\t", b""]), versions
    )
    return st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode), versions, padded)


def adversarial_last_event_ids(epoch: str) -> list[bytes]:
    return [
        b"",
        b" ",
        f"{epoch}-0".encode(),
        f"{epoch}-{MAX_VERSION}".encode(),
        f"{epoch}-{MAX_VERSION + 1}".encode(),
        f"{epoch}-{'9' * 16}".encode(),
        f"{epoch}-{'9' * 5000}".encode(),
        b"x" * 16000,
        b"\x00" * 16,
        f"{epoch}-1\r\n\r\nevent: reload\ndata: {{}}".encode(),
        f"{epoch}-1\n{epoch}-2".encode(),
        "\u0663\u0663\u0663\u0663\u0663\u0663\u0663\u0663-\u0661".encode(),  # digits, not ASCII ones
        b"\xff\xfe\xc0\x80",
    ]


def open_stream(app: DistReload, last_event_id: bytes, *, in_query: bool) -> Client:
    """A browser's stream request, with ``last_event_id`` as the header's raw bytes (a server hands over
    whatever bytes arrived) or in the query string. Runs on the worker's loop."""
    client = Client()
    headers = [(b"accept", b"text/event-stream")]
    query = b""
    if in_query:
        query = b"last_event_id=" + urllib.parse.quote_from_bytes(last_event_id).encode()
    else:
        headers.append((b"last-event-id", last_event_id))
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await client.hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        client.sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/---distreload---/events",
        "raw_path": b"/---distreload---/events",
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    client.task = asyncio.ensure_future(app(scope, receive, send))
    return client


def test_no_last_event_id_fails_a_stream_or_the_worker(
    fuzzed: tuple[Worker, redis.Redis, Target], caplog: pytest.LogCaptureFixture
) -> None:
    worker, admin, target = fuzzed
    app = DistReload(raw_app(), enabled=True, broker=worker.broker, build_id="fuzz")
    worker.run(app.ensure_started())
    (subscription,) = subscribers(admin)
    epoch = worker.broker.version.epoch
    streams: list[tuple[bytes, Client]] = []  # kept open to the end: each must get the next real reload

    async def opened(last_event_id: bytes, in_query: bool) -> Client:
        client = open_stream(app, last_event_id, in_query=in_query)
        deadline = time.monotonic() + 5
        while len(client.sent) < 2 and not client.task.done() and time.monotonic() < deadline:  # type: ignore[union-attr]
            await asyncio.sleep(0.005)
        return client

    def check(last_event_id: bytes, in_query: bool) -> None:
        client = worker.run(opened(last_event_id, in_query))
        assert client.task is not None and not client.task.done(), (last_event_id[:80], client.sent)
        assert client.status == 200, (last_event_id[:80], client.sent[0])
        assert client.body.startswith(b"retry: ") and b"event: hello\n" in client.body, client.body[:200]
        streams.append((last_event_id, client))

    try:
        with caplog.at_level(logging.WARNING, logger="distreload"):
            for raw in adversarial_last_event_ids(epoch):  # every known attack first
                check(raw, False)
                check(raw, True)

            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(last_event_id=last_event_ids(epoch), in_query=st.booleans())
            def feed(last_event_id: bytes, in_query: bool) -> None:
                check(last_event_id, in_query)

            feed()
            result = publish_blocking(target, ReloadRequest("css", ("/site.css",)))
            assert result.receivers == 1, "the worker was not subscribed when a real reload went out"
            event = f"event: reload\nid: {result.version}\n".encode()

            def already_has(last_event_id: bytes) -> bool:
                """A client that says it holds this version or a later one of this epoch is not told again."""
                seen = ClusterVersion.parse(last_event_id.decode("latin-1"))
                return seen is not None and not seen.is_behind(result.version)

            due = [client for raw, client in streams if not already_has(raw)]
            assert wait_until(lambda: all(event in client.body for client in due)), [
                raw[:80] for raw, client in streams if client in due and event not in client.body
            ]
            assert all(client.task is not None and not client.task.done() for _, client in streams)
            print(
                f"\n{len(streams)} stream requests, all answered 200; {len(due)} told of the next reload, "
                f"{len(streams) - len(due)} said they held it already"
            )
    finally:
        for _, client in streams:
            client.hang_up.set()
        worker.run(app.shutdown())
    # Each stream's request ends once its client hangs up (on the worker's loop, so after a moment).
    assert wait_until(lambda: all(client.task is not None and client.task.done() for _, client in streams))
    for raw, client in streams:
        assert client.task is not None and client.task.exception() is None, raw[:80]
    assert subscribers(admin) == [subscription], "the worker subscribed again: it lost its subscription"
    lines = [record.getMessage() for record in caplog.records]
    assert not [line for line in lines if "connection" in line or "cannot" in line], lines

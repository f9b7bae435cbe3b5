"""The broker: message validation, version bookkeeping, and fan-out through Redis.

The Redis tests run twice: against fakeredis and against the real server (unique namespaces; the shared
server is never flushed). Faults that need a Redis stopped or frozen live in test_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis

from distreload.broker import MemoryBroker, RedisBroker, async_client, publish_to_redis
from distreload.config import Target
from distreload.protocol import (
    MAX_VERSION,
    BadMessage,
    ClusterVersion,
    PublishError,
    Reload,
    channel_name,
    parse_message,
    presence_prefix,
    state_key,
    validate_publish_request,
)

pytestmark = pytest.mark.anyio

EPOCH = "0123456789abcdef"


# --- Messages and versions ------------------------------------------------------------------------------

def message(**fields: Any) -> bytes:
    data = {"epoch": EPOCH, "version": 3, "kind": "reload", "paths": []}
    data.update(fields)
    return json.dumps(data).encode()


def test_a_well_formed_message_parses() -> None:
    assert parse_message(message()) == Reload(ClusterVersion(EPOCH, 3), "reload", ())
    assert parse_message(message(kind="css", paths=["/static/a.css"])).paths == ("/static/a.css",)


@pytest.mark.parametrize("raw", [
    b"",
    b"not json",
    b"\xff\xfe\xfd",
    b"[1, 2]",
    b'"text"',
    b"null",
    message(epoch="XYZ"),
    message(epoch=7),
    message(version=-1),
    message(version=0),
    message(version=MAX_VERSION + 1),
    message(version=10**30),
    message(version=True),
    message(version=3.0),
    message(version="3"),
    message(kind="explode"),
    message(kind=None),
    message(paths="/a.css"),
    message(paths=["//evil.example/a.css"]),
    message(paths=["javascript:alert(1)"]),
    message(paths=["/a\nb.css"]),
    message(paths=["/a.css"] * 101),
    b"{" + b" " * (70 * 1024) + b"}",
], ids=repr)
def test_anything_else_is_a_bad_message(raw: bytes) -> None:
    with pytest.raises(BadMessage):
        parse_message(raw)


def test_cluster_version_text_round_trip_and_malformed_ids() -> None:
    version = ClusterVersion(EPOCH, 12)
    assert ClusterVersion.parse(str(version)) == version
    for bad in (None, "", "12", "zz-1", f"{EPOCH}-", f"{EPOCH}--1", f"{EPOCH}-1x",
                f"{EPOCH}-99999999999999999", "<script>-1"):
        assert ClusterVersion.parse(bad) is None


def test_is_behind_within_an_epoch_and_across_a_new_one() -> None:
    assert ClusterVersion(EPOCH, 1).is_behind(ClusterVersion(EPOCH, 2))
    assert not ClusterVersion(EPOCH, 2).is_behind(ClusterVersion(EPOCH, 2))
    assert not ClusterVersion(EPOCH, 3).is_behind(ClusterVersion(EPOCH, 2))
    # Redis lost its state: a new epoch with no reload counted is only bookkeeping...
    assert not ClusterVersion(EPOCH, 9).is_behind(ClusterVersion("fedcba9876543210", 0))
    # ...but a reload counted in the new epoch was missed.
    assert ClusterVersion(EPOCH, 9).is_behind(ClusterVersion("fedcba9876543210", 1))


def test_publish_requests_are_validated_before_anything_is_sent() -> None:
    assert validate_publish_request("css", ["/a.css"]) == ("css", ("/a.css",))
    for kind, paths in (("nope", []), ("css", "/a.css"), ("css", ["http://x/a.css"]), ("css", ["/a"] * 101)):
        with pytest.raises(ValueError):
            validate_publish_request(kind, paths)


# --- The in-memory broker -------------------------------------------------------------------------------

def memory_broker() -> MemoryBroker:
    return MemoryBroker(Target("memory://", "test"))


async def test_memory_broker_counts_and_tells_listeners_in_order() -> None:
    broker = memory_broker()
    seen: list[Reload] = []
    broker.add_listener(seen.append)
    await broker.start()
    first = await broker.publish()
    second = await broker.publish("css", ["/site.css"])
    assert [r.version.number for r in seen] == [1, 2]
    assert seen[1] == Reload(second.version, "css", ("/site.css",))
    assert first.version.epoch == second.version.epoch == broker.version.epoch


async def test_memory_broker_publish_from_another_thread_runs_on_the_loop() -> None:
    broker = memory_broker()
    threads: list[str] = []
    broker.add_listener(lambda reload: threads.append(threading.current_thread().name))
    await broker.start()
    result = await asyncio.to_thread(broker.publish_threadsafe)
    assert result.version.number == 1
    assert threads == [threading.current_thread().name]


async def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    broker = memory_broker()
    seen: list[int] = []

    def broken(reload: Reload) -> None:
        raise RuntimeError("listener bug")

    broker.add_listener(broken)
    broker.add_listener(lambda reload: seen.append(reload.version.number))
    with caplog.at_level(logging.ERROR):
        await broker.publish()
    assert seen == [1] and "listener failed" in caplog.text


def test_catch_up_rules() -> None:
    broker = memory_broker()
    seen: list[Reload] = []
    broker.add_listener(seen.append)
    # A fresh worker adopts the cluster's state without reloading anything.
    broker._catch_up(ClusterVersion(EPOCH, 5), first_contact=True)
    assert broker.version == ClusterVersion(EPOCH, 5) and seen == []
    # A reload published while this worker was cut off is delivered on catch-up.
    broker._catch_up(ClusterVersion(EPOCH, 7), first_contact=False)
    assert [r.version for r in seen] == [ClusterVersion(EPOCH, 7)]
    # A Redis that came back empty and was re-created by another worker: bookkeeping only.
    broker._catch_up(ClusterVersion("fedcba9876543210", 0), first_contact=False)
    assert len(seen) == 1 and broker.version.epoch == "fedcba9876543210"
    # The state never moves a worker backwards.
    broker._catch_up(ClusterVersion("fedcba9876543210", 0), first_contact=False)
    assert len(seen) == 1


# --- Through Redis: fakeredis and a real server ---------------------------------------------------------

@dataclass
class Backend:
    target: Target
    make_client: Callable[[], Any]
    sync: Any

    def broker(self, **options: Any) -> RedisBroker:
        options.setdefault("startup_wait", 5.0)
        return RedisBroker(self.target, client_factory=self.make_client, **options)


@pytest.fixture(params=["fakeredis", "redis-server"])
def backend(request: pytest.FixtureRequest, namespace: str) -> Backend:
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        return Backend(Target("redis://fakeredis:6379/0", namespace),
                       lambda: fakeredis.FakeAsyncRedis(server=server), fakeredis.FakeRedis(server=server))
    url = request.getfixturevalue("shared_redis_url")
    return Backend(Target(url, namespace), lambda: async_client(url), redis.Redis.from_url(url))


@pytest.fixture
async def brokers(backend: Backend) -> AsyncIterator[list[RedisBroker]]:
    """Two started brokers: two worker processes sharing one Redis."""
    started = [backend.broker(), backend.broker()]
    for broker in started:
        await broker.start()
        assert broker.connected
    yield started
    for broker in started:
        await broker.stop()
    backend.sync.delete(state_key(backend.target.namespace))
    backend.sync.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_a_publish_reaches_every_broker_once(brokers: list[RedisBroker]) -> None:
    seen: list[list[Reload]] = [[], []]
    for broker, bucket in zip(brokers, seen, strict=True):
        broker.add_listener(bucket.append)
    result = await brokers[0].publish("css", ["/static/site.css"])
    assert result.receivers == 2 and result.version.number == 1
    await wait_until(lambda: all(seen))
    await asyncio.sleep(0.1)
    for bucket in seen:
        assert bucket == [Reload(result.version, "css", ("/static/site.css",))]
    assert all(broker.version == result.version for broker in brokers)


async def test_a_reload_missed_while_cut_off_arrives_on_resubscribe(
        backend: Backend, brokers: list[RedisBroker]) -> None:
    worker, publisher = brokers
    seen: list[Reload] = []
    worker.add_listener(seen.append)
    await worker.stop()  # the version it knew is kept, as across a reconnect
    missed = await publisher.publish()
    assert seen == []
    await worker.start()
    assert [r.version for r in seen] == [missed.version]


async def test_state_lost_by_redis_is_put_back_without_a_reload(
        backend: Backend, brokers: list[RedisBroker]) -> None:
    worker, publisher = brokers
    before = await publisher.publish()
    await wait_until(lambda: worker.version == before.version)
    seen: list[Reload] = []
    worker.add_listener(seen.append)
    backend.sync.delete(state_key(backend.target.namespace))  # what a restart without persistence does
    await worker.stop()
    await worker.start()
    assert seen == [] and worker.version == before.version
    assert backend.sync.hgetall(state_key(backend.target.namespace)) == {
        b"epoch": before.version.epoch.encode(), b"version": str(before.version.number).encode()}
    after = await publisher.publish()
    assert after.version == ClusterVersion(before.version.epoch, before.version.number + 1)
    await wait_until(lambda: bool(seen))
    assert [r.version for r in seen] == [after.version]


async def test_garbage_on_the_channel_is_ignored_with_one_warning(
        backend: Backend, brokers: list[RedisBroker], caplog: pytest.LogCaptureFixture) -> None:
    worker = brokers[0]
    seen: list[Reload] = []
    worker.add_listener(seen.append)
    channel = channel_name(backend.target.namespace)
    real = await brokers[1].publish()
    await wait_until(lambda: worker.version == real.version)
    with caplog.at_level(logging.WARNING, logger="distreload.broker"):
        for raw in (b"", b"garbage", b"\xff", json.dumps({"epoch": real.version.epoch, "version": 10**9,
                                                           "kind": "reload", "paths": []}).encode()):
            backend.sync.publish(channel, raw)
        await asyncio.sleep(0.3)
    assert seen == [Reload(real.version)] and worker.version == real.version
    warnings = [r for r in caplog.records if "ignored a message" in r.getMessage()]
    assert len(warnings) == len(brokers)  # four bad messages, one warning per worker: rate-limited
    after = await brokers[1].publish()
    await wait_until(lambda: len(seen) == 2)
    assert seen[-1].version == after.version


async def test_namespaces_sharing_one_redis_never_reload_each_other(backend: Backend) -> None:
    other = Backend(Target(backend.target.redis_url, backend.target.namespace + "-other"),
                    backend.make_client, backend.sync)
    mine, theirs = backend.broker(), other.broker()
    seen: list[Reload] = []
    theirs.add_listener(seen.append)
    await mine.start()
    await theirs.start()
    try:
        result = await mine.publish()
        assert result.receivers == 1
        await asyncio.sleep(0.2)
        assert seen == []
    finally:
        await mine.stop()
        await theirs.stop()
        for ns in (backend.target.namespace, other.target.namespace):
            backend.sync.delete(state_key(ns))


async def test_presence_is_written_with_an_expiry(backend: Backend) -> None:
    worker = backend.broker()
    worker.stream_count = lambda: 3
    await worker.start()
    pattern = presence_prefix(backend.target.namespace) + "*"
    try:
        keys = list(backend.sync.scan_iter(match=pattern))
        assert keys == [f"{presence_prefix(backend.target.namespace)}{worker.identity}".encode()]
        record = json.loads(backend.sync.get(keys[0]))
        assert record["pid"] == worker.identity.pid and record["streams"] == 3
        assert set(record) >= {"host", "pid", "streams", "version", "build", "started"}
        assert 0 < backend.sync.ttl(keys[0]) <= 15  # a killed worker disappears by itself
    finally:
        await worker.stop()
    assert list(backend.sync.scan_iter(match=pattern)) == []  # a stopped one at once


def test_sync_publish_reports_receivers(shared_redis_url: str, namespace: str) -> None:
    target = Target(shared_redis_url, namespace)
    client = redis.Redis.from_url(shared_redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel_name(namespace))
    try:
        first = publish_to_redis(target)
        second = publish_to_redis(target, "css", ["/a.css"])
        assert first.receivers == 1
        assert second.version == ClusterVersion(first.version.epoch, 2)
    finally:
        pubsub.close()
        client.delete(state_key(namespace))
        client.close()


def test_sync_publish_to_a_dead_redis_raises_one_line() -> None:
    with pytest.raises(PublishError) as raised:
        publish_to_redis(Target("redis://127.0.0.1:1/0", "dead"))
    assert "\n" not in str(raised.value) and "127.0.0.1:1" in str(raised.value)


async def test_start_with_a_dead_redis_returns_and_keeps_trying() -> None:
    broker = RedisBroker(Target("redis://127.0.0.1:1/0", "dead"), startup_wait=0.3)
    started = asyncio.get_running_loop().time()
    await broker.start()
    assert asyncio.get_running_loop().time() - started < 2
    assert not broker.connected
    with pytest.raises(PublishError):
        await broker.publish()
    await broker.stop()

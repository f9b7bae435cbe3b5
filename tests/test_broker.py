"""The broker: version bookkeeping, listeners, and fan-out through Redis.

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

from distreload.broker import Backoff, Broker, MemoryBroker, RedisBroker, get_broker
from distreload.config import Target
from distreload.links import AsyncLink, Subscription
from distreload.protocol import (
    ClusterVersion,
    PublishError,
    Reload,
    ReloadRequest,
    State,
    channel_name,
    presence_prefix,
    state_key,
)
from distreload.redis_clients import async_client

pytestmark = pytest.mark.anyio

EPOCH = "0123456789abcdef"
RELOAD = ReloadRequest()


class Recorder:
    """A listener that keeps what it was told (a stand-in for an app's stream hub)."""

    def __init__(self) -> None:
        self.reloads: list[Reload] = []
        self.streams = 0

    def deliver(self, reload: Reload) -> None:
        self.reloads.append(reload)

    def __len__(self) -> int:  # the streams it holds, as a hub answers
        return self.streams

    def told(self) -> list[Reload]:
        return list(self.reloads)


# --- The in-memory broker -------------------------------------------------------------------------------


def memory_broker() -> MemoryBroker:
    return MemoryBroker(Target("memory://", "test"))


async def test_memory_broker_counts_and_tells_listeners_in_order() -> None:
    broker = memory_broker()
    seen = Recorder()
    await broker.hold(seen)
    first = await broker.publish(RELOAD)
    second = await broker.publish(ReloadRequest("css", ("/site.css",)))
    assert [r.version.number for r in seen.told()] == [1, 2]
    assert seen.told()[1] == Reload(second.version, "css", ("/site.css",))
    assert first.version.epoch == second.version.epoch == broker.version.epoch
    assert first.receivers == 1


async def test_memory_broker_publish_from_another_thread_runs_on_the_loop() -> None:
    broker = memory_broker()
    threads: list[str] = []

    class ThreadRecorder(Recorder):
        def deliver(self, reload: Reload) -> None:
            threads.append(threading.current_thread().name)

    listener = ThreadRecorder()
    await broker.hold(listener)
    result = await asyncio.to_thread(broker.publish_blocking, RELOAD)
    await asyncio.sleep(0.01)
    assert result.version.number == 1 and result.receivers == 1
    assert threads == [threading.current_thread().name]


async def test_memory_broker_loses_no_version_to_many_threads_before_or_after_its_loop() -> None:
    broker = memory_broker()
    seen = Recorder()

    def publish_many() -> list[int]:
        return [broker.publish_blocking(RELOAD).version.number for _ in range(500)]

    # Before the loop is bound (no app started): the count still moves one by one, nothing is told.
    numbers = [
        n
        for batch in await asyncio.gather(*(asyncio.to_thread(publish_many) for _ in range(8)))
        for n in batch
    ]
    assert sorted(numbers) == list(range(1, 4001))
    await broker.hold(seen)
    numbers = [
        n
        for batch in await asyncio.gather(*(asyncio.to_thread(publish_many) for _ in range(8)))
        for n in batch
    ]
    await asyncio.sleep(0.05)
    assert sorted(numbers) == list(range(4001, 8001))
    # Every version reached the listener, in order.
    assert [r.version.number for r in seen.told()] == list(range(4001, 8001))


def test_a_listener_that_publishes_in_turn_is_told_of_both_without_a_deadlock() -> None:
    # An on_reload callback that calls send_reload_signal() (a follow-up CSS swap) runs inside the
    # broker's delivery: the in-memory broker once delivered while holding its lock, and froze the loop.
    broker = memory_broker()
    told: list[tuple[int, str]] = []

    class PublishesOnce(Recorder):
        def deliver(self, reload: Reload) -> None:
            told.append((reload.version.number, reload.kind))
            if reload.kind == "reload":
                broker.publish_blocking(ReloadRequest("css"))

    listener = PublishesOnce()  # held weakly by the broker

    async def run() -> None:
        await broker.hold(listener)
        await broker.publish(RELOAD)
        await asyncio.sleep(0.01)

    # On a thread of its own, so that a deadlock fails this test instead of freezing the run.
    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the loop froze: a listener's publish waited for the broker's lock"
    assert told == [(1, "reload"), (2, "css")]


async def test_receivers_count_only_a_broker_that_an_app_is_listening_on() -> None:
    broker = memory_broker()
    assert (await broker.publish(RELOAD)).receivers == 0
    seen = Recorder()
    await broker.hold(seen)
    assert (await broker.publish(RELOAD)).receivers == 1
    await broker.release(seen)
    assert (await broker.publish(RELOAD)).receivers == 0


async def test_listeners_go_away_with_their_app() -> None:
    import gc

    broker = memory_broker()
    for _ in range(1000):
        await broker.hold(Recorder())  # apps started and dropped without a shutdown
    gc.collect()
    assert len(broker._listeners) == 0
    assert (await broker.publish(RELOAD)).receivers == 0


async def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    broker = memory_broker()
    seen = Recorder()

    class Broken(Recorder):
        def deliver(self, reload: Reload) -> None:
            raise RuntimeError("listener bug")

    broken = Broken()
    await broker.hold(broken)
    await broker.hold(seen)
    with caplog.at_level(logging.ERROR):
        await broker.publish(RELOAD)
    assert [r.version.number for r in seen.told()] == [1] and "listener failed" in caplog.text


def test_catch_up_rules() -> None:
    broker = memory_broker()
    seen = Recorder()
    broker._listeners.add(seen)
    # A fresh worker adopts the cluster's state without reloading anything.
    broker._catch_up(State(ClusterVersion(EPOCH, 5)), first_contact=True)
    assert broker.version == ClusterVersion(EPOCH, 5) and seen.told() == []
    # A reload published while this worker was cut off is delivered on catch-up; the last message when
    # only it was missed.
    css = Reload(ClusterVersion(EPOCH, 6), "css", ("/a.css",))
    broker._catch_up(State(css.version, css), first_contact=False)
    broker._catch_up(State(ClusterVersion(EPOCH, 8)), first_contact=False)
    assert seen.told() == [css, Reload(ClusterVersion(EPOCH, 8))]
    # A Redis that came back empty and was re-created by another worker: bookkeeping only.
    broker._catch_up(State(ClusterVersion("fedcba9876543210", 0)), first_contact=False)
    assert len(seen.told()) == 2 and broker.version.epoch == "fedcba9876543210"
    # The state never moves a worker backwards.
    broker._catch_up(State(ClusterVersion("fedcba9876543210", 0)), first_contact=False)
    assert len(seen.told()) == 2


def test_one_broker_per_target_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTRELOAD_REDIS_URL", raising=False)
    monkeypatch.delenv("DISTRELOAD_NAMESPACE", raising=False)
    assert get_broker() is get_broker(None, "default")
    assert get_broker("redis://127.0.0.1:6379/0", "x") is get_broker("redis://127.0.0.1:6379/0", "x")
    assert get_broker("redis://127.0.0.1:6379/0", "y") is not get_broker("redis://127.0.0.1:6379/0", "x")
    assert isinstance(get_broker(), Broker) and not get_broker().talks_to_redis


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
        return Backend(
            Target("redis://fakeredis:6379/0", namespace),
            lambda: fakeredis.FakeAsyncRedis(server=server),
            fakeredis.FakeRedis(server=server),
        )
    url = request.getfixturevalue("shared_redis_url")
    return Backend(Target(url, namespace), lambda: async_client(url), redis.Redis.from_url(url))


@dataclass
class Worker:
    """A started broker and what its app was told: one worker process."""

    broker: RedisBroker
    seen: Recorder

    async def start(self) -> None:
        await self.broker.hold(self.seen)

    async def stop(self) -> None:
        await self.broker.release(self.seen)


@pytest.fixture
async def workers(backend: Backend) -> AsyncIterator[list[Worker]]:
    """Two started brokers: two worker processes sharing one Redis."""
    started = [Worker(backend.broker(), Recorder()), Worker(backend.broker(), Recorder())]
    for worker in started:
        await worker.start()
        assert worker.broker.connected
    yield started
    for worker in started:
        await worker.stop()
    backend.sync.delete(state_key(backend.target.namespace))
    backend.sync.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_a_publish_reaches_every_broker_once(workers: list[Worker]) -> None:
    result = await workers[0].broker.publish(ReloadRequest("css", ("/static/site.css",)))
    assert result.receivers == 2 and result.version.number == 1
    await wait_until(lambda: all(w.seen.told() for w in workers))
    await asyncio.sleep(0.1)
    for worker in workers:
        assert worker.seen.told() == [Reload(result.version, "css", ("/static/site.css",))]
        assert worker.broker.version == result.version


async def test_a_reload_missed_while_cut_off_arrives_on_resubscribe(workers: list[Worker]) -> None:
    worker, publisher = workers
    await worker.stop()  # the version it knew is kept, as across a reconnect
    missed = await publisher.broker.publish(ReloadRequest("morph", (), 2.0, "/kiosk/*"))
    assert worker.seen.told() == []
    await worker.start()
    # Only the last reload was missed: it arrives as it was published.
    assert worker.seen.told() == [Reload(missed.version, "morph", (), 2.0, "/kiosk/*")]
    await worker.stop()
    await publisher.broker.publish(RELOAD)
    last = await publisher.broker.publish(ReloadRequest("css"))
    await worker.start()
    # Two were missed: what the first was is not kept, so the pages reload.
    assert worker.seen.told()[-1] == Reload(last.version)


async def test_state_lost_by_redis_is_put_back_without_a_reload(
    backend: Backend, workers: list[Worker]
) -> None:
    worker, publisher = workers
    before = await publisher.broker.publish(RELOAD)
    await wait_until(lambda: worker.broker.version == before.version)
    told = len(worker.seen.told())
    backend.sync.delete(state_key(backend.target.namespace))  # what a restart without persistence does
    await worker.stop()
    await worker.start()
    assert len(worker.seen.told()) == told and worker.broker.version == before.version
    state = backend.sync.hgetall(state_key(backend.target.namespace))
    assert state[b"epoch"] == before.version.epoch.encode()
    assert state[b"version"] == str(before.version.number).encode()
    after = await publisher.broker.publish(RELOAD)
    assert after.version == ClusterVersion(before.version.epoch, before.version.number + 1)
    await wait_until(lambda: len(worker.seen.told()) == told + 1)
    assert worker.seen.told()[-1].version == after.version


async def test_garbage_on_the_channel_is_ignored_with_one_warning(
    backend: Backend, workers: list[Worker], caplog: pytest.LogCaptureFixture
) -> None:
    worker = workers[0]
    channel = channel_name(backend.target.namespace)
    real = await workers[1].broker.publish(RELOAD)
    await wait_until(lambda: worker.broker.version == real.version)
    with caplog.at_level(logging.WARNING, logger="distreload.broker"):
        for raw in (
            b"",
            b"garbage",
            b"\xff",
            json.dumps(
                {"epoch": real.version.epoch, "version": 10**9, "kind": "reload", "paths": []}
            ).encode(),
        ):
            backend.sync.publish(channel, raw)
        await asyncio.sleep(0.3)
    assert worker.seen.told() == [Reload(real.version)] and worker.broker.version == real.version
    warnings = [r for r in caplog.records if "ignored a message" in r.getMessage()]
    assert len(warnings) == len(workers)  # four bad messages, one warning per worker: rate-limited
    after = await workers[1].broker.publish(RELOAD)
    await wait_until(lambda: len(worker.seen.told()) == 2)
    assert worker.seen.told()[-1].version == after.version


async def test_namespaces_sharing_one_redis_never_reload_each_other(backend: Backend) -> None:
    other = Backend(
        Target(backend.target.redis_url, backend.target.namespace + "-other"),
        backend.make_client,
        backend.sync,
    )
    mine, theirs = Worker(backend.broker(), Recorder()), Worker(other.broker(), Recorder())
    await mine.start()
    await theirs.start()
    try:
        result = await mine.broker.publish(RELOAD)
        assert result.receivers == 1
        await asyncio.sleep(0.2)
        assert theirs.seen.told() == []
    finally:
        await mine.stop()
        await theirs.stop()
        for ns in (backend.target.namespace, other.target.namespace):
            backend.sync.delete(state_key(ns))


async def test_presence_is_written_with_an_expiry(backend: Backend) -> None:
    worker = Worker(backend.broker(), Recorder())
    worker.seen.streams = 3
    await worker.start()
    pattern = presence_prefix(backend.target.namespace) + "*"
    try:
        keys = list(backend.sync.scan_iter(match=pattern))
        assert keys == [f"{presence_prefix(backend.target.namespace)}{worker.broker.identity}".encode()]
        record = json.loads(backend.sync.get(keys[0]))
        assert record["pid"] == worker.broker.identity.pid and record["streams"] == 3
        assert set(record) >= {"host", "pid", "streams", "version", "build", "started"}
        assert 0 < backend.sync.ttl(keys[0]) <= 15  # a killed worker disappears by itself
    finally:
        await worker.stop()
    assert list(backend.sync.scan_iter(match=pattern)) == []  # a stopped one at once


def test_publish_from_a_thread_reports_receivers(shared_redis_url: str, namespace: str) -> None:
    broker = RedisBroker(Target(shared_redis_url, namespace))
    client = redis.Redis.from_url(shared_redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel_name(namespace))
    try:
        first = broker.publish_blocking(RELOAD)
        second = broker.publish_blocking(ReloadRequest("css", ("/a.css",)))
        assert first.receivers == 1
        assert second.version == ClusterVersion(first.version.epoch, 2)
    finally:
        pubsub.close()
        client.delete(state_key(namespace))
        client.close()


def test_publish_to_a_dead_redis_raises_one_line() -> None:
    with pytest.raises(PublishError) as raised:
        RedisBroker(Target("redis://127.0.0.1:1/0", "dead")).publish_blocking(RELOAD)
    assert "\n" not in str(raised.value) and "127.0.0.1:1" in str(raised.value)


async def test_start_with_a_dead_redis_returns_and_keeps_trying() -> None:
    broker = RedisBroker(Target("redis://127.0.0.1:1/0", "dead"), startup_wait=0.3)
    listener = Recorder()
    started = asyncio.get_running_loop().time()
    await broker.hold(listener)
    assert asyncio.get_running_loop().time() - started < 2
    assert not broker.connected
    with pytest.raises(PublishError):
        await broker.publish(RELOAD)
    await broker.release(listener)


# --- Backoff, failover following, optional presence ------------------------------------------------------


def test_backoff_grows_to_a_ceiling_and_starts_over_only_after_a_healthy_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("distreload.broker.random.uniform", lambda low, high: high)
    backoff = Backoff(0.2, 5.0, 30.0, healthy_after=30.0)
    waits = [round(backoff.failed(refused=False, connected_for=None), 3) for _ in range(10)]
    assert waits == [0.2, 0.3, 0.45, 0.675, 1.013, 1.519, 2.278, 3.417, 5.0, 5.0]
    # A connection that opened and failed at once is no reason to start over.
    assert backoff.failed(refused=False, connected_for=2.0) == 5.0
    # Redis refusing (an ACL rule) goes on growing, to a longer ceiling.
    refused = [backoff.failed(refused=True, connected_for=None) for _ in range(7)]
    assert refused == [7.5, 11.25, 16.875, 25.3125, 30.0, 30.0, 30.0]
    # Only a connection that held for healthy_after seconds starts the sequence over.
    assert backoff.failed(refused=False, connected_for=31.0) == 0.2
    # Jitter takes off at most a quarter: no wait is ever shorter than the one before it.
    monkeypatch.setattr("distreload.broker.random.uniform", lambda low, high: low)
    assert backoff.failed(refused=False, connected_for=None) == pytest.approx(0.75 * 0.3)


class ScriptedBroker(RedisBroker):
    """A broker whose link can be told what to do: fail after subscribing, report a failover, report
    that the Sentinels moved the master."""

    def __init__(self, backend: Backend, **options: Any) -> None:
        options.setdefault("startup_wait", 5.0)
        super().__init__(backend.target, client_factory=backend.make_client, **options)
        self.subscribes: list[float] = []
        self.drop_after_subscribe = False
        self.failed_over = False
        self.moved_to: str | None = None
        self.sentinel_error: Exception | None = None
        self.node = "redis-a:6379"

    async def _open_link(self) -> AsyncLink:
        link = await super()._open_link()
        broker = self

        class Link(AsyncLink):
            async def subscribe(self, channel: str, timeout: float) -> Subscription:
                subscription = await super().subscribe(channel, timeout)
                subscription.node = broker.node
                broker.subscribes.append(asyncio.get_running_loop().time())
                if broker.drop_after_subscribe:
                    original = subscription.next_event
                    pongs = 0

                    async def next_event(timeout: float) -> tuple[str, Any] | None:
                        nonlocal pongs
                        event = await original(timeout)
                        if event is not None and event[0] == "pong":
                            pongs += 1
                            if pongs > 1:  # connected (the first PONG), then lost at once
                                raise ConnectionError("connection reset")
                        return event

                    subscription.next_event = next_event  # type: ignore[method-assign]
                return subscription

            async def failed_over_from(self, node: str) -> bool:
                return broker.failed_over

            async def master_moved(self, node: str) -> str | None:
                if broker.sentinel_error is not None:
                    raise broker.sentinel_error
                return broker.moved_to

        return Link(link.client, link.display_url)


async def test_a_connection_that_fails_at_once_backs_off_and_logs_twice_in_all(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    broker = ScriptedBroker(
        backend, ping_interval=0.05, ping_timeout=1.0, backoff_initial=0.05, backoff_max=0.8, healthy_after=30
    )
    broker.drop_after_subscribe = True
    seen = Recorder()
    with caplog.at_level(logging.WARNING, logger="distreload.broker"):
        await broker.hold(seen)
        await asyncio.sleep(3)
        await broker.release(seen)
    gaps = [b - a for a, b in zip(broker.subscribes, broker.subscribes[1:], strict=False)]
    # 0.05 growing to 0.8 s (jitter: times 0.75-1), never reset by the short-lived connections.
    assert 4 <= len(broker.subscribes) <= 12, gaps
    assert gaps[-1] >= 0.4 and gaps[-1] >= 3 * gaps[0], gaps
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # "lost the connection", then "connected" once: not once per attempt
    assert "lost the connection" in lines[0] and "connected to Redis" in lines[1]
    backend.sync.delete(state_key(backend.target.namespace))


async def test_after_a_failover_the_seed_moves_the_version_past_anything_a_worker_saw(
    backend: Backend, workers: list[Worker]
) -> None:
    """A failover can lose writes some workers saw, and a publish can land on the new master under a
    number those workers hold already: the first worker to move claims one more than it knows, so every
    worker reloads once and none misses what was published meanwhile."""
    watcher = workers[0]
    mover = Worker(ScriptedBroker(backend), Recorder())
    await mover.start()
    try:
        published = await watcher.broker.publish(RELOAD)
        await wait_until(lambda: mover.broker.version == published.version)
        await mover.stop()
        # The new master lost the last write: its state is one behind. Then a publish lands there.
        backend.sync.hset(state_key(backend.target.namespace), "version", published.version.number - 1)
        collided = await watcher.broker.publish(ReloadRequest("css"))
        assert collided.version == published.version  # the same number, another reload
        assert isinstance(mover.broker, ScriptedBroker)
        mover.broker.node, mover.broker.failed_over = "redis-b:6379", True
        await mover.start()
        bumped = ClusterVersion(published.version.epoch, published.version.number + 1)
        assert mover.seen.told()[-1] == Reload(bumped)  # a full reload, covering the css swap it missed
        await wait_until(lambda: watcher.seen.told()[-1].version == bumped)
    finally:
        await mover.stop()


async def test_a_move_that_is_no_failover_reloads_nothing(backend: Backend, workers: list[Worker]) -> None:
    mover = Worker(ScriptedBroker(backend), Recorder())
    await mover.start()
    try:
        published = await workers[0].broker.publish(RELOAD)
        await wait_until(lambda: mover.broker.version == published.version)
        await mover.stop()
        assert isinstance(mover.broker, ScriptedBroker)
        mover.broker.node = "redis-b:6379"  # a slot migration: the old node is still a master
        await mover.start()
        assert mover.broker.version == published.version and len(mover.seen.told()) == 1
    finally:
        await mover.stop()


async def test_the_subscription_leaves_a_master_the_sentinels_no_longer_name(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    broker = ScriptedBroker(backend, master_check_interval=0.1)
    seen = Recorder()
    await broker.hold(seen)
    try:
        assert len(broker.subscribes) == 1
        with caplog.at_level(logging.WARNING, logger="distreload.broker"):
            broker.moved_to = "redis-b:6379"
            await wait_until(lambda: len(broker.subscribes) >= 2, timeout=3)
        assert "the Sentinels now name redis-b:6379 as master, not redis-a:6379" in caplog.text
    finally:
        await broker.release(seen)
        backend.sync.delete(state_key(backend.target.namespace))


async def test_sentinels_that_refuse_the_check_are_warned_about_once_and_the_subscription_stays(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # A rotated Sentinel password: every check of the master is refused. Once said only at debug level,
    # so failovers silently stopped being followed.
    broker = ScriptedBroker(backend, master_check_interval=0.02, ping_interval=0.2)
    broker.sentinel_error = redis.exceptions.AuthenticationError("invalid username-password pair")
    seen = Recorder()
    with caplog.at_level(logging.WARNING, logger="distreload.broker"):
        await broker.hold(seen)
        await asyncio.sleep(1.0)
        assert broker.connected and len(broker.subscribes) == 1
        await broker.release(seen)
    said = [r for r in caplog.records if "Sentinels did not say" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert said[0].levelno == logging.WARNING
    assert "AuthenticationError: invalid username-password pair" in said[0].getMessage()


async def test_a_refused_presence_write_is_said_once_and_reloads_still_arrive(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    make_client = backend.make_client

    def refusing_client() -> Any:
        client = make_client()

        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise redis.exceptions.NoPermissionError("this user has no permissions to run the 'set' command")

        client.set = refuse
        return client

    refusing = Backend(backend.target, refusing_client, backend.sync)
    worker, publisher = (
        Worker(refusing.broker(presence_interval=0.1), Recorder()),
        Worker(backend.broker(), Recorder()),
    )
    with caplog.at_level(logging.WARNING, logger="distreload.broker"):
        await worker.start()
        await publisher.start()
        try:
            assert worker.broker.connected
            result = await publisher.broker.publish(RELOAD)
            await wait_until(lambda: worker.seen.told() == [Reload(result.version)])
            await asyncio.sleep(0.5)  # several presence intervals
            assert worker.broker.connected
        finally:
            await worker.stop()
            await publisher.stop()
    said = [r.getMessage() for r in caplog.records if "presence" in r.getMessage()]
    assert len(said) == 1 and "still delivers every reload" in said[0], said
    assert "lost the connection" not in caplog.text
    backend.sync.delete(state_key(backend.target.namespace))


async def test_stopping_ends_a_listener_that_swallowed_one_cancellation(backend: Backend) -> None:
    broker = backend.broker()
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # as a library's clean-up may do
        await asyncio.sleep(3600)

    broker._listen_once = stubborn  # type: ignore[method-assign]
    seen = Recorder()
    await broker.hold(seen)
    started = asyncio.get_running_loop().time()
    await broker.release(seen)
    assert swallowed.is_set() and asyncio.get_running_loop().time() - started < 3


def test_the_broker_does_not_import_the_publisher() -> None:
    # The publisher finds brokers; a broker publishing through the publisher made an import circle.
    import ast
    import inspect

    import distreload.broker

    tree = ast.parse(inspect.getsource(distreload.broker))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "publisher" not in imported, imported

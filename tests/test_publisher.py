"""Publishing from application code: never blocking a running loop, losing nothing across threads,
reaching the app's own broker."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from distreload import DistReload, PublishError, send_reload_signal, send_reload_signal_async
from distreload import publisher as publisher_module
from distreload.broker import MemoryBroker, RedisBroker
from distreload.config import Target
from distreload.protocol import ClusterVersion, Reload, state_key

from .asgi import raw_app
from .conftest import RedisProcess

pytestmark = pytest.mark.anyio


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A server that accepts connections and never answers: a Redis frozen mid-flight."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    thread.join(2)
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture(autouse=True)
def _no_default_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_module, "_default_broker", None)


async def test_on_a_running_loop_it_returns_at_once_and_logs_a_failure(
    silent_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    """fastapi-reloader's send_reload_signal never blocks; ours called in an async def handler neither."""
    broker = RedisBroker(Target(silent_redis, "frozen"))
    app = DistReload(raw_app(), enabled=True, broker=broker, build_id="b")
    publisher_module.use_as_default(broker)
    started = time.monotonic()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(ticker())
    with caplog.at_level(logging.ERROR, logger="distreload.publisher"):
        assert send_reload_signal() is None
        assert time.monotonic() - started < 0.05
        await asyncio.sleep(0.5)
        assert ticks >= 30  # the loop kept turning while the publish waited on Redis
        deadline = time.monotonic() + 10
        while "send_reload_signal()" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    task.cancel()
    assert "could not publish to Redis" in caplog.text  # the failure is said, not swallowed
    del app


async def test_on_a_running_loop_calls_go_out_in_order_over_the_apps_connection(
    own_redis: RedisProcess, namespace: str
) -> None:
    # Once each call started a thread and a Redis connection of its own, and two calls raced.
    broker = RedisBroker(Target(own_redis.url, namespace))
    seen: list[Reload] = []

    class Recorder:
        def deliver(self, reload: Reload) -> None:
            seen.append(reload)

        def __len__(self) -> int:
            return 0

    listener = Recorder()
    await broker.hold(listener)
    publisher_module.use_as_default(broker)
    admin = redis.Redis.from_url(own_redis.url)
    connections_before = int(admin.info("stats")["total_connections_received"])
    threads_before = set(threading.enumerate())
    calls = 20
    for number in range(calls):
        assert send_reload_signal("css", [f"/{number}.css"]) is None
    assert set(threading.enumerate()) == threads_before  # no thread per call
    deadline = time.monotonic() + 10
    while len(seen) < calls and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [reload.paths for reload in seen] == [(f"/{number}.css",) for number in range(calls)]
    assert [reload.version.number for reload in seen] == list(range(1, calls + 1))
    # The app's broker holds a pool; at most one more connection may join it, not one per call.
    opened = int(admin.info("stats")["total_connections_received"]) - connections_before
    assert opened <= 1, f"{opened} connections opened for {calls} publishes"
    await broker.release(listener)
    admin.close()


def test_a_publish_the_loop_stops_before_is_said_to_be_lost(
    silent_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def script() -> None:
        assert send_reload_signal(redis_url=silent_redis, namespace="lost") is None

    with caplog.at_level(logging.WARNING, logger="distreload.publisher"):
        asyncio.run(script())  # returns at once, cancelling the publish still waiting on Redis
    assert "the event loop stopped before 1 reload(s) went out" in caplog.text


def test_off_any_loop_it_returns_the_result_or_raises(shared_redis_url: str, namespace: str) -> None:
    result = send_reload_signal(redis_url=shared_redis_url, namespace=namespace)
    assert result is not None and result.version.number == 1
    with pytest.raises(PublishError, match="127.0.0.1:1"):
        send_reload_signal(redis_url="redis://127.0.0.1:1/0", namespace=namespace)
    with pytest.raises(ValueError, match="kind"):
        send_reload_signal("explode", redis_url=shared_redis_url, namespace=namespace)
    redis.Redis.from_url(shared_redis_url).delete(state_key(namespace))


def test_bad_arguments_raise_at_once_even_on_a_loop() -> None:
    async def handler() -> None:
        with pytest.raises(ValueError, match="spread"):
            send_reload_signal(spread=-1)
        # An int no float can hold: once an OverflowError, not the documented ValueError.
        for number in (10**400, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="spread"):
                send_reload_signal(spread=number)

    asyncio.run(handler())


async def test_it_publishes_where_the_app_listens_and_counts_real_receivers() -> None:
    """An app given its own broker: send_reload_signal() reaches that broker, not a default elsewhere."""
    own = MemoryBroker(Target("memory://", "own"))
    app = DistReload(raw_app(), enabled=True, broker=own, build_id="b")
    await app.ensure_started()
    result = await asyncio.to_thread(send_reload_signal)
    assert result is not None and result.receivers == 1 and own.version == result.version
    again = send_reload_signal("css", ["/a.css"])  # on the loop: no I/O, so the result comes at once
    assert again is not None and again.version.number == 2
    await app.shutdown()
    assert (await send_reload_signal_async()).receivers == 0  # nobody listens any more


def test_many_threads_lose_no_version(shared_redis_url: str, namespace: str) -> None:
    def publish_many(_: int) -> list[int]:
        numbers = []
        for _ in range(50):
            result = send_reload_signal(redis_url=shared_redis_url, namespace=namespace)
            assert result is not None
            numbers.append(result.version.number)
        return numbers

    with ThreadPoolExecutor(8) as pool:
        numbers = [n for batch in pool.map(publish_many, range(8)) for n in batch]
    assert sorted(numbers) == list(range(1, 401))
    redis.Redis.from_url(shared_redis_url).delete(state_key(namespace))


async def test_the_async_twin_waits_without_blocking(shared_redis_url: str, namespace: str) -> None:
    result = await send_reload_signal_async(
        "morph", spread=1.5, match="/kiosk/*", redis_url=shared_redis_url, namespace=namespace
    )
    assert result.version == ClusterVersion(result.version.epoch, 1)
    with pytest.raises(PublishError):
        await send_reload_signal_async(redis_url="redis://127.0.0.1:1/0", namespace=namespace)
    redis.Redis.from_url(shared_redis_url).delete(state_key(namespace))


def test_publish_blocking_hands_sentinel_urls_and_cluster_redirects_to_redis_py(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distreload import redis_clients, resp
    from distreload.protocol import PublishResult, ReloadRequest

    done = PublishResult(ClusterVersion("0123456789abcdef", 1), 3)
    calls: list[str] = []

    def sentinel(target: Target, request: ReloadRequest) -> PublishResult:
        calls.append(f"sentinel {target.redis_url}")
        return done

    def cluster(target: Target, request: ReloadRequest) -> PublishResult:
        calls.append(f"cluster {target.redis_url}")
        return done

    def over_resp(target: Target, request: ReloadRequest) -> PublishResult:
        calls.append(f"resp {target.redis_url}")
        raise resp.ClusterRedirect("MOVED 1234 127.0.0.1:7001")

    monkeypatch.setattr(redis_clients, "publish_via_sentinel", sentinel)
    monkeypatch.setattr(redis_clients, "publish_to_cluster", cluster)
    monkeypatch.setattr(resp, "publish_over_resp", over_resp)
    request = ReloadRequest()
    assert (
        publisher_module.publish_blocking(Target("redis+sentinel://s1,s2/mymaster/0", "n"), request) is done
    )
    assert publisher_module.publish_blocking(Target("redis://node:7000/0", "n"), request) is done
    # Sentinels never see the RESP publisher; a cluster node that redirects goes on to redis-py's client.
    assert calls == [
        "sentinel redis+sentinel://s1,s2/mymaster/0",
        "resp redis://node:7000/0",
        "cluster redis://node:7000/0",
    ]

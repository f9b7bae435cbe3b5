"""Hostile input on the channel, in the state and in publish bodies: a real worker (a RedisBroker on its
own event loop) subscribed on a redis-server of this test's own, fed random and adversarial messages,
states and HTTP publish bodies (hypothesis, bounded). Whatever it reads, it must keep its subscription
(the same pub/sub connection throughout for messages and bodies; subscribed again after a reconnect for
states), count as a receiver of the next real publish and deliver it, and say so in rate-limited
warnings, never as a lost connection; the publish endpoint answers 200 or 400, never fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distreload import DistReload
from distreload.broker import RedisBroker
from distreload.config import Target
from distreload.protocol import RELOAD_KINDS, Reload, ReloadRequest, channel_name, state_key
from distreload.publisher import publish_blocking

from ..asgi import complete, raw_app, request
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


class Worker:
    """A RedisBroker on an event loop of its own thread, and the reloads it delivered."""

    def __init__(self, target: Target) -> None:
        self.broker = RedisBroker(target, ping_interval=0.5, ping_timeout=2.0, backoff_initial=0.05)
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
        admin.client_kill_filter(_type="pubsub")
        assert wait_until(lambda: len(subscribers(admin)) == 1 and worker.broker.connected, timeout=5), (
            f"the worker did not subscribe again after reading the state's last {last[:60]!r}"
        )
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

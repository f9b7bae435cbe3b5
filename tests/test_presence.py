"""Presence records: the shape a worker writes, what readers accept, and how current they are."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import redis

from distreload.broker import RedisBroker
from distreload.config import Target
from distreload.presence import (
    BadPresence,
    PresenceUnavailable,
    WorkerPresence,
    parse_presence,
    presence_of,
    read_presence,
)
from distreload.process import WorkerIdentity
from distreload.protocol import Reload, presence_prefix

from .conftest import free_port

GOOD = {"host": "web-1", "pid": 42, "started": 1700000000.5, "streams": 3, "version": "ab-7", "build": "b1"}


def test_what_a_worker_writes_is_what_a_reader_reads() -> None:
    identity = WorkerIdentity(host="web-1", pid=42, started=1700000000.5)
    written = presence_of(identity, streams=3, version="ab-7", build="b1")
    assert json.loads(written.to_json()) == GOOD
    assert parse_presence(written.to_json()) == WorkerPresence("web-1", 42, 3, "ab-7", "b1", 1700000000.5)


def test_optional_fields_default() -> None:
    assert parse_presence(json.dumps({"host": "h", "pid": 1})) == WorkerPresence("h", 1, 0, "", "", 0.0)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (json.dumps({**GOOD, "started": 1e999}).replace("Infinity", "1e999").encode(), "started inf"),
        (json.dumps({**GOOD, "started": "yesterday"}).encode(), "started 'yesterday' is not a time"),
        (json.dumps({**GOOD, "pid": "42"}).encode(), "pid '42' is not a process id"),
        (json.dumps({**GOOD, "pid": True}).encode(), "pid True is not a process id"),
        (json.dumps({**GOOD, "pid": -1}).encode(), "pid -1"),
        (json.dumps({**GOOD, "pid": 10**400}).encode(), "is not a process id"),
        (json.dumps({**GOOD, "streams": 2.5}).encode(), "streams 2.5 is not a count"),
        (json.dumps({**GOOD, "host": ["a"]}).encode(), "host ['a'] is not text"),
        (json.dumps({**GOOD, "host": ""}).encode(), "host '' is not text"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "host"}).encode(), "host None is not text"),
        (json.dumps({**GOOD, "version": {"a": 1}}).encode(), "version {'a': 1} is not text"),
    ],
)
def test_a_record_no_worker_wrote_is_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(BadPresence) as refused:
        parse_presence(raw)
    assert why in str(refused.value)
    assert len(str(refused.value)) < 80


def test_a_long_field_is_cut() -> None:
    assert parse_presence(json.dumps({**GOOD, "build": "x" * 10_000})).build == "x" * 256


@pytest.fixture
def presence_keys(shared_redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(shared_redis_url)
    yield client
    keys = list(client.scan_iter(match=presence_prefix(namespace) + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.redis
def test_reading_keeps_the_good_records_and_names_the_bad(
    presence_keys: redis.Redis, shared_redis_url: str, namespace: str
) -> None:
    prefix = presence_prefix(namespace)
    presence_keys.set(prefix + "web-1:42", json.dumps(GOOD), ex=60)
    presence_keys.set(prefix + "evil:1", b'{"host": "evil", "pid": 1, "started": 1e999}', ex=60)
    presence_keys.set(prefix + "junk:2", b"\x00\x01", ex=60)
    cluster = read_presence(Target(shared_redis_url, namespace))
    assert cluster.workers == [parse_presence(json.dumps(GOOD))]
    assert cluster.skipped == [
        ("evil:1", "started inf is not a time"),
        ("junk:2", "not JSON (JSONDecodeError)"),
    ]


def test_an_unreachable_redis_is_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(PresenceUnavailable) as unavailable:
        read_presence(Target(url, "nobody"))
    assert str(unavailable.value).startswith(f"cannot reach Redis at {url}: ")
    assert "\n" not in str(unavailable.value)


class Streams:
    """A listener holding a number of browser streams, as an app's hub does."""

    def __init__(self) -> None:
        self.count = 0

    def deliver(self, reload: Reload) -> None:
        pass

    def __len__(self) -> int:
        return self.count


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_browser_connecting_or_leaving_is_written_at_once_not_at_the_next_refresh(
    presence_keys: redis.Redis, shared_redis_url: str, namespace: str
) -> None:
    # With a refresh interval of an hour, only a change of the stream count can have written the record.
    broker = RedisBroker(Target(shared_redis_url, namespace), presence_interval=3600, startup_wait=5)
    streams = Streams()
    key = f"{presence_prefix(namespace)}{broker.identity}"

    async def written_streams(expected: int) -> None:
        for _ in range(200):
            raw = presence_keys.get(key)
            if raw is not None and parse_presence(raw).streams == expected:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the record never said {expected} streams: {presence_keys.get(key)!r}")

    await broker.hold(streams)
    try:
        await written_streams(0)
        streams.count = 2  # two browsers connect
        await written_streams(2)
        streams.count = 1  # one leaves
        await written_streams(1)
    finally:
        await broker.release(streams)

"""A worker's link to Redis, against real servers: a single server, a Redis Cluster found from any node
(sharded pub/sub that notices a moved slot), and the master a set of Sentinels names."""

from __future__ import annotations

import asyncio
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from distreload.config import Target
from distreload.links import MESSAGE, PONG, AsyncClusterLink, AsyncSentinelLink, open_link
from distreload.protocol import PublishError, ReloadRequest, channel_name, publish_call, state_key
from distreload.redis_clients import (
    CLUSTER,
    CLUSTER_NEEDS,
    CLUSTER_SINCE,
    SENTINEL,
    STANDALONE,
    Misconfigured,
    open_sync,
    publish_via_sentinel,
    redis_py_version,
)

from .system import redis_servers
from .system.redis_servers import RedisCluster3, SentinelSet

pytestmark = pytest.mark.anyio


# --- A single server (the shared one: read-only commands and unique names) -------------------------------


async def test_a_single_server_is_told_by_hello(shared_redis_url: str, namespace: str) -> None:
    link = await open_link(Target(shared_redis_url, namespace))
    try:
        assert (link.kind, link.sharded) == (STANDALONE, False)
        subscription = await link.subscribe(channel_name(namespace), 3.0)
        try:
            assert subscription.node == shared_redis_url.split("//")[1].split("/")[0]
            await subscription.send_ping()
            assert await _next_of(subscription, PONG) is None
            await link.client.publish(channel_name(namespace), b"hello")
            assert await _next_of(subscription, MESSAGE) == b"hello"
            assert not await link.failed_over_from(subscription.node)
            assert await link.master_moved(subscription.node) is None
        finally:
            await subscription.aclose()
    finally:
        await link.aclose()
    client = open_sync(Target(shared_redis_url, namespace))
    assert (client.kind, client.sharded) == (STANDALONE, False)
    client.close()


async def test_a_worker_link_and_the_command_line_client_warn_nothing(
    shared_redis_url: str, namespace: str
) -> None:
    # What a worker does at start (link, subscribe, seed-like script) and a publish, under redis-py's
    # warnings shown rather than raised: when a new redis-py starts warning (8.2 did, about a synchronous
    # Retry given to an asyncio client), this test fails naming the warning, where every test that starts
    # a worker would only say that the worker cannot reach Redis.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        link = await open_link(Target(shared_redis_url, namespace))
        try:
            subscription = await link.subscribe(channel_name(namespace), 3.0)
            await subscription.send_ping()
            assert await _next_of(subscription, PONG) is None
            await subscription.aclose()
            await link.publish(publish_call(namespace, ReloadRequest()))
        finally:
            await link.aclose()
        client = open_sync(Target(shared_redis_url, namespace))
        client.client.delete(state_key(namespace))
        client.close()
    assert [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught] == []


async def _next_of(subscription: object, kind: str, timeout: float = 3.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = await subscription.next_event(0.5)  # type: ignore[attr-defined]
        if event is not None and event[0] == kind:
            return event[1]
    raise AssertionError(f"no {kind} within {timeout} s")


# --- A Redis Cluster ------------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster3]:
    with redis_servers.running(RedisCluster3(tmp_path / "cluster")) as built:
        yield built


@pytest.mark.redis
async def test_a_cluster_node_url_gives_sharded_pub_sub_that_notices_a_moved_slot(
    cluster: RedisCluster3, namespace: str
) -> None:
    channel = channel_name(namespace)
    slot = cluster.slot_of(channel)
    owner = cluster.owner(slot)
    elsewhere = next(node for node in cluster.masters if node is not owner)
    if redis_py_version() < CLUSTER_SINCE:
        # The lowest redis-py pyproject allows cannot subscribe on a cluster: it says what to install.
        with pytest.raises(Misconfigured, match=re.escape(CLUSTER_NEEDS)):
            await open_link(Target(elsewhere.url, namespace))
        return
    link = await open_link(Target(elsewhere.url, namespace))  # any node will do
    try:
        assert isinstance(link, AsyncClusterLink) and (link.kind, link.sharded) == (CLUSTER, True)
        subscription = await link.subscribe(channel, 3.0)
        assert subscription.node == owner.address  # on the slot's owner, not the node the URL names
        await subscription.send_ping()
        assert await _next_of(subscription, PONG) is None
        assert owner.command("SPUBLISH", channel, "one") == 1
        assert await _next_of(subscription, MESSAGE) == b"one"
        # The state and the channel share a slot: the seed runs where the subscription is.
        assert cluster.slot_of(state_key(namespace)) == slot
        await asyncio.to_thread(cluster.migrate_slot, slot, elsewhere)
        with pytest.raises(ConnectionError, match="moved the namespace's slot"):
            await _next_of(subscription, MESSAGE)
        await subscription.aclose()
        again = await link.subscribe(channel, 3.0)  # from a fresh slot map
        try:
            assert again.node == elsewhere.address
            assert not await link.failed_over_from(owner.address)  # migrated, not failed over
            assert elsewhere.command("SPUBLISH", channel, "two") == 1
            assert await _next_of(again, MESSAGE) == b"two"
        finally:
            await again.aclose()
    finally:
        await link.aclose()
    client = open_sync(Target(owner.url, namespace))
    assert (client.kind, client.sharded) == (CLUSTER, True)
    client.close()
    with pytest.raises(Misconfigured, match="only database 0"):
        await open_link(Target(owner.url.replace("/0", "/1"), namespace))


# --- Sentinels ------------------------------------------------------------------------------------------


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with redis_servers.running(SentinelSet(tmp_path / "sentinel")) as built:
        yield built


@pytest.mark.redis
async def test_a_sentinel_link_follows_the_master_the_sentinels_name(
    sentinels: SentinelSet, namespace: str
) -> None:
    target = Target(sentinels.url(), namespace)
    link = await open_link(target)
    try:
        assert isinstance(link, AsyncSentinelLink) and link.kind == SENTINEL
        subscription = await link.subscribe(channel_name(namespace), 3.0)
        try:
            old = sentinels.primary
            assert subscription.node == old.address == await link.master()
            assert await link.master_moved(subscription.node) is None
            assert publish_via_sentinel(target, ReloadRequest()).receivers == 1
            await asyncio.to_thread(sentinels.failover, wait_demoted=False)
            # The old master still answers (and is still a master) for ~10 s: asking tells at once.
            assert old.info("replication")["role"] == "master"
            assert await link.master_moved(subscription.node) == sentinels.primary.address
            assert await link.failed_over_from(subscription.node)
        finally:
            await subscription.aclose()
        reply = await link.publish(publish_call(namespace, ReloadRequest()))
        assert (
            int(reply[1]) == 2 and sentinels.primary.command("HGET", state_key(namespace), "version") == "2"
        )
    finally:
        await link.aclose()
    # A redis:// URL naming a Sentinel process: refused, with the URL to write instead.
    host, port = sentinels.sentinel_addresses[0]
    with pytest.raises(Misconfigured, match=r"redis\+sentinel://"):
        await open_link(Target(f"redis://{host}:{port}/0", namespace))
    with pytest.raises(PublishError, match=r"a Redis Sentinel\? name it redis\+sentinel://"):
        from distreload.publisher import publish_blocking

        publish_blocking(Target(f"redis://{host}:{port}/0", namespace), ReloadRequest())


async def test_closing_quietly_gives_up_on_a_frozen_server_but_not_on_a_cancellation() -> None:
    from distreload.links import _close_quietly

    class Frozen:
        async def aclose(self) -> None:
            await asyncio.sleep(3600)

    started = time.monotonic()
    await _close_quietly(Frozen())  # gives up after a second
    assert 0.9 < time.monotonic() - started < 3
    task = asyncio.ensure_future(_close_quietly(Frozen()))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # the task that was closing stops: the cancellation is not swallowed

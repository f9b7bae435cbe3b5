"""Clients for a URL: what HELLO tells, how Sentinel options are split, what counts as a refusal, and the
links and subscriptions themselves against real servers (a single one, a 3-master cluster, Sentinels)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.exceptions

from distreload.config import Target, parse_sentinel_url
from distreload.protocol import PublishError, ReloadRequest, channel_name, state_key
from distreload.redis_clients import (
    CLUSTER,
    MESSAGE,
    PONG,
    SENTINEL,
    STANDALONE,
    AsyncClusterLink,
    AsyncSentinelLink,
    Misconfigured,
    Server,
    _check_usable,
    _cluster_error,
    _no_master_error,
    is_refusal,
    open_link,
    open_sync,
    publish_via_sentinel,
    sentinel_arguments,
    server_from_hello,
)

from .system import redis_servers
from .system.redis_servers import RedisCluster3, SentinelSet

pytestmark = pytest.mark.anyio


# --- Without a server ---------------------------------------------------------------------------------


def test_hello_in_either_protocol_tells_mode_and_version() -> None:
    resp3 = {b"server": b"redis", b"version": b"7.0.15", b"proto": 3, b"mode": b"cluster", b"role": b"master"}
    resp2 = [b"server", b"redis", b"version", b"6.2.14", b"proto", 2, b"mode", b"cluster"]
    assert server_from_hello(resp3) == Server(CLUSTER, (7, 0, 15))
    assert server_from_hello(resp2) == Server(CLUSTER, (6, 2, 14))
    assert server_from_hello({"mode": "sentinel", "version": "7.2.4"}) == Server(SENTINEL, (7, 2, 4))
    # Sharded pub/sub only on a cluster of Redis 7 or later; plain pub/sub is broadcast on older ones.
    assert server_from_hello(resp3).sharded and not server_from_hello(resp2).sharded
    assert not Server(STANDALONE, (7, 2)).sharded


def test_a_url_that_names_a_sentinel_or_a_cluster_database_is_refused_with_what_to_write() -> None:
    with pytest.raises(Misconfigured, match=r"redis\+sentinel://s1:26379/<master-name>/<db>"):
        _check_usable("redis://s1:26379/0", Server(SENTINEL, (7, 0)))
    with pytest.raises(Misconfigured, match="only database 0"):
        _check_usable("redis://node:7000/2", Server(CLUSTER, (7, 0)))
    _check_usable("redis://node:7000/0", Server(CLUSTER, (7, 0)))
    _check_usable("redis://one:6379/2", Server(STANDALONE, (7, 0)))


def test_a_refused_cluster_slots_is_called_what_it_is() -> None:
    from redis.exceptions import RedisClusterException

    misleading = RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: "
        "Cluster mode is not enabled on this node"
    )
    said = _cluster_error(misleading)
    assert isinstance(said, Misconfigured) and "+cluster|slots" in str(said) and is_refusal(said)
    other = RedisClusterException("TTL exhausted.")
    assert _cluster_error(other) is other


def test_sentinel_options_keep_each_sides_credentials_apart() -> None:
    settings = parse_sentinel_url(
        "rediss+sentinel://app:datapw@s1:1,s2:2/mymaster/4"
        "?sentinel_password=sentpw&ssl_ca_certs=/ca.pem&ssl_check_hostname=false"
    )
    addresses, to_sentinels, to_data_nodes = sentinel_arguments(settings)
    assert addresses == [("s1", 1), ("s2", 2)]
    assert (to_sentinels["username"], to_sentinels["password"]) == (None, "sentpw")
    assert (to_data_nodes["username"], to_data_nodes["password"], to_data_nodes["db"]) == ("app", "datapw", 4)
    for side in (to_sentinels, to_data_nodes):  # TLS to both, and no hidden retries on either
        assert (
            side["ssl"] is True and side["ssl_ca_certs"] == "/ca.pem" and side["ssl_check_hostname"] is False
        )
        assert side["retry"].get_retries() == 0
    assert "db" not in to_sentinels


def test_refusals_are_told_from_failures() -> None:
    script = (
        "The user executing the script can't run this command or subcommand script: abc, on @user_script:3."
    )
    assert is_refusal(redis.exceptions.NoPermissionError("this user has no permissions to run the 'ping'"))
    assert is_refusal(redis.exceptions.AuthenticationError("invalid username-password pair"))
    assert is_refusal(redis.exceptions.ResponseError(script))
    assert is_refusal(
        redis.exceptions.ResponseError("The user executing the script can't publish to the channel")
    )
    assert is_refusal(Misconfigured("names a Sentinel"))
    assert not is_refusal(redis.exceptions.ConnectionError("Error 111 connecting"))
    assert not is_refusal(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"))
    assert not is_refusal(TimeoutError())


def test_no_master_found_becomes_one_line_with_a_hint() -> None:
    from redis.sentinel import MasterNotFoundError

    settings = parse_sentinel_url("redis+sentinel://s1/mymaster")
    long = MasterNotFoundError(
        "No master found for 'mymaster' : <redis.client.Redis(<redis.connection.ConnectionPool("
        + "x" * 900
        + ")>)> - AuthenticationError('invalid password')"
    )
    short = _no_master_error(settings, long)
    assert isinstance(short, MasterNotFoundError) and len(str(short)) < 250
    assert "AuthenticationError" in str(short) and "sentinel_password" in str(short)
    other = ValueError("x")
    assert _no_master_error(settings, other) is other


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
        reply = await link.publish(
            [state_key(namespace), "0123456789abcdef", ReloadRequest().to_json(), channel_name(namespace)]
        )
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
    from distreload.redis_clients import _close_quietly

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

"""A worker's link to Redis: one per topology (a single server, a Redis Cluster, the master a set of
Sentinels names), and the subscription it holds there.

Cluster routing and Sentinel discovery are redis-py's (see redis_clients); what is distreload's is when to
look again: after a failover or a slot migration, before and after a publish through Sentinels, and how to
tell a subscription that is gone (a server that dropped it says so only by what stops arriving).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .config import SentinelSettings, Target, is_sentinel_url, parse_sentinel_url
from .redis_clients import (
    CLUSTER,
    SENTINEL,
    STANDALONE,
    MasterChanged,
    address_of,
    async_client,
    cluster_error,
    cluster_options,
    identify,
    make_sentinel,
    no_master_error,
    require_cluster_support,
)
from .timeouts import within

if TYPE_CHECKING:
    import redis.asyncio.cluster


class AsyncLink:
    """A worker's way to one Redis deployment: a client for commands, and how to subscribe there.

    This one is a single server (a ``redis://``, ``rediss://`` or ``unix://`` URL that is not a cluster
    node); subclasses add what a cluster and a Sentinel-watched master need.
    """

    kind = STANDALONE
    sharded = False

    def __init__(self, client: Any, display_url: str) -> None:
        self.client = client
        self.display_url = display_url

    async def subscribe(self, channel: str, timeout: float) -> Subscription:
        """Subscribe on a connection of its own and wait (at most ``timeout``) for Redis to confirm."""
        subscription = PlainSubscription(self.client.pubsub())
        try:
            await subscription.open(channel, timeout)
        except BaseException:
            await subscription.aclose()
            raise
        return subscription

    async def failed_over_from(self, node: str) -> bool:
        """Whether ``node``, where this worker's last subscription was, lost its role to another node since
        (a failover): writes acknowledged there may be gone. A slot migration is no failover."""
        return False

    async def master_moved(self, node: str) -> str | None:
        """The new master's address when the deployment now names another master than ``node``."""
        return None

    async def eval(self, script: str, numkeys: int, *arguments: str) -> Any:
        return await self.client.eval(script, numkeys, *arguments)

    async def publish(self, call: tuple[Any, ...]) -> Any:
        """Run the publish script (``call``: :func:`~distreload.protocol.publish_call`); raise what
        redis-py raised."""
        return await self.client.eval(*call)

    async def aclose(self) -> None:
        await _close_quietly(self.client)


class AsyncClusterLink(AsyncLink):
    """A Redis Cluster, reached from any node of it: commands are routed by redis-py, the subscription is
    sharded (Redis 7+) on the node that owns the namespace's slot, and refreshed by hand, since redis-py's
    async cluster pub/sub does not recover from a dead node or a moved slot by itself."""

    kind = CLUSTER

    def __init__(self, client: redis.asyncio.cluster.RedisCluster, display_url: str, sharded: bool) -> None:
        super().__init__(client, display_url)
        self.sharded = sharded
        self._fresh = True  # initialize() has just read the slot map

    async def refresh(self) -> None:
        """Read the slot map again (before every resubscribe: the old one is why the last one was lost)."""
        if self._fresh:
            self._fresh = False
            return
        try:
            await self.client.nodes_manager.initialize()
        except Exception as exc:
            raise cluster_error(exc) from exc

    async def subscribe(self, channel: str, timeout: float) -> Subscription:
        await within(self.refresh(), timeout)
        subscription: Subscription
        if self.sharded:
            subscription = ShardedSubscription(self.client.pubsub())
        else:
            # Before Redis 7 a plain PUBLISH on any node reaches subscribers on every node.
            subscription = PlainSubscription(self.client.pubsub(node=self.client.get_random_node()))
        try:
            await subscription.open(channel, timeout)
        except BaseException:
            await subscription.aclose()
            raise
        return subscription

    async def failed_over_from(self, node: str) -> bool:
        return node not in {primary.name for primary in self.client.get_primaries()}


class AsyncSentinelLink(AsyncLink):
    """The master a set of Sentinels names. Connections ask the Sentinels where the master is when they
    connect; a subscription also asks again every second (:meth:`master_moved`), and every publish asks
    before and after it runs, because after ``SENTINEL FAILOVER`` the old master stays writable for ~10 s
    and what is written there is lost."""

    kind = SENTINEL

    def __init__(self, settings: SentinelSettings, display_url: str) -> None:
        self.settings = settings
        self.sentinel = make_sentinel(settings, asynchronous=True)
        super().__init__(self.sentinel.master_for(settings.master_name), display_url)

    async def master(self) -> str:
        """host:port of the master the Sentinels name now."""
        try:
            host, port = await self.sentinel.discover_master(self.settings.master_name)
        except Exception as exc:
            raise no_master_error(self.settings, exc) from exc
        return f"{host}:{port}"

    async def subscribe(self, channel: str, timeout: float) -> Subscription:
        try:
            return await super().subscribe(channel, timeout)
        except Exception as exc:
            raise no_master_error(self.settings, exc) from exc

    async def failed_over_from(self, node: str) -> bool:
        return True  # the Sentinels name another master only after a failover

    async def master_moved(self, node: str) -> str | None:
        master = await self.master()
        return master if master != node else None

    async def publish(self, call: tuple[Any, ...]) -> Any:
        # A client of its own, so no pooled connection to a replaced master is ever reused.
        client = self.sentinel.master_for(self.settings.master_name)
        try:
            reply = await client.eval(*call)
            used = client.connection_pool.master_address
        except Exception as exc:
            raise no_master_error(self.settings, exc) from exc
        finally:
            await _close_quietly(client)
        await self._check_unchanged(used)
        return reply

    async def _check_unchanged(self, used: Any) -> None:
        if used is None:
            return
        now = await self.master()
        if now != f"{used[0]}:{used[1]}":
            raise MasterChanged(used, now)

    async def aclose(self) -> None:
        await super().aclose()
        for client in self.sentinel.sentinels:
            await _close_quietly(client)


async def open_link(target: Target) -> AsyncLink:
    """Connect to what ``target`` names, telling a cluster node from a single server by asking it."""
    url = target.redis_url
    if is_sentinel_url(url):
        return AsyncSentinelLink(parse_sentinel_url(url), target.display_url())
    probe: Any = async_client(url)
    try:
        try:
            hello = await probe.execute_command("HELLO")
        except Exception as exc:
            hello = exc
        server = identify(url, hello)
    except BaseException:
        await _close_quietly(probe)
        raise
    if server.mode != CLUSTER:
        return AsyncLink(probe, target.display_url())
    await _close_quietly(probe)
    require_cluster_support()
    from redis.asyncio.cluster import RedisCluster

    cluster = RedisCluster.from_url(url, **cluster_options(asynchronous=True))
    try:
        # Before any pub/sub call: redis-py 8.1 raises KeyError / SlotNotCoveredError on a cluster client
        # that has not read its slot map yet (redis-py #4296).
        await cluster.initialize()
    except BaseException as exc:
        await _close_quietly(cluster)
        raise cluster_error(exc) from exc
    return AsyncClusterLink(cluster, target.display_url(), server.sharded)


async def _close_quietly(closable: Any) -> None:
    """Close, giving up after a second (a frozen server never answers); a cancellation of the task that
    closes goes on (swallowing it would keep a stopped listener running)."""
    try:
        close = getattr(closable, "aclose", None) or closable.close
        await within(close(), 1.0)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:
        pass


# --- Async subscriptions ----------------------------------------------------------------------------------


MESSAGE = "message"
PONG = "pong"


class Subscription:
    """One subscription on one connection: open it, read what arrives, ping through it, close it."""

    node = "?"  # host:port of the server it is on

    async def open(self, channel: str, timeout: float) -> None:
        raise NotImplementedError

    async def next_event(self, timeout: float) -> tuple[str, Any] | None:
        """(MESSAGE, data), (PONG, None), another kind with None, or None when nothing came in time.
        Raises ConnectionError when the subscription is gone."""
        raise NotImplementedError

    async def send_ping(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class PlainSubscription(Subscription):
    """SUBSCRIBE on one server (a single Redis, a Sentinel-watched master, a cluster before Redis 7)."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    async def open(self, channel: str, timeout: float) -> None:
        await within(self.pubsub.subscribe(channel), timeout)
        await _confirmed(lambda remaining: self.pubsub.get_message(timeout=remaining), "subscribe", timeout)
        self.node = address_of(self.pubsub.connection)

    async def next_event(self, timeout: float) -> tuple[str, Any] | None:
        message = await self.pubsub.get_message(timeout=timeout)
        if message is None:
            return None
        kind = message.get("type")
        if kind == "message":
            return MESSAGE, message.get("data")
        return (PONG if kind == "pong" else str(kind)), None

    async def send_ping(self) -> None:
        await self.pubsub.ping()

    async def aclose(self) -> None:
        await _close_quietly(self.pubsub)


class ShardedSubscription(Subscription):
    """SSUBSCRIBE through redis-py's async ClusterPubSub, on the node that owns the channel's slot.

    redis-py keeps the subscription in a per-node PubSub; when the slot moves the server drops it with a
    ``sunsubscribe`` nobody asked for, and with no subscription left ``get_sharded_message`` returns at once
    (a loop around it would spin): both mean "subscribe again", which the broker does from a fresh slot map.
    """

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    async def open(self, channel: str, timeout: float) -> None:
        await within(self.pubsub.ssubscribe(channel), timeout)
        await _confirmed(self._next, "ssubscribe", timeout)
        self.node = next(iter(self.pubsub.node_pubsub_mapping), "?")

    async def _next(self, timeout: float) -> Any:
        if not self.pubsub.node_pubsub_mapping:
            raise ConnectionError("Redis Cluster dropped the shard subscription")
        return await self.pubsub.get_sharded_message(timeout=timeout)

    async def next_event(self, timeout: float) -> tuple[str, Any] | None:
        message = await self._next(timeout)
        if message is None:
            return None
        kind = message.get("type")
        if kind == "smessage":
            return MESSAGE, message.get("data")
        if kind == "sunsubscribe":
            raise ConnectionError(f"Redis Cluster moved the namespace's slot away from {self.node}")
        return (PONG if kind == "pong" else str(kind)), None

    async def send_ping(self) -> None:
        # The cluster-level ping() opens another connection (and answers through get_message): ping on
        # the node's own subscribed connection, whose pong comes back through get_sharded_message.
        node_pubsub = next(iter(self.pubsub.node_pubsub_mapping.values()), None)
        if node_pubsub is None:
            raise ConnectionError("Redis Cluster dropped the shard subscription")
        await node_pubsub.ping()

    async def aclose(self) -> None:
        await _close_quietly(self.pubsub)


async def _confirmed(read: Any, kind: str, timeout: float) -> None:
    """Read until Redis confirms the subscription; a refusal (an ACL rule) arrives here as an error."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        message = await within(read(remaining), remaining + 0.5)
        if message is not None and message.get("type") == kind:
            return
    raise ConnectionError(f"Redis did not confirm the subscription within {timeout:g} s")

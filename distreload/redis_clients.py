"""redis-py clients for a Redis URL, made the way distreload needs them: one Redis server, a Redis Cluster
found from any of its nodes, or the master a set of Sentinels names.

The topology of a ``redis://`` URL is not configured but asked: ``HELLO`` (which every user may run, whatever
its ACL rules) answers ``mode: standalone|cluster|sentinel`` and the server's version. Cluster routing
(MOVED, ASK, slot maps) and Sentinel discovery are redis-py's; what is distreload's is when to look again:
after a failover or a slot migration, before a publish (Sentinel), and how to tell a lost subscription.

distreload owns its reconnect loop, so redis-py's own retries are off: they differ between versions and
would hide an outage (or publish twice when a reply is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .config import SentinelSettings, Target, is_sentinel_url, parse_sentinel_url
from .protocol import (
    _PUBLISH_SCRIPT,
    PUBLISH_KEYS,
    PublishError,
    PublishResult,
    ReloadRequest,
    describe_publish_failure,
    publish_arguments,
    publish_result,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster

STANDALONE = "standalone"
CLUSTER = "cluster"
SENTINEL = "sentinel"
SHARDED_SINCE = (7, 0)  # SSUBSCRIBE / SPUBLISH


class Misconfigured(Exception):
    """The URL reaches Redis, but not a Redis that distreload can use as given; the message says what to
    change. Retrying does not help until someone changes the setting (or the ACL rules)."""


def redis_options() -> dict[str, Any]:
    """Options for every redis-py client distreload makes."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        # No CLIENT SETINFO after connecting: two round trips per connection that a least-privilege user
        # is refused anyway, and a look-up of package versions that the command line pays for.
        "driver_info": None,
    }


def async_client(url: str) -> redis.asyncio.Redis:
    """A client for one Redis server (no topology detection)."""
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, **redis_options())


def sync_client(url: str) -> redis.Redis:
    """A client for one Redis server (no topology detection)."""
    import redis

    return redis.Redis.from_url(url, **redis_options())


def is_refusal(exc: BaseException) -> bool:
    """Whether Redis refused rather than failed: a missing ACL right, a wrong password, a setting that
    names the wrong thing. These do not go away by themselves, so they are reported as such and retried
    slowly."""
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

    if isinstance(exc, Misconfigured | NoPermissionError | AuthenticationError):
        return True
    text = str(exc)
    # What a script runs is refused as a plain ResponseError: "The user executing the script can't run
    # this command ..." (or "can't publish to the channel ...").
    return isinstance(exc, ResponseError) and (
        "user executing the script can't" in text
        or "no permissions" in text
        or text.startswith(("NOPERM", "WRONGPASS", "NOAUTH"))
    )


# --- What is at the other end of a URL -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    """What ``HELLO`` says about a server: its mode and version."""

    mode: str
    version: tuple[int, ...]

    @property
    def sharded(self) -> bool:
        """Whether distreload subscribes with SSUBSCRIBE: a Redis Cluster of Redis 7 or later."""
        return self.mode == CLUSTER and self.version >= SHARDED_SINCE


def server_from_hello(reply: Any) -> Server:
    """Read HELLO's reply (a map in RESP3, a flat list in RESP2)."""
    if isinstance(reply, list | tuple):
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    fields = {_text(key): value for key, value in dict(reply).items()}
    mode = _text(fields.get("mode", STANDALONE))
    version = tuple(int(part) for part in _text(fields.get("version", "0")).split(".") if part.isdigit())
    return Server(mode, version)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


_OLD_SERVER = Server(STANDALONE, (5,))  # before Redis 6 there is no HELLO, and no cluster pub/sub to speak of


def _server_or_old(url: str, exc: BaseException) -> Server:
    """What a failed HELLO still tells: a server too old to know it, or a cluster node refusing the
    database the URL names; anything else is raised."""
    import redis.exceptions

    if isinstance(exc, redis.exceptions.ResponseError):
        if "unknown command" in str(exc).lower():
            return _OLD_SERVER
        if "SELECT is not allowed in cluster mode" in str(exc):
            _check_usable(url, Server(CLUSTER, ()))
    raise exc


def _check_usable(url: str, server: Server) -> None:
    """Refuse, with what to change, a URL that names something distreload cannot use as named."""
    if server.mode == SENTINEL:
        parts = urlsplit(url)
        raise Misconfigured(
            f"{parts.hostname}:{parts.port} is a Redis Sentinel, not a data node: use "
            f"redis+sentinel://{parts.hostname}:{parts.port}/<master-name>/<db>"
        )
    if server.mode == CLUSTER and _database(url):
        raise Misconfigured(
            f"a Redis Cluster has only database 0, and the URL names database {_database(url)}"
        )


def _database(url: str) -> int:
    parts = urlsplit(url)
    path = parts.path.strip("/")
    return int(path) if path.isdigit() else 0


def _cluster_options() -> dict[str, Any]:
    # A cluster that lost every copy of some slots still serves the namespaces in the others.
    return {**redis_options(), "require_full_coverage": False}


def _cluster_error(exc: BaseException) -> BaseException:
    """redis-py reports a refused CLUSTER SLOTS as 'Cluster mode is not enabled' (on a node that HELLO has
    just called a cluster node): say what it is."""
    if "Cluster mode is not enabled" in str(exc):
        return Misconfigured(
            "the Redis Cluster refused CLUSTER SLOTS, which finding its nodes needs: grant the user "
            "+cluster|slots and +command"
        )
    return exc


# --- Sentinel ------------------------------------------------------------------------------------------


SentinelArguments = tuple[list[tuple[str, int]], dict[str, Any], dict[str, Any]]


def sentinel_arguments(settings: SentinelSettings) -> SentinelArguments:
    """The Sentinels' addresses, the options for connections to them, and the options for connections to
    the data nodes, as redis-py's ``Sentinel(addresses, sentinel_kwargs=..., **data_options)`` takes them.

    The two sides never share credentials: the URL's userinfo goes to the data nodes only, and
    ``sentinel_username``/``sentinel_password`` to the Sentinels only. TLS options go to both.
    """
    tls: dict[str, Any] = {}
    if settings.tls:
        tls["ssl"] = True
        for name, value in settings.tls_options:
            tls[name] = value.lower() not in ("false", "no", "0") if name == "ssl_check_hostname" else value
    options = redis_options()
    # A Sentinel that does not answer within 2 s is skipped for the next one (redis-py asks them in turn).
    to_sentinels = {
        **options,
        "socket_timeout": 2.0,
        **tls,
        "username": settings.sentinel_username,
        "password": settings.sentinel_password,
    }
    to_data_nodes = {
        **options,
        **tls,
        "username": settings.username,
        "password": settings.password,
        "db": settings.db,
    }
    return list(settings.sentinels), to_sentinels, to_data_nodes


def make_sentinel(settings: SentinelSettings, *, asynchronous: bool) -> Any:
    """redis-py's Sentinel client (asyncio or not) for these settings."""
    if asynchronous:
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel

        factory: Any = AsyncSentinel
    else:
        from redis.sentinel import Sentinel

        factory = Sentinel
    addresses, to_sentinels, to_data_nodes = sentinel_arguments(settings)
    return factory(addresses, sentinel_kwargs=to_sentinels, **to_data_nodes)


def _no_master_error(settings: SentinelSettings, exc: BaseException) -> BaseException:
    """redis-py's MasterNotFoundError carries a 900-character repr of every Sentinel: make it one line that
    says what each Sentinel answered."""
    text = str(exc)
    if "No master found" not in text:
        return exc
    reasons = []
    for reason in ("AuthenticationError", "ConnectionError", "TimeoutError", "NoPermissionError"):
        if reason in text:
            reasons.append(reason)
    detail = f" (the Sentinels answered: {', '.join(reasons)})" if reasons else ""
    hint = ""
    if "AuthenticationError" in text:
        hint = "; the Sentinels' own password goes in ?sentinel_password=, the data nodes' in the userinfo"
    elif "NoPermissionError" in text:
        hint = "; the Sentinels' ACL user needs +sentinel|masters"
    error = type(exc)(f"no Sentinel names a healthy master {settings.master_name!r}{detail}{hint}")
    return error


def _address(connection: Any) -> str:
    """host:port of a redis-py connection (a unix socket: its path)."""
    host = getattr(connection, "host", None)
    if host is None:
        return str(getattr(connection, "path", "?"))
    return f"{host}:{connection.port}"


# --- Async: what a worker holds ------------------------------------------------------------------------


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

    async def publish(self, arguments: list[str]) -> Any:
        """Run the publish script; raise what redis-py raised."""
        return await self.client.eval(_PUBLISH_SCRIPT, PUBLISH_KEYS, *arguments)

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
            raise _cluster_error(exc) from exc

    async def subscribe(self, channel: str, timeout: float) -> Subscription:
        await asyncio.wait_for(self.refresh(), timeout)
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
            raise _no_master_error(self.settings, exc) from exc
        return f"{host}:{port}"

    async def subscribe(self, channel: str, timeout: float) -> Subscription:
        try:
            return await super().subscribe(channel, timeout)
        except Exception as exc:
            raise _no_master_error(self.settings, exc) from exc

    async def failed_over_from(self, node: str) -> bool:
        return True  # the Sentinels name another master only after a failover

    async def master_moved(self, node: str) -> str | None:
        master = await self.master()
        return master if master != node else None

    async def publish(self, arguments: list[str]) -> Any:
        # A client of its own, so no pooled connection to a replaced master is ever reused.
        client = self.sentinel.master_for(self.settings.master_name)
        try:
            reply = await client.eval(_PUBLISH_SCRIPT, PUBLISH_KEYS, *arguments)
            used = client.connection_pool.master_address
        except Exception as exc:
            raise _no_master_error(self.settings, exc) from exc
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


class MasterChanged(Exception):
    """The Sentinels named another master while a publish ran on the old one."""

    def __init__(self, used: Any, now: str) -> None:
        super().__init__(
            f"the Sentinels named {now} as master while the reload was published on "
            f"{used[0]}:{used[1]}: it may reach only some pages; publish again"
        )


async def open_link(target: Target) -> AsyncLink:
    """Connect to what ``target`` names, telling a cluster node from a single server by asking it."""
    url = target.redis_url
    if is_sentinel_url(url):
        return AsyncSentinelLink(parse_sentinel_url(url), target.display_url())
    probe: Any = async_client(url)
    try:
        try:
            server = server_from_hello(await probe.execute_command("HELLO"))
        except Exception as exc:
            server = _server_or_old(url, exc)
        _check_usable(url, server)
    except BaseException:
        await _close_quietly(probe)
        raise
    if server.mode != CLUSTER:
        return AsyncLink(probe, target.display_url())
    await _close_quietly(probe)
    from redis.asyncio.cluster import RedisCluster

    cluster = RedisCluster.from_url(url, **_cluster_options())
    try:
        # Before any pub/sub call: redis-py 8.1 raises KeyError / SlotNotCoveredError on a cluster client
        # that has not read its slot map yet (redis-py #4296).
        await cluster.initialize()
    except BaseException as exc:
        await _close_quietly(cluster)
        raise _cluster_error(exc) from exc
    return AsyncClusterLink(cluster, target.display_url(), server.sharded)


async def _close_quietly(closable: Any) -> None:
    """Close, giving up after a second (a frozen server never answers); a cancellation of the task that
    closes goes on (swallowing it would keep a stopped listener running)."""
    try:
        close = getattr(closable, "aclose", None) or closable.close
        await asyncio.wait_for(close(), 1.0)
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
        await asyncio.wait_for(self.pubsub.subscribe(channel), timeout)
        await _confirmed(lambda remaining: self.pubsub.get_message(timeout=remaining), "subscribe", timeout)
        self.node = _address(self.pubsub.connection)

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
        await asyncio.wait_for(self.pubsub.ssubscribe(channel), timeout)
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
        message = await asyncio.wait_for(read(remaining), remaining + 0.5)
        if message is not None and message.get("type") == kind:
            return
    raise ConnectionError(f"Redis did not confirm the subscription within {timeout:g} s")


# --- Sync: the command line and send_reload_signal() off the event loop ----------------------------------


@dataclass
class SyncClient:
    """A redis-py client for what a URL names, and how to subscribe there."""

    client: Any
    kind: str
    sharded: bool
    sentinel: Any = None  # the Sentinels' clients, for a master they name

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        for sentinel_client in getattr(self.sentinel, "sentinels", ()):
            with contextlib.suppress(Exception):
                sentinel_client.close()


def open_sync(target: Target) -> SyncClient:
    """Connect to what ``target`` names (a single server, a cluster found from one node, or the master the
    Sentinels name)."""
    url = target.redis_url
    if is_sentinel_url(url):
        settings = parse_sentinel_url(url)
        sentinel = make_sentinel(settings, asynchronous=False)
        return SyncClient(sentinel.master_for(settings.master_name), SENTINEL, False, sentinel)
    client: Any = sync_client(url)
    try:
        try:
            server = server_from_hello(client.execute_command("HELLO"))
        except Exception as exc:
            server = _server_or_old(url, exc)
        _check_usable(url, server)
    except BaseException:
        client.close()
        raise
    if server.mode != CLUSTER:
        return SyncClient(client, STANDALONE, False)
    client.close()
    return SyncClient(_sync_cluster(url), CLUSTER, server.sharded)


def _sync_cluster(url: str) -> redis.cluster.RedisCluster:
    from redis.cluster import RedisCluster

    try:
        return RedisCluster.from_url(url, **_cluster_options())
    except Exception as exc:
        raise _cluster_error(exc) from exc


def publish_to_cluster(target: Target, request: ReloadRequest) -> PublishResult:
    """Publish through redis-py's cluster client (which finds the slot's owner); raise PublishError."""
    try:
        client = _sync_cluster(target.redis_url)
        try:
            reply = client.eval(_PUBLISH_SCRIPT, PUBLISH_KEYS, *publish_arguments(target.namespace, request))
        finally:
            client.close()
    except Exception as exc:
        raise PublishError(describe_publish_failure(target.display_url(), exc)) from exc
    return publish_result(reply)


def publish_via_sentinel(target: Target, request: ReloadRequest) -> PublishResult:
    """Publish on the master the Sentinels name, then check they still name it; raise PublishError."""
    settings = parse_sentinel_url(target.redis_url)
    sentinel = make_sentinel(settings, asynchronous=False)
    client = sentinel.master_for(settings.master_name)
    try:
        reply = client.eval(_PUBLISH_SCRIPT, PUBLISH_KEYS, *publish_arguments(target.namespace, request))
        used = client.connection_pool.master_address
        host, port = sentinel.discover_master(settings.master_name)
        if used is not None and (host, port) != tuple(used):
            raise MasterChanged(used, f"{host}:{port}")
    except Exception as exc:
        raise PublishError(
            describe_publish_failure(target.display_url(), _no_master_error(settings, exc))
        ) from exc
    finally:
        client.close()
        for sentinel_client in sentinel.sentinels:
            sentinel_client.close()
    return publish_result(reply)

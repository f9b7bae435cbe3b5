"""redis-py clients for a Redis URL, made the way distreload needs them: one Redis server, a Redis Cluster
found from any of its nodes, or the master a set of Sentinels names.

The topology of a ``redis://`` URL is not configured but asked: ``HELLO`` (which every user may run, whatever
its ACL rules) answers ``mode: standalone|cluster|sentinel`` and the server's version. Cluster routing
(MOVED, ASK, slot maps) and Sentinel discovery are redis-py's; what is distreload's is when to look again:
after a failover or a slot migration, before a publish (Sentinel), and how to tell a lost subscription.

distreload owns its reconnect loop, so redis-py's own retries are off: they differ between versions and
would hide an outage (or publish twice when a reply is lost).

One server and Sentinels work with every redis-py pyproject allows (5.0.1 on); a Redis Cluster needs
redis-py 8.0, whose asyncio cluster client subscribes (``distreload[cluster]``), and says so in one line.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import SentinelSettings, Target, is_sentinel_url, parse_redis_url, parse_sentinel_url
from .protocol import (
    PublishError,
    PublishResult,
    ReloadRequest,
    describe_publish_failure,
    publish_call,
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


def redis_options(*, asynchronous: bool) -> dict[str, Any]:
    """Options for every redis-py client distreload makes. An asyncio client gets the asyncio ``Retry``:
    redis-py 8.2 warns when it is given the synchronous one (and converts it)."""
    from redis.backoff import NoBackoff

    if asynchronous:
        from redis.asyncio.retry import Retry as AsyncRetry

        retry: Any = AsyncRetry(NoBackoff(), 0)
    else:
        from redis.retry import Retry

        retry = Retry(NoBackoff(), 0)
    return {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "retry": retry,
        "health_check_interval": 0,
        **_no_client_setinfo(),
    }


def _no_client_setinfo() -> dict[str, Any]:
    """No CLIENT SETINFO after connecting: two round trips per connection that a least-privilege user is
    refused anyway, and a look-up of package versions that the command line pays for. A redis-py with
    ``redis.driver_info`` (7.2 on) says so with ``driver_info=None`` and warns about the older
    ``lib_name``/``lib_version``, which it replaces; before it, only those two exist."""
    try:
        import redis.driver_info  # noqa: F401
    except ImportError:
        return {"lib_name": None, "lib_version": None}
    return {"driver_info": None}


CLUSTER_SINCE = (8, 0)  # redis-py's asyncio cluster client has pub/sub (SSUBSCRIBE) from 8.0 on
CLUSTER_NEEDS = "Redis Cluster needs redis-py 8.0 or newer: pip install 'distreload[cluster]'"


def redis_py_version() -> tuple[int, ...]:
    """The installed redis-py's version, as numbers (``8.2.0`` -> (8, 2, 0))."""
    import redis

    return _version_numbers(redis.__version__)


def _version_numbers(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def require_cluster_support() -> None:
    """Refuse, with what to install, a Redis Cluster when the installed redis-py cannot subscribe there."""
    if redis_py_version() < CLUSTER_SINCE:
        import redis

        raise Misconfigured(f"{CLUSTER_NEEDS} (redis-py {redis.__version__} is installed)")


def async_client(url: str) -> redis.asyncio.Redis:
    """A client for one Redis server (no topology detection)."""
    import redis.asyncio

    # redis-py reads the URL the way parse_redis_url does (the table in tests/test_config.py), save
    # what it would guess at: refuse that here too, for a caller that did not go through resolve_target.
    parse_redis_url(url)
    return redis.asyncio.Redis.from_url(url, **redis_options(asynchronous=True))


def sync_client(url: str) -> redis.Redis:
    """A client for one Redis server (no topology detection)."""
    import redis

    # redis-py reads the URL the way parse_redis_url does (the table in tests/test_config.py), save
    # what it would guess at: refuse that here too, for a caller that did not go through resolve_target.
    parse_redis_url(url)
    return redis.Redis.from_url(url, **redis_options(asynchronous=False))


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


def server_or_old(url: str, exc: BaseException) -> Server:
    """What a failed HELLO still tells: a server too old to know it, or a cluster node refusing the
    database the URL names; anything else is raised."""
    import redis.exceptions

    if isinstance(exc, redis.exceptions.ResponseError):
        if "unknown command" in str(exc).lower():
            return _OLD_SERVER
        if "SELECT is not allowed in cluster mode" in str(exc):
            check_usable(url, Server(CLUSTER, ()))
    raise exc


def identify(url: str, hello: Any) -> Server:
    """The topology probe, for the workers' links and the command line alike: what answered ``HELLO``
    (its reply, or the exception it raised), refused with what to change when distreload cannot use it as
    the URL names it (Misconfigured); any other failure is raised as it came."""
    server = server_or_old(url, hello) if isinstance(hello, BaseException) else server_from_hello(hello)
    check_usable(url, server)
    return server


def check_usable(url: str, server: Server) -> None:
    """Refuse, with what to change, a URL that names something distreload cannot use as named."""
    if server.mode == SENTINEL:
        address = parse_redis_url(url)
        where = f"{address.host}:{address.port}"
        raise Misconfigured(
            f"{where} is a Redis Sentinel, not a data node: use redis+sentinel://{where}/<master-name>/<db>"
        )
    if server.mode == CLUSTER and _database(url):
        raise Misconfigured(
            f"a Redis Cluster has only database 0, and the URL names database {_database(url)}"
        )


def _database(url: str) -> int:
    return parse_redis_url(url).db


def cluster_options(*, asynchronous: bool) -> dict[str, Any]:
    # A cluster that lost every copy of some slots still serves the namespaces in the others.
    return {**redis_options(asynchronous=asynchronous), "require_full_coverage": False}


def cluster_error(exc: BaseException) -> BaseException:
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


def sentinel_arguments(settings: SentinelSettings, *, asynchronous: bool) -> SentinelArguments:
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
    options = redis_options(asynchronous=asynchronous)
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
    addresses, to_sentinels, to_data_nodes = sentinel_arguments(settings, asynchronous=asynchronous)
    return factory(addresses, sentinel_kwargs=to_sentinels, **to_data_nodes)


def no_master_error(settings: SentinelSettings, exc: BaseException) -> BaseException:
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


def address_of(connection: Any) -> str:
    """host:port of a redis-py connection (a unix socket: its path)."""
    host = getattr(connection, "host", None)
    if host is None:
        return str(getattr(connection, "path", "?"))
    return f"{host}:{connection.port}"


class MasterChanged(Exception):
    """The Sentinels named another master while a publish ran on the old one."""

    def __init__(self, used: Any, now: str) -> None:
        super().__init__(
            f"the Sentinels named {now} as master while the reload was published on "
            f"{used[0]}:{used[1]}: it may reach only some pages; publish again"
        )


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
            hello = client.execute_command("HELLO")
        except Exception as exc:
            hello = exc
        server = identify(url, hello)
    except BaseException:
        client.close()
        raise
    if server.mode != CLUSTER:
        return SyncClient(client, STANDALONE, False)
    client.close()
    return SyncClient(_sync_cluster(url), CLUSTER, server.sharded)


def _sync_cluster(url: str) -> redis.cluster.RedisCluster:
    require_cluster_support()
    from redis.cluster import RedisCluster

    try:
        return RedisCluster.from_url(url, **cluster_options(asynchronous=False))
    except Exception as exc:
        raise cluster_error(exc) from exc


def publish_to_cluster(target: Target, request: ReloadRequest) -> PublishResult:
    """Publish through redis-py's cluster client (which finds the slot's owner); raise PublishError."""
    try:
        client = _sync_cluster(target.redis_url)
        try:
            reply = client.eval(*publish_call(target.namespace, request))
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
        reply = client.eval(*publish_call(target.namespace, request))
        used = client.connection_pool.master_address
        host, port = sentinel.discover_master(settings.master_name)
        if used is not None and (host, port) != tuple(used):
            raise MasterChanged(used, f"{host}:{port}")
    except Exception as exc:
        raise PublishError(
            describe_publish_failure(target.display_url(), no_master_error(settings, exc))
        ) from exc
    finally:
        client.close()
        for sentinel_client in sentinel.sentinels:
            sentinel_client.close()
    return publish_result(reply)


# --- Publishing from a thread with no running loop: the command line, send_reload_signal() off a loop ---


def publish_blocking(target: Target, request: ReloadRequest) -> PublishResult:
    """Publish to the Redis of ``target`` from a thread with no running loop of its own; raise
    PublishError when it did not go out. What the command line and ``send_reload_signal()`` use.

    A single server, or the cluster node that holds the namespace's slot, is spoken to directly (no
    redis-py to import: the command line's start-up is most of its cost). A cluster node that redirects,
    and the Sentinels, are left to redis-py.
    """
    if is_sentinel_url(target.redis_url):
        return publish_via_sentinel(target, request)
    from .resp import ClusterRedirect, publish_over_resp

    try:
        return publish_over_resp(target, request)
    except ClusterRedirect:
        return publish_to_cluster(target, request)

"""The cluster's reload state and its fan-out over Redis pub/sub.

State lives in one Redis hash per namespace (``epoch`` and ``version``); a publish bumps the version and
publishes the new state in one Lua script, so the counter and the message never disagree. Pub/sub is
at-most-once, so every (re)subscribe is followed by a read of the hash: a worker that was cut off while a
reload went out still sees it. The epoch tells a Redis that lost its data (a new, random epoch) from
garbage on the channel (a claim the hash does not back is ignored).

Each worker process holds exactly one subscription, whatever the number of browsers it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import Target, resolve_target
from .protocol import (
    _PUBLISH_SCRIPT,
    _SEED_SCRIPT,
    BadMessage,
    ClusterVersion,
    PublishError,
    PublishResult,
    Reload,
    ReloadKind,
    _describe_redis_error,
    _one_line,
    _publish_result,
    _state_from_reply,
    channel_name,
    new_epoch,
    parse_message,
    presence_prefix,
    publish_over_resp,
    state_key,
    validate_publish_request,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio

logger = logging.getLogger(__name__)

class _RateLimitedWarning:
    """Warn about bad input at most once per interval, counting what was suppressed."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar warnings suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        logger.warning(message, *args)


ReloadListener = Callable[[Reload], None]


@dataclass
class WorkerIdentity:
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


class Broker:
    """One process's view of the cluster's reload state, kept current through one subscription.

    Listeners (the local stream hub, the user's ``on_reload``) are called on the event loop thread, once
    per new version, in version order.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.version = ClusterVersion(new_epoch(), 0)
        self.identity = WorkerIdentity()
        self.stream_count: Callable[[], int] = lambda: 0
        self.build_id = ""
        self._listeners: list[ReloadListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warn_bad_message = _RateLimitedWarning()

    @property
    def connected(self) -> bool:
        return True

    def add_listener(self, listener: ReloadListener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: ReloadListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def is_running_here(self) -> bool:
        """Whether start() already ran on the running event loop (and stop() has not undone it)."""
        return self._loop is not None and self._loop is _running_loop()

    async def start(self) -> None:
        """Bind to the running loop; idempotent. Never raises for an unreachable Redis."""
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self._loop = None

    async def publish(self, kind: str = "reload", paths: Sequence[str] = ()) -> PublishResult:
        raise NotImplementedError

    def publish_threadsafe(self, kind: str = "reload", paths: Sequence[str] = ()) -> PublishResult:
        raise NotImplementedError

    def _accept(self, reload: Reload) -> None:
        """Move to a newer version and tell the listeners; ignore anything not newer."""
        current = self.version
        if reload.version.epoch == current.epoch and reload.version.number <= current.number:
            return
        self.version = reload.version
        logger.debug("reload %s (%s) reached %s", reload.version, reload.kind, self.identity)
        for listener in list(self._listeners):
            try:
                listener(reload)
            except Exception:
                logger.exception("a reload listener failed")

    def _catch_up(self, state: ClusterVersion, *, first_contact: bool) -> None:
        """Align with the state read from Redis after a (re)subscribe."""
        current = self.version
        if state == current:
            return
        if first_contact or not current.is_behind(state):
            # Nothing to reload for: a fresh worker adopts the cluster's state, and a Redis restarted
            # with no data (new epoch, no reload counted yet) is a change of bookkeeping only.
            self.version = state
            return
        self._accept(Reload(state, "reload"))


class MemoryBroker(Broker):
    """The in-process twin used when no Redis is configured: same interface, one process only."""

    async def publish(self, kind: str = "reload", paths: Sequence[str] = ()) -> PublishResult:
        checked_kind, checked_paths = validate_publish_request(kind, paths)
        return self._publish_here(checked_kind, checked_paths)

    def publish_threadsafe(self, kind: str = "reload", paths: Sequence[str] = ()) -> PublishResult:
        checked_kind, checked_paths = validate_publish_request(kind, paths)
        loop = self._loop
        if loop is None or loop.is_closed() or _running_loop() is loop:
            return self._publish_here(checked_kind, checked_paths)
        done = asyncio.run_coroutine_threadsafe(
            _as_coroutine(self._publish_here, checked_kind, checked_paths), loop
        )
        return done.result(timeout=5)

    def _publish_here(self, kind: ReloadKind, paths: tuple[str, ...]) -> PublishResult:
        version = ClusterVersion(self.version.epoch, self.version.number + 1)
        self._accept(Reload(version, kind, paths))
        return PublishResult(version, receivers=1)


async def _as_coroutine(function: Callable[..., PublishResult], *args: Any) -> PublishResult:
    return function(*args)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class RedisBroker(Broker):
    """Keeps one pub/sub subscription alive: reconnects with backoff and jitter, pings with a deadline,
    catches up on the version after every subscribe, and publishes presence for ``distreload status``."""

    def __init__(
        self,
        target: Target,
        *,
        ping_interval: float = 2.0,
        ping_timeout: float = 3.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        presence_interval: float = 5.0,
        startup_wait: float = 2.0,
        client_factory: Callable[[], redis.asyncio.Redis] | None = None,
    ) -> None:
        super().__init__(target)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.presence_interval = presence_interval
        self.startup_wait = startup_wait
        self._client_factory = client_factory or (lambda: async_client(target.redis_url))
        self._client: redis.asyncio.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._connected = False
        self._contacted = False
        self._outage_logged = False
        self._channel = channel_name(target.namespace)
        self._state_key = state_key(target.namespace)
        self._presence_key = f"{presence_prefix(target.namespace)}{self.identity}"

    @property
    def connected(self) -> bool:
        return self._connected

    def is_running_here(self) -> bool:
        return super().is_running_here() and self._task is not None and not self._task.done()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.is_running_here():
            return
        self._loop = loop
        self._subscribed = asyncio.Event()
        self._client = self._client_factory()
        self._task = loop.create_task(self._run(), name=f"distreload listener {self.target.namespace}")
        # Wait briefly so that a worker that has started is counted by the next publish; a Redis that is
        # down must not hold the app's start-up, so the listener carries on in the background.
        try:
            await asyncio.wait_for(self._subscribed.wait(), self.startup_wait)
        except TimeoutError:
            if not self._outage_logged:  # the listener has not said why yet (Redis slow rather than down)
                self._outage_logged = True
                logger.warning("distreload: worker %s: Redis at %s not reachable yet; serving pages and "
                               "retrying in the background", self.identity, self.target.display_url())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        if client is not None:
            if self._connected:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(client.delete(self._presence_key), 0.5)
            await _close_quietly(client)
        self._connected = False
        self._loop = None

    async def publish(self, kind: str = "reload", paths: Sequence[str] = ()) -> PublishResult:
        checked_kind, checked_paths = validate_publish_request(kind, paths)
        client = self._client if self._client is not None and self._loop is _running_loop() else None
        owned = client is None
        if client is None:
            client = async_client(self.target.redis_url)
        try:
            reply = await client.eval(_PUBLISH_SCRIPT, 2, self._state_key, self._channel, new_epoch(),
                                      checked_kind, json.dumps(list(checked_paths)))
        except Exception as exc:
            raise PublishError(_describe_redis_error(self.target, exc)) from exc
        finally:
            if owned:
                await _close_quietly(client)
        return _publish_result(reply)

    def publish_threadsafe(self, kind: str = "reload", paths: Sequence[str] = ()) -> PublishResult:
        return publish_to_redis(self.target, kind, paths)

    async def _run(self) -> None:
        delay = 0.0
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._report_outage(exc)
            if self._connected:
                delay = 0.0  # the connection was good; start the backoff again from the bottom
            self._connected = False
            self._subscribed.clear()
            delay = min(self.backoff_max, delay * 2 if delay else self.backoff_initial)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _report_outage(self, exc: BaseException) -> None:
        """One line per outage, however many attempts it takes to get back (see _listen_once)."""
        if self._outage_logged:
            return
        self._outage_logged = True
        verb = "lost the connection to" if self._connected else "cannot reach"
        logger.warning("distreload: worker %s %s Redis at %s (%s); serving pages and retrying with backoff",
                       self.identity, verb, self.target.display_url(), _one_line(exc))

    async def _listen_once(self) -> None:
        assert self._client is not None
        client = self._client
        pubsub = client.pubsub()
        try:
            await asyncio.wait_for(pubsub.subscribe(self._channel), self.ping_timeout)
            await self._confirm_subscription(pubsub)
            # Read the state only once Redis confirmed the subscription: a publish between the two is then
            # seen by one of them, never by neither.
            reply = await asyncio.wait_for(
                client.eval(_SEED_SCRIPT, 1, self._state_key, self.version.epoch, str(self.version.number)),
                self.ping_timeout,
            )
            self._catch_up(_state_from_reply(reply), first_contact=not self._contacted)
            self._contacted = True
            self._connected = True
            if self._outage_logged:
                logger.warning("distreload: worker %s connected to Redis at %s; at version %s",
                               self.identity, self.target.display_url(), self.version)
                self._outage_logged = False
            await self._write_presence(client)
            self._subscribed.set()
            await self._receive(pubsub, client)
        finally:
            await _close_quietly(pubsub)

    async def _confirm_subscription(self, pubsub: Any) -> None:
        deadline = time.monotonic() + self.ping_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = await asyncio.wait_for(pubsub.get_message(timeout=remaining), remaining + 0.5)
            if message is not None and message.get("type") == "subscribe":
                return
        raise ConnectionError(f"Redis did not confirm the subscription within {self.ping_timeout:g} s")

    async def _receive(self, pubsub: Any, client: redis.asyncio.Redis) -> None:
        last_heard = time.monotonic()
        ping_sent: float | None = None
        next_presence = time.monotonic() + self.presence_interval
        while True:
            message = await pubsub.get_message(timeout=min(1.0, self.ping_interval))
            now = time.monotonic()
            if message is not None:
                last_heard, ping_sent = now, None
                if message.get("type") == "message":
                    await self._handle(message.get("data"), client)
            elif ping_sent is not None and now - ping_sent > self.ping_timeout:
                # A frozen Redis or a half-open connection answers nothing and raises nothing.
                raise ConnectionError(f"no answer to PING within {self.ping_timeout:g} s")
            if ping_sent is None and now - last_heard >= self.ping_interval:
                await asyncio.wait_for(pubsub.ping(), self.ping_timeout)
                ping_sent = now
            if now >= next_presence:
                await self._write_presence(client)
                next_presence = now + self.presence_interval

    async def _handle(self, data: Any, client: redis.asyncio.Redis) -> None:
        try:
            reload = parse_message(data if isinstance(data, bytes | str) else b"")
        except BadMessage as exc:
            self._warn_bad_message("distreload: ignored a message on %s: %s", self._channel, exc)
            return
        current = self.version
        if reload.version.epoch == current.epoch and reload.version.number <= current.number:
            return  # already seen (the catch-up after a subscribe can overtake the message)
        # Only the Lua script writes both the hash and the channel, so a claim the hash does not back
        # (a version from the future, another epoch) did not come from a distreload publish.
        state = _state_from_reply(
            await asyncio.wait_for(client.hmget(self._state_key, ["epoch", "version"]), self.ping_timeout)
        )
        if state.epoch != reload.version.epoch or state.number < reload.version.number:
            self._warn_bad_message("distreload: ignored a message on %s: version %s is not backed by the "
                                   "state in Redis (%s)", self._channel, reload.version, state)
            return
        self._accept(reload)
        # After the streams have it: `distreload status` shows each worker's version, keep it current.
        await self._write_presence(client)

    async def _write_presence(self, client: redis.asyncio.Redis) -> None:
        record = {
            "host": self.identity.host,
            "pid": self.identity.pid,
            "started": round(self.identity.started, 3),
            "streams": self.stream_count(),
            "version": str(self.version),
            "build": self.build_id,
        }
        ttl = max(3, int(self.presence_interval * 3))
        await asyncio.wait_for(client.set(self._presence_key, json.dumps(record), ex=ttl), self.ping_timeout)


async def _close_quietly(closable: Any) -> None:
    try:
        close = getattr(closable, "aclose", None) or closable.close
        await asyncio.wait_for(close(), 1.0)
    except (Exception, asyncio.CancelledError):
        pass


def _redis_options() -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # distreload owns its reconnect loop: redis-py's own retries differ between versions and would hide
    # an outage (or publish twice when a reply is lost).
    return {"socket_connect_timeout": 2.0, "socket_timeout": 5.0, "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0}


def async_client(url: str) -> redis.asyncio.Redis:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, **_redis_options())


_sync_clients: dict[str, redis.Redis] = {}
_sync_clients_lock = threading.Lock()


def sync_client(url: str) -> redis.Redis:
    """A shared synchronous client per URL (redis-py's pool is thread-safe)."""
    with _sync_clients_lock:
        client = _sync_clients.get(url)
        if client is None:
            import redis

            client = _sync_clients[url] = redis.Redis.from_url(url, **_redis_options())
        return client


def publish_to_redis(target: Target, kind: str = "reload", paths: Sequence[str] = ()) -> PublishResult:
    """Publish one reload to every worker sharing ``target``; raise PublishError when it did not go out.

    Synchronous and safe from any thread: the same one-connection exchange the command line uses.
    """
    return publish_over_resp(target, kind, paths)


_brokers: dict[Target, Broker] = {}
_brokers_lock = threading.Lock()


def get_broker(redis_url: str | None = None, namespace: str | None = None) -> Broker:
    """The process-wide broker for a target, created on first use."""
    target = resolve_target(redis_url, namespace)
    with _brokers_lock:
        broker = _brokers.get(target)
        if broker is None:
            broker = _brokers[target] = MemoryBroker(target) if target.is_memory else RedisBroker(target)
        return broker


def known_brokers() -> list[Broker]:
    with _brokers_lock:
        return list(_brokers.values())

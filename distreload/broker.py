"""The cluster's reload state, as one worker process sees it, kept current through one subscription.

State lives in one Redis hash per namespace (``epoch``, ``version`` and the ``last`` message); a publish
bumps the version and publishes the new state in one Lua script, so the counter and the message never
disagree. Pub/sub is at-most-once, so every (re)subscribe is followed by a read of the hash: a worker that
was cut off while a reload went out still sees it. The epoch tells a Redis that lost its data (a new,
random epoch) from garbage on the channel (a claim the hash does not back is ignored).

Each worker process holds exactly one subscription per Redis and namespace, whatever the number of apps
and browsers it serves: :func:`get_broker` hands every app of the process the same broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .config import Target, resolve_target
from .process import WorkerIdentity
from .protocol import (
    _PUBLISH_SCRIPT,
    _SEED_SCRIPT,
    PUBLISH_KEYS,
    SEED_KEYS,
    BadMessage,
    ClusterVersion,
    PublishError,
    PublishResult,
    Reload,
    ReloadRequest,
    State,
    channel_name,
    describe_publish_failure,
    new_epoch,
    one_line,
    parse_message,
    presence_prefix,
    publish_arguments,
    publish_result,
    seed_arguments,
    state_from_reply,
    state_key,
)
from .redis_clients import async_client

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger(__name__)


class ReloadListener(Protocol):
    """What a broker tells of every new version: in this package, an app's stream hub."""

    def deliver(self, reload: Reload) -> None: ...

    def __len__(self) -> int: ...  # the browser streams it holds, for presence


class RateLimitedWarning:
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


class Broker:
    """One process's view of the cluster's reload state.

    Listeners are held weakly and only while their app runs (:meth:`hold` at start-up, :meth:`release` at
    shutdown): an app that is dropped without a shutdown leaves nothing behind. They are called on the
    event loop thread, once per new version, in version order. The subscription runs while at least one
    listener is held.
    """

    talks_to_redis = False  # whether a publish waits on the network

    def __init__(self, target: Target) -> None:
        self.target = target
        self.version = ClusterVersion(new_epoch(), 0)
        self.last: Reload | None = None
        self.identity = WorkerIdentity()
        self.build_id = ""
        self.announced = False  # whether an app said "distreload active" for this broker yet
        self._listeners: weakref.WeakSet[ReloadListener] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return True

    @property
    def listening(self) -> bool:
        """Whether an app of this process is running on this broker (what a receiver count counts)."""
        loop = self._loop
        return loop is not None and not loop.is_closed() and len(self._listeners) > 0

    def state(self) -> State:
        """The version this worker is at, and the last reload it received."""
        return State(self.version, self.last)

    def stream_count(self) -> int:
        return sum(len(listener) for listener in list(self._listeners))

    async def hold(self, listener: ReloadListener) -> None:
        """Tell ``listener`` of every reload from now on; starts the subscription on the running loop."""
        self._listeners.add(listener)
        loop = asyncio.get_running_loop()
        if self._loop is not loop or not self._running():
            self._loop = loop
            await self._start()

    async def release(self, listener: ReloadListener) -> None:
        """Stop telling ``listener``; the last one released ends the subscription."""
        self._listeners.discard(listener)
        if not self._listeners and self._loop is _running_loop():
            await self._stop()
            self._loop = None

    def _running(self) -> bool:
        return self._loop is not None

    async def _start(self) -> None:
        """Start listening on the running loop. Never raises for an unreachable Redis."""

    async def _stop(self) -> None:
        """Stop listening."""

    async def publish(self, request: ReloadRequest) -> PublishResult:
        raise NotImplementedError

    def publish_blocking(self, request: ReloadRequest) -> PublishResult:
        """Publish from a thread that is not running this broker's loop; raise PublishError."""
        raise NotImplementedError

    def _accept(self, reload: Reload) -> None:
        """Move to a newer version and tell the listeners; ignore anything not newer."""
        current = self.version
        if reload.version.epoch == current.epoch and reload.version.number <= current.number:
            return
        self.version, self.last = reload.version, reload
        logger.debug("reload %s (%s) reached %s", reload.version, reload.kind, self.identity)
        for listener in list(self._listeners):
            try:
                listener.deliver(reload)
            except Exception:
                logger.exception("distreload: a reload listener failed")

    def _catch_up(self, state: State, *, first_contact: bool) -> None:
        """Align with the state read from Redis after a (re)subscribe."""
        current = self.version
        if state.version == current:
            return
        if first_contact or not current.is_behind(state.version):
            # Nothing to reload for: a fresh worker adopts the cluster's state, and a Redis restarted
            # with no data (new epoch, no reload counted yet) is a change of bookkeeping only.
            self.version, self.last = state.version, state.last
            return
        self._accept(state.reload_for(current))


class MemoryBroker(Broker):
    """The in-process twin used when no Redis is configured: same interface, this process only."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        # Publishes may come from any thread: the counter, and the order in which versions are handed to
        # the loop, are kept under one lock so that no version is lost or overtaken.
        self._lock = threading.Lock()
        self._published = self.version

    async def publish(self, request: ReloadRequest) -> PublishResult:
        return self._publish(request)

    def publish_blocking(self, request: ReloadRequest) -> PublishResult:
        return self._publish(request)

    def _publish(self, request: ReloadRequest) -> PublishResult:
        with self._lock:
            published = self._published = ClusterVersion(self._published.epoch, self._published.number + 1)
            reload = Reload(published, request.kind, request.paths, request.spread, request.match)
            receivers = 1 if self.listening else 0
            loop = self._loop
            if loop is None or loop.is_closed():
                self.version, self.last = published, reload
            elif _running_loop() is loop:
                self._accept(reload)
            else:
                loop.call_soon_threadsafe(self._accept, reload)
        return PublishResult(published, receivers)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class RedisBroker(Broker):
    """Keeps one pub/sub subscription alive: reconnects with backoff and jitter, pings with a deadline,
    catches up on the version after every subscribe, and publishes presence for ``distreload status``."""

    talks_to_redis = True

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
        self._warn_bad_message = RateLimitedWarning()
        self._channel = channel_name(target.namespace)
        self._state_key = state_key(target.namespace)
        self._presence_key = f"{presence_prefix(target.namespace)}{self.identity}"

    @property
    def connected(self) -> bool:
        return self._connected

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
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
                logger.warning(
                    "distreload: worker %s: Redis at %s not reachable yet; serving pages and "
                    "retrying in the background",
                    self.identity,
                    self.target.display_url(),
                )

    async def _stop(self) -> None:
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

    async def publish(self, request: ReloadRequest) -> PublishResult:
        client = self._client if self._client is not None and self._loop is _running_loop() else None
        owned = client is None
        if client is None:
            client = async_client(self.target.redis_url)
        try:
            reply = await client.eval(
                _PUBLISH_SCRIPT, PUBLISH_KEYS, *publish_arguments(self.target.namespace, request)
            )
        except Exception as exc:
            raise PublishError(describe_publish_failure(self.target.display_url(), exc)) from exc
        finally:
            if owned:
                await _close_quietly(client)
        return publish_result(reply)

    def publish_blocking(self, request: ReloadRequest) -> PublishResult:
        from .publisher import publish_blocking

        return publish_blocking(self.target, request)

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
        logger.warning(
            "distreload: worker %s %s Redis at %s (%s); serving pages and retrying with backoff",
            self.identity,
            verb,
            self.target.display_url(),
            one_line(exc),
        )

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
                client.eval(
                    _SEED_SCRIPT,
                    SEED_KEYS,
                    *seed_arguments(self.target.namespace, self.version, sharded=False),
                ),
                self.ping_timeout,
            )
            self._catch_up(state_from_reply(reply), first_contact=not self._contacted)
            self._contacted = True
            self._connected = True
            if self._outage_logged:
                logger.warning(
                    "distreload: worker %s connected to Redis at %s; at version %s",
                    self.identity,
                    self.target.display_url(),
                    self.version,
                )
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
        state = state_from_reply(
            await asyncio.wait_for(client.hmget(self._state_key, ["epoch", "version"]), self.ping_timeout)
        )
        if state.version.epoch != reload.version.epoch or state.version.number < reload.version.number:
            self._warn_bad_message(
                "distreload: ignored a message on %s: version %s is not backed by the state in Redis (%s)",
                self._channel,
                reload.version,
                state.version,
            )
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


_brokers: dict[Target, Broker] = {}
_brokers_lock = threading.Lock()


def get_broker(redis_url: str | None = None, namespace: str | None = None) -> Broker:
    """The process-wide broker for a target (from the arguments, else the environment), made on first use."""
    target = resolve_target(redis_url, namespace)
    with _brokers_lock:
        broker = _brokers.get(target)
        if broker is None:
            broker = _brokers[target] = MemoryBroker(target) if target.is_memory else RedisBroker(target)
        return broker

"""The cluster's reload state, as one worker process sees it, kept current through one subscription.

State lives in one Redis hash per namespace (``epoch``, ``version`` and the ``last`` message); a publish
bumps the version and publishes the new state in one Lua script, so the counter and the message never
disagree. Pub/sub is at-most-once, so every (re)subscribe is followed by a read of the hash: a worker that
was cut off while a reload went out still sees it. The epoch tells a Redis that lost its data (a new,
random epoch) from garbage on the channel (a claim the hash does not back is ignored).

Each worker process holds exactly one subscription per Redis and namespace, whatever the number of apps
and browsers it serves: :func:`get_broker` hands every app of the process the same broker.

The subscription is wherever the URL leads (see redis_clients): one server, the node of a Redis Cluster
that owns the namespace's slot (sharded pub/sub), or the master a set of Sentinels names. When a worker
subscribes again after a failover (the node it was on lost its role), it claims one version more than it
knows: a write the failover lost, or a publish that reached the new master under a number some workers
already hold, then still reloads every page, once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .config import Target, resolve_target
from .links import MESSAGE, PONG, AsyncLink, Subscription, open_link
from .presence import presence_of
from .process import WorkerIdentity
from .protocol import (
    _SEED_SCRIPT,
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
    publish_call,
    publish_result,
    seed_arguments,
    state_from_reply,
    state_key,
)
from .redis_clients import is_refusal, publish_blocking
from .timeouts import within

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
        # Publishes may come from any thread: the counter, and the order in which versions are queued for
        # the loop, are kept under one lock so that no version is lost or overtaken.
        self._lock = threading.Lock()
        self._published = self.version
        self._pending: collections.deque[Reload] = collections.deque()
        self._delivering = False  # whether the loop thread is inside _deliver_pending

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
                return PublishResult(published, receivers)
            self._pending.append(reload)
            on_loop = _running_loop() is loop
            if not on_loop:
                loop.call_soon_threadsafe(self._deliver_pending)
        # Listeners are told outside the lock: one that publishes in turn (an on_reload callback calling
        # send_reload_signal()) would otherwise wait for a lock its own thread holds.
        if on_loop:
            self._deliver_pending()
        return PublishResult(published, receivers)

    def _deliver_pending(self) -> None:
        """Tell the listeners of every queued version, in order, on the loop thread. A publish made while
        they are being told (from a listener) is queued and told after the current one, not inside it."""
        if self._delivering:
            return
        self._delivering = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    reload = self._pending.popleft()
                self._accept(reload)
        finally:
            self._delivering = False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Backoff:
    """How long a worker waits before it tries to subscribe again: ``initial``, growing by half each time
    up to ``ceiling`` (``refused_ceiling`` when Redis refused: a missing ACL right or a wrong password does
    not go away by itself), each wait drawn between three quarters and all of it (jitter, so that workers
    do not retry in step, yet no wait is shorter than the one before). It starts again from ``initial``
    only after a connection that stayed up ``healthy_after`` seconds: a connection that opens and then
    fails at once is no reason to hurry.

    Growing by half rather than doubling: a failover takes 1-3 s, and the attempt after it should not be
    far behind (with doubling it came up to 2.4 s after the promotion, measured)."""

    GROWTH = 1.5

    def __init__(self, initial: float, ceiling: float, refused_ceiling: float, healthy_after: float) -> None:
        self.initial = initial
        self.ceiling = ceiling
        self.refused_ceiling = refused_ceiling
        self.healthy_after = healthy_after
        self.delay = 0.0

    def failed(self, *, refused: bool, connected_for: float | None) -> float:
        """The wait after an attempt that failed (``connected_for``: how long it had been subscribed)."""
        if connected_for is not None and connected_for >= self.healthy_after:
            self.delay = 0.0
        ceiling = self.refused_ceiling if refused else self.ceiling
        self.delay = min(ceiling, self.delay * self.GROWTH if self.delay else self.initial)
        return self.delay * random.uniform(0.75, 1.0)


class RedisBroker(Broker):
    """Keeps one pub/sub subscription alive on a single Redis, a Redis Cluster or a Sentinel-watched master:
    reconnects with backoff and jitter, pings with a deadline, follows failovers and slot migrations,
    catches up on the version after every subscribe, and publishes presence for ``distreload status``.

    Retries follow :class:`Backoff` (``backoff_initial`` growing to ``backoff_max``, or to
    ``refused_backoff_max`` when Redis refused; back to the start only after ``healthy_after`` seconds of a
    good connection), so a connection that opens and fails at once cannot become a reconnect storm. The
    same rule paces the log: one line when an outage starts, one when it ends, whatever happens between.
    """

    talks_to_redis = True

    def __init__(
        self,
        target: Target,
        *,
        ping_interval: float = 2.0,
        ping_timeout: float = 3.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        refused_backoff_max: float = 30.0,
        healthy_after: float = 30.0,
        presence_interval: float = 5.0,
        master_check_interval: float = 1.0,
        startup_wait: float = 2.0,
        client_factory: Callable[[], redis.asyncio.Redis] | None = None,
    ) -> None:
        super().__init__(target)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.refused_backoff_max = refused_backoff_max
        self.healthy_after = healthy_after
        self.presence_interval = presence_interval
        self.master_check_interval = master_check_interval
        self.startup_wait = startup_wait
        self._client_factory = client_factory  # a single server's client (tests: fakeredis); else detected
        self._link: AsyncLink | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._connected = False
        self._connected_since: float | None = None
        self._contacted = False
        self._node: str | None = None  # host:port where the last subscription was
        self._outage_logged = False
        self._recovery_logged = False
        self._presence_written = False
        self._presence_streams = -1  # the stream count of the last record written
        self._presence_refused_until = -float("inf")
        self._presence_refusal_logged = False
        self._warn_bad_message = RateLimitedWarning()
        self._warn_sentinel_check = RateLimitedWarning(60.0)
        self._channel = channel_name(target.namespace)
        self._state_key = state_key(target.namespace)
        self._presence_key = f"{presence_prefix(target.namespace)}{self.identity}"

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def redis_client(self) -> Any:
        """The subscription's Redis client while it is connected (what a worker writes its page reports
        through), else None."""
        link = self._link
        return link.client if link is not None and self._connected else None

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _open_link(self) -> AsyncLink:
        if self._client_factory is not None:
            return AsyncLink(self._client_factory(), self.target.display_url())
        return await open_link(self.target)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._subscribed = asyncio.Event()
        self._link = None  # a link made on another loop cannot be used on this one
        self._task = loop.create_task(self._run(), name=f"distreload listener {self.target.namespace}")
        # Wait briefly so that a worker that has started is counted by the next publish; a Redis that is
        # down must not hold the app's start-up, so the listener carries on in the background.
        try:
            await within(self._subscribed.wait(), self.startup_wait)
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
        while task is not None and not task.done():
            # Again until it is over: a library call in the task may swallow one cancellation.
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if task is not None and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()
        link, self._link = self._link, None
        if link is not None:
            if self._connected and self._presence_written:
                with contextlib.suppress(Exception):
                    await within(link.client.delete(self._presence_key), 0.5)
            await link.aclose()
        self._connected = False
        self._connected_since = None

    async def publish(self, request: ReloadRequest) -> PublishResult:
        link = self._link if self._link is not None and self._loop is _running_loop() else None
        owned = link is None
        try:
            if link is None:
                link = await self._open_link()
            reply = await link.publish(publish_call(self.target.namespace, request))
        except Exception as exc:
            raise PublishError(describe_publish_failure(self.target.display_url(), exc)) from exc
        finally:
            if owned and link is not None:
                await link.aclose()
        return publish_result(reply)

    def publish_blocking(self, request: ReloadRequest) -> PublishResult:
        return publish_blocking(self.target, request)

    async def _run(self) -> None:
        backoff = Backoff(
            self.backoff_initial, self.backoff_max, self.refused_backoff_max, self.healthy_after
        )
        while True:
            delay = self.backoff_initial
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                since = self._connected_since
                connected_for = None if since is None else time.monotonic() - since
                if connected_for is not None and connected_for >= self.healthy_after:
                    self._outage_logged = self._recovery_logged = False  # a new outage: say so again
                refused = is_refusal(exc)
                self._report_outage(exc, refused)
                delay = backoff.failed(refused=refused, connected_for=connected_for)
            self._connected = False
            self._connected_since = None
            self._subscribed.clear()
            logger.debug("distreload: worker %s retries in %.2f s", self.identity, delay)
            await asyncio.sleep(delay)

    def _report_outage(self, exc: BaseException, refused: bool) -> None:
        """One line per outage, however many attempts it takes to get back (see the class docstring)."""
        if self._outage_logged:
            logger.debug("distreload: worker %s: still no subscription (%s)", self.identity, one_line(exc))
            return
        self._outage_logged = True
        if refused:
            logger.warning(
                "distreload: worker %s cannot use Redis at %s (%s); serving pages and retrying at most "
                "every %g s (the ACL rules distreload needs are in the README, 'Redis deployments')",
                self.identity,
                self.target.display_url(),
                one_line(exc),
                self.refused_backoff_max,
            )
            return
        verb = "lost the connection to" if self._connected else "cannot reach"
        logger.warning(
            "distreload: worker %s %s Redis at %s (%s); serving pages and retrying with backoff",
            self.identity,
            verb,
            self.target.display_url(),
            one_line(exc),
        )

    async def _listen_once(self) -> None:
        link = self._link
        if link is None:
            link = self._link = await within(self._open_link(), 2 * self.ping_timeout)
        subscription = await link.subscribe(self._channel, self.ping_timeout)
        try:
            # A PING answered through the subscription proves the connection (and the right to PING, which
            # the keep-alive below needs) before this worker counts as connected.
            await self._ping(subscription)
            known = self.version
            previous = self._node
            moved = previous is not None and subscription.node != previous
            if moved and previous is not None and await link.failed_over_from(previous):
                # A failover can lose writes this worker saw, and a publish can reach the new master before
                # any worker re-seeds it, under a version number some workers already hold: claiming one
                # more than it knows makes the seed move the version past all of them, with a reload. One
                # extra reload per failover is the price of never losing one.
                known = ClusterVersion(known.epoch, known.number + 1)
            # Read the state only once Redis confirmed the subscription: a publish between the two is then
            # seen by one of them, never by neither.
            seed = seed_arguments(self.target.namespace, known, sharded=link.sharded)
            reply = await within(link.eval(_SEED_SCRIPT, SEED_KEYS, *seed), self.ping_timeout)
            self._node = subscription.node
            self._catch_up(state_from_reply(reply), first_contact=not self._contacted)
            self._contacted = True
            self._connected = True
            self._connected_since = time.monotonic()
            if self._outage_logged and not self._recovery_logged:
                self._recovery_logged = True
                logger.warning(
                    "distreload: worker %s connected to Redis at %s (%s); at version %s",
                    self.identity,
                    self.target.display_url(),
                    subscription.node,
                    self.version,
                )
            await self._write_presence(link)
            self._subscribed.set()
            await self._receive(subscription, link)
        finally:
            await subscription.aclose()

    async def _ping(self, subscription: Subscription) -> None:
        """PING through the subscription and wait for the PONG. A message that arrives meanwhile can be
        passed over: the state read that follows covers everything published since the subscribe."""
        await within(subscription.send_ping(), self.ping_timeout)
        deadline = time.monotonic() + self.ping_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            event = await within(subscription.next_event(remaining), remaining + 0.5)
            if event is not None and event[0] == PONG:
                return
        raise ConnectionError(f"no answer to PING within {self.ping_timeout:g} s")

    async def _receive(self, subscription: Subscription, link: AsyncLink) -> None:
        now = time.monotonic()
        last_heard = now
        ping_sent: float | None = None
        next_presence = now + self.presence_interval
        next_master_check = now + self.master_check_interval
        while True:
            # Wake up for whatever is due first: a ping, a presence record, a look at the Sentinels.
            due = min(next_presence, next_master_check) - now
            # Never longer than PRESENCE_PROMPT_SECONDS: a browser connecting or leaving shows in
            # `distreload status` within a second, not at the next refresh.
            wait = min(PRESENCE_PROMPT_SECONDS, self.ping_interval, due)
            event = await subscription.next_event(max(0.01, wait))
            now = time.monotonic()
            if event is not None:
                last_heard, ping_sent = now, None
                if event[0] == MESSAGE:
                    await self._handle(event[1], link)
            elif ping_sent is not None and now - ping_sent > self.ping_timeout:
                # A frozen Redis or a half-open connection answers nothing and raises nothing.
                raise ConnectionError(f"no answer to PING within {self.ping_timeout:g} s")
            if ping_sent is None and now - last_heard >= self.ping_interval:
                await within(subscription.send_ping(), self.ping_timeout)
                ping_sent = now
            if now >= next_presence or self.stream_count() != self._presence_streams:
                await self._write_presence(link)
                next_presence = now + self.presence_interval
            if now >= next_master_check:
                await self._check_master(subscription, link)
                next_master_check = time.monotonic() + self.master_check_interval

    async def _check_master(self, subscription: Subscription, link: AsyncLink) -> None:
        """Leave a master the Sentinels no longer name at once: after SENTINEL FAILOVER the old one keeps
        answering (and accepting writes that will be discarded) for ~10 s before it is demoted."""
        try:
            moved = await within(link.master_moved(subscription.node), self.ping_timeout)
        except Exception as exc:
            # Sentinels unreachable or mid-failover: the subscription itself still works, keep it. But say
            # so: a Sentinel that refuses (a rotated sentinel_password) means failovers go unfollowed.
            self._warn_sentinel_check(
                "distreload: worker %s: the Sentinels did not say which node is master (%s); keeping the "
                "subscription on %s, but a failover is not followed until they answer",
                self.identity,
                one_line(exc),
                subscription.node,
            )
            return
        if moved is not None:
            raise ConnectionError(f"the Sentinels now name {moved} as master, not {subscription.node}")

    async def _handle(self, data: Any, link: AsyncLink) -> None:
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
        fields = link.client.hmget(self._state_key, ["epoch", "version"])
        state = state_from_reply(await within(fields, self.ping_timeout))
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
        await self._write_presence(link)

    async def _write_presence(self, link: AsyncLink) -> None:
        """Write this worker's presence record. Optional: a Redis user without the right to write it still
        gets every reload, and is told once what it cannot do."""
        if time.monotonic() < self._presence_refused_until:
            return
        record = presence_of(
            self.identity, streams=self.stream_count(), version=self.version, build=self.build_id
        )
        ttl = max(3, int(self.presence_interval * 3))
        try:
            await within(link.client.set(self._presence_key, record.to_json(), ex=ttl), self.ping_timeout)
        except Exception as exc:
            if not is_refusal(exc):
                raise
            self._presence_refused_until = time.monotonic() + PRESENCE_RETRY_SECONDS
            if not self._presence_refusal_logged:
                self._presence_refusal_logged = True
                logger.warning(
                    "distreload: worker %s cannot write its presence to Redis at %s (%s): it still "
                    "delivers every reload, but `distreload status` does not list it (grant +set and +del "
                    "on %s*); trying again every %d s",
                    self.identity,
                    self.target.display_url(),
                    one_line(exc),
                    presence_prefix(self.target.namespace),
                    PRESENCE_RETRY_SECONDS,
                )
            return
        self._presence_written = True
        self._presence_streams = record.streams


# How often at most a worker rewrites its presence because its browser count changed.
PRESENCE_PROMPT_SECONDS = 0.25

# How long a worker whose presence write was refused waits before trying again (ACL rules may change).
PRESENCE_RETRY_SECONDS = 60


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

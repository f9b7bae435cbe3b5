"""Publishing a reload from application code, a thread, or the command line.

``send_reload_signal()`` is fastapi-reloader's name and, like fastapi-reloader's, never blocks a running
event loop: called on a loop's thread (an ``async def`` handler) it queues the publish for a task of that
loop and returns at once; anywhere else it waits for Redis and returns the result or raises
:class:`PublishError`.

Import-light on purpose: the command line publishes through :func:`publish_blocking`, which speaks Redis's
protocol itself for a plain one-node Redis and imports redis-py only for a cluster or Sentinels.
"""

from __future__ import annotations

import collections
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .protocol import PublishError, PublishResult, ReloadRequest, reload_request

# The command line's way to publish, kept importable from here; it lives beside the clients it uses, so
# that the broker can use it without importing this module (which imports the broker).
from .redis_clients import publish_blocking as publish_blocking

if TYPE_CHECKING:
    import asyncio

    from .broker import Broker

logger = logging.getLogger(__name__)

_default_broker: Broker | None = None


def use_as_default(broker: Broker) -> None:
    """Make ``broker`` the one ``send_reload_signal()`` publishes to when given no target: the broker of
    the app that started last in this process."""
    global _default_broker
    _default_broker = broker


def _broker_for(redis_url: str | None, namespace: str | None) -> Broker:
    from .broker import get_broker

    if redis_url is None and namespace is None and _default_broker is not None:
        return _default_broker
    return get_broker(redis_url, namespace)


def send_reload_signal(
    kind: str = "reload",
    paths: Sequence[str] = (),
    *,
    spread: float = 0.0,
    match: str | None = None,
    redis_url: str | None = None,
    namespace: str | None = None,
) -> PublishResult | None:
    """Reload every page held by every worker of the cluster.

    ``kind``: ``"reload"`` (the whole page), ``"morph"`` (the new HTML applied in place, keeping scroll,
    focus and form state), ``"css"`` (stylesheets swapped, ``paths`` names which; none: all) or
    ``"images"`` (images re-fetched, ``paths`` names which). ``spread``: each page waits a random time up to
    that many seconds first. ``match``: only pages whose path matches this glob (``/screens/lobby/*``).

    Called on a thread running an event loop, it never blocks that loop: the publish is queued for a task
    of that loop, which publishes in call order over the connection the app's broker already holds; a
    failure is logged, and it returns None (``await send_reload_signal_async()`` gives the result there).
    Anywhere else it returns the :class:`PublishResult` or raises :class:`PublishError`. A bad argument
    raises ValueError at once, wherever it is called.
    """
    request = reload_request(kind, paths, spread, match)
    broker = _broker_for(redis_url, namespace)
    if not broker.talks_to_redis:
        return broker.publish_blocking(request)  # no I/O: safe on a loop's thread too
    import asyncio  # here, not at the top: the command line publishes without an event loop

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return broker.publish_blocking(request)
    _background_publisher(loop, broker).put(request)
    return None


class _BackgroundPublisher:
    """What ``send_reload_signal()`` was asked on one loop for one broker, published one after another in
    call order by one task of that loop. The task ends when the queue is empty and the next call starts
    another, so nothing is left running on a loop that stops."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.queue: collections.deque[ReloadRequest] = collections.deque()
        self.task: asyncio.Task[None] | None = None

    def put(self, request: ReloadRequest) -> None:
        import asyncio

        self.queue.append(request)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="distreload publish")

    async def _run(self) -> None:
        import asyncio

        while self.queue:
            request = self.queue.popleft()
            try:
                result = await self.broker.publish(request)
            except asyncio.CancelledError:
                # The loop is stopping (asyncio.run() returning cancels what is left): say what is lost.
                logger.warning(
                    "distreload: send_reload_signal(): the event loop stopped before %d reload(s) went out",
                    len(self.queue) + 1,
                )
                self.queue.clear()
                raise
            except PublishError as exc:
                logger.error("distreload: send_reload_signal(): %s", exc)
            except Exception:
                logger.exception("distreload: send_reload_signal() failed")
            else:
                logger.debug(
                    "distreload: published %s %s to %d receivers",
                    request.kind,
                    result.version,
                    result.receivers,
                )


_background_publishers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[Broker, _BackgroundPublisher]
] = weakref.WeakKeyDictionary()


def _background_publisher(loop: asyncio.AbstractEventLoop, broker: Broker) -> _BackgroundPublisher:
    """The queue of ``loop`` for ``broker`` (only its own thread touches it: no lock)."""
    publishers = _background_publishers.setdefault(loop, {})
    publisher = publishers.get(broker)
    if publisher is None:
        publisher = publishers[broker] = _BackgroundPublisher(broker)
    return publisher


async def send_reload_signal_async(
    kind: str = "reload",
    paths: Sequence[str] = (),
    *,
    spread: float = 0.0,
    match: str | None = None,
    redis_url: str | None = None,
    namespace: str | None = None,
    wait: float | None = None,
) -> PublishResult:
    """The async twin of :func:`send_reload_signal`: waits for the publish without blocking the loop, and
    returns its result or raises :class:`PublishError`.

    ``wait``: also wait up to that many seconds (after the spread) until every page open now applied the
    reload or failed; the result's ``pages`` then says which (``pages.outcome``: "applied", "failed" or
    "timed out")."""
    request = reload_request(kind, paths, spread, match)
    broker = _broker_for(redis_url, namespace)
    if wait is None:
        return await broker.publish(request)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 < wait <= 3600:
        raise ValueError(f"wait must be a number of seconds above 0, at most 3600, not {wait!r}")
    from .delivery import PagesUnavailable

    try:
        return await publish_and_wait(broker, request, float(wait))
    except PagesUnavailable as exc:
        raise PublishError(str(exc)) from None


async def publish_and_wait(broker: Broker, request: ReloadRequest, wait: float) -> PublishResult:
    """Publish, then wait up to ``wait`` seconds after the spread for the pages open at publish time (the
    live workers' pages) to apply the reload or fail; raise PagesUnavailable when Redis cannot be read."""
    import asyncio
    import dataclasses

    from .delivery import live_workers, wait_for_pages_async

    workers = await asyncio.to_thread(live_workers, broker.target)
    result = await broker.publish(request)
    pages = await wait_for_pages_async(
        broker.target, str(result.version), seconds=wait + request.spread, workers=workers
    )
    return dataclasses.replace(result, pages=pages)

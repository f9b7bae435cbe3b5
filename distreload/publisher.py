"""Publishing a reload from application code, a thread, or the command line.

``send_reload_signal()`` is fastapi-reloader's name and, like fastapi-reloader's, never blocks a running
event loop: called on a loop's thread (an ``async def`` handler) it hands the publish to a thread and
returns at once; anywhere else it waits for Redis and returns the result or raises :class:`PublishError`.

Import-light on purpose: the command line publishes through :func:`publish_blocking`, which speaks Redis's
protocol itself for a plain one-node Redis and imports redis-py only for a cluster or Sentinels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import Target
from .protocol import PublishError, PublishResult, ReloadRequest, reload_request

if TYPE_CHECKING:
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

    Called on a thread running an event loop, it never blocks that loop: the publish happens on another
    thread, a failure is logged, and it returns None (``await send_reload_signal_async()`` gives the
    result there). Anywhere else it returns the :class:`PublishResult` or raises :class:`PublishError`.
    A bad argument raises ValueError at once, wherever it is called.
    """
    request = reload_request(kind, paths, spread, match)
    broker = _broker_for(redis_url, namespace)
    if not broker.talks_to_redis:
        return broker.publish_blocking(request)  # no I/O: safe on a loop's thread too
    import asyncio  # here, not at the top: the command line publishes without an event loop

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return broker.publish_blocking(request)
    thread = threading.Thread(
        target=_publish_in_background, args=(broker, request), name="distreload publish", daemon=True
    )
    thread.start()
    return None


def _publish_in_background(broker: Broker, request: ReloadRequest) -> None:
    try:
        result = broker.publish_blocking(request)
    except PublishError as exc:
        logger.error("distreload: send_reload_signal(): %s", exc)
    except Exception:
        logger.exception("distreload: send_reload_signal() failed")
    else:
        logger.debug(
            "distreload: published %s %s to %d receivers", request.kind, result.version, result.receivers
        )


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
    from .pages import PagesUnavailable

    try:
        return await publish_and_wait(broker, request, float(wait))
    except PagesUnavailable as exc:
        raise PublishError(str(exc)) from None


async def publish_and_wait(broker: Broker, request: ReloadRequest, wait: float) -> PublishResult:
    """Publish, then wait up to ``wait`` seconds after the spread for the pages open at publish time (the
    live workers' pages) to apply the reload or fail; raise PagesUnavailable when Redis cannot be read."""
    import asyncio
    import dataclasses

    from .pages import live_workers, wait_for_pages_async

    workers = await asyncio.to_thread(live_workers, broker.target)
    result = await broker.publish(request)
    pages = await wait_for_pages_async(
        broker.target, str(result.version), seconds=wait + request.spread, workers=workers
    )
    return dataclasses.replace(result, pages=pages)


def publish_blocking(target: Target, request: ReloadRequest) -> PublishResult:
    """Publish to the Redis of ``target`` from a thread with no running loop of its own; raise
    PublishError when it did not go out. What the command line and ``send_reload_signal()`` use.

    A single server, or the cluster node that holds the namespace's slot, is spoken to directly (no
    redis-py to import: the command line's start-up is most of its cost). A cluster node that redirects,
    and the Sentinels, are left to redis-py.
    """
    from .config import is_sentinel_url

    if is_sentinel_url(target.redis_url):
        from .redis_clients import publish_via_sentinel

        return publish_via_sentinel(target, request)
    from .resp import ClusterRedirect, publish_over_resp

    try:
        return publish_over_resp(target, request)
    except ClusterRedirect:
        from .redis_clients import publish_to_cluster

        return publish_to_cluster(target, request)

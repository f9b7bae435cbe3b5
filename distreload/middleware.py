"""``DistReload``: the whole of distreload around one ASGI app, and its life from start-up to shutdown.

It routes ``<prefix>/...`` to the reload endpoint, hands every other request to the app through the HTML
injector, starts the worker's subscription with the app (at the lifespan start-up, which it answers alone
for an app that refuses the lifespan, such as Django's; or on the first request when the server runs no
lifespan) and ends the open streams when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import config
from .broker import Broker, get_broker
from .endpoint import CLIENT_SCRIPT_ETAG, ReloadEndpoint
from .errors import CHECK_HEADER, serve_reporting_errors
from .fleet import FleetRoutes
from .hub import StreamHub
from .injector import INJECTED_METHODS, SCOPE_FLAG, Injection, injecting
from .pages import MemorySink, PageFlusher, PageRegistry, PageSink, RedisSink, registry_name
from .process import build_id as process_build_id
from .process import has_sibling_workers
from .protocol import Reload
from .publisher import use_as_default
from .shutdown import exit_watch
from .tag import NonceSource, ScriptTag, default_csp_nonce

logger = logging.getLogger(__name__)

ReloadCallback = Callable[[Reload], Any]

_said_off = False  # the "distreload is off" line is said once per process, however many apps are made


class DistReload:
    """Live reload for one ASGI app: ``app = DistReload(app, redis_url=..., namespace=...)``.

    Off unless enabled (``enabled=True`` or ``DISTRELOAD_ENABLED=1``), so the same code can ship to
    production; when off it says so in one line and passes every request straight through. Serves the
    reload endpoint under ``prefix`` and injects the browser script into HTML pages. ``on_reload`` (sync or
    async, given the :class:`Reload`) runs in every worker a reload reaches.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        redis_url: str | None = None,
        namespace: str | None = None,
        enabled: bool | str | None = None,
        on_reload: ReloadCallback | None = None,
        prefix: str = config.DEFAULT_PREFIX,
        token: str | None = None,
        heartbeat_interval: float = 15.0,
        build_id: str | None = None,
        csp_nonce: NonceSource | None = None,
        endpoint_url: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        routes: bool = True,
        inject: bool = True,
        broker: Broker | None = None,
    ) -> None:
        self.app = app
        with refusing_to_start_on_a_bad_environment():
            self.enabled = config.resolve_enabled(enabled)
        self.prefix = config.validate_prefix(prefix)
        self.tag = ScriptTag(
            script_version=CLIENT_SCRIPT_ETAG,
            client_options=client_options,
            csp_nonce=csp_nonce,
            endpoint_url=endpoint_url,
        )
        self._explicit_build_id = build_id
        self._tag_for = self.tag_for  # bound once: the request path hands it to every page's injection
        self._plain_tag: tuple[object, str, str, bytes] = (object(), "", "", b"")  # see tag_for
        self.build_id = build_id or ""
        self._on_reload = on_reload
        self._inject = inject
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # When off, there is nothing to reach or serve: no broker, no hub, no endpoint, and starting or
        # shutting down does nothing.
        self.hub: StreamHub | None = None
        self.endpoint: ReloadEndpoint | None = None
        self.pages: PageRegistry | None = None
        self._page_flusher: PageFlusher | None = None
        if not self.enabled:
            given = isinstance(enabled, bool) or bool(enabled and enabled.strip())  # "" is not given
            _say_off(explicitly=given or config.enabled_in_environment() is not None)
            return
        with refusing_to_start_on_a_bad_environment():
            self._broker = broker or get_broker(redis_url, namespace)
        if routes:
            self.hub = StreamHub(heartbeat_interval=heartbeat_interval, on_reload=self._reload_arrived)
            self.endpoint = ReloadEndpoint(
                self._broker,
                self.hub,
                build_id=self.build_id,
                token=config.resolve_token(token),
                ensure_started=self.ensure_started,
            )
            self.pages = PageRegistry(registry_name(str(self._broker.identity)), self._broker.identity.host)
            self.endpoint.fleet = FleetRoutes(self.pages, self._broker, self.endpoint.token)

    @property
    def broker(self) -> Broker | None:
        """The broker this app's reloads travel through; None when distreload is off."""
        return self._broker if self.enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled:
            await self.app(scope, receive, send)
            return
        scope_type = scope["type"]
        if scope_type == "http":
            if not self._started:
                await self.ensure_started()
            # Every request of the app passes here: the common case is kept to a few dictionary lookups.
            if self.endpoint is not None and self.prefix in scope["path"]:
                subpath = self._subpath(scope)
                if subpath is not None:
                    await self.endpoint(scope, receive, send, subpath)
                    return
            for name, _ in scope["headers"]:  # details_requested() inline: a call fewer on every request
                if name == CHECK_HEADER:
                    # The client's check before a reload: a server error is answered with the exception.
                    await serve_reporting_errors(self._serve_app, scope, receive, send)
                    return
            if self._inject and SCOPE_FLAG not in scope and scope["method"] in INJECTED_METHODS:
                extensions = scope.get("extensions")
                if not extensions or "http.response.pathsend" not in extensions:
                    # injecting() inline for the common request (no scope to rewrite): a call fewer.
                    scope[SCOPE_FLAG] = True
                    await self.app(scope, receive, Injection(send, self._tag_for, scope).send)
                    return
            # _serve_app inline: a coroutine frame fewer on every request.
            wrapped = injecting(scope, send, self.tag_for) if self._inject else None
            if wrapped is None:
                await self.app(scope, receive, send)
            else:
                await self.app(wrapped[0], receive, wrapped[1])
        elif scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _serve_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        wrapped = injecting(scope, send, self.tag_for) if self._inject else None
        if wrapped is None:
            await self.app(scope, receive, send)
        else:
            await self.app(wrapped[0], receive, wrapped[1])

    def _subpath(self, scope: Scope) -> str | None:
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        if path == self.prefix or path.startswith(self.prefix + "/"):
            return path[len(self.prefix) :]
        return None

    def tag_for(self, scope: Scope) -> bytes:
        """The script tag for a page of this request."""
        # Every page asks: the tag of the last page without a nonce is handed out again while the version,
        # the build and the root path it was made for hold, and this page has no nonce either.
        last = self._plain_tag
        if (
            last[0] is self._broker.version
            and last[1] is self.build_id
            and scope.get("root_path", "") == last[2]
            and "csp_nonce" not in scope
        ):
            state = scope.get("state")
            if not state or (type(state) is dict and "csp_nonce" not in state):
                return last[3]
        return self._render_tag(scope)

    def _render_tag(self, scope: Scope) -> bytes:
        if not self.build_id:
            self.build_id = self._broker.build_id or process_build_id()
        version = self._broker.version
        tag = self.tag.render(
            scope, base=self.tag.endpoint_base(scope, self.prefix), version=version, build_id=self.build_id
        )
        if self.tag.csp_nonce is default_csp_nonce and default_csp_nonce(scope) is None:
            self._plain_tag = (version, self.build_id, scope.get("root_path", ""), tag)
        return tag

    async def ensure_started(self) -> None:
        """Start this worker's subscription: from the lifespan, or on the first request without one
        (nothing to start when off)."""
        if self._started or not self.enabled:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            if not self._explicit_build_id:
                self.build_id = process_build_id()
            self._broker.build_id = self.build_id
            if self.endpoint is not None:
                self.endpoint.build_id = self.build_id
            use_as_default(self._broker)
            if self.hub is not None:
                self.hub.closing = False
                await self._broker.hold(self.hub)
                exit_watch().attach(self.hub)
            if self.pages is not None:
                self._start_page_flusher(self.pages)
            self._started = True
            if self.hub is not None and not self._broker.announced:
                self._broker.announced = True  # one line per worker, however many apps share the broker
                self._announce()

    def _announce(self) -> None:
        # A warning, not info: servers show warnings by default, and a deploy must notice this is on.
        logger.warning(
            "distreload active: endpoint %s, Redis %s, namespace %r, worker %s, build %s "
            "(development live-reload, not for production: DISTRELOAD_ENABLED=0 turns it off)",
            self.prefix,
            self._broker.target.display_url(),
            self._broker.target.namespace,
            self._broker.identity,
            self.build_id,
        )
        if self._broker.target.is_memory and has_sibling_workers():
            logger.warning(
                "distreload: running under several workers with no Redis URL; a reload "
                "reaches only the worker it was sent in. Set %s (redis://...) to reach all.",
                config.ENV_REDIS_URL,
            )

    async def shutdown(self) -> None:
        """End the open streams and let go of the subscription (the last app out stops it)."""
        if self.hub is not None:
            self.hub.close_all()
        if not self._started:
            return
        self._started = False
        if self._page_flusher is not None:
            await self._page_flusher.stop()
        if self.hub is not None:
            exit_watch().detach(self.hub)
            await self._broker.release(self.hub)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's lifespan, with distreload starting before the app's start-up and stopping after
        its shutdown; for an app that refuses the lifespan, distreload runs it alone."""
        startup_received = startup_completed = False

        async def app_receive() -> Message:
            nonlocal startup_received
            message = await receive()
            if message["type"] == "lifespan.startup":
                startup_received = True
                await self.ensure_started()
            elif message["type"] == "lifespan.shutdown" and self.hub is not None:
                self.hub.close_all()
            return message

        async def app_send(message: Message) -> None:
            nonlocal startup_completed
            if message["type"] == "lifespan.startup.complete":
                startup_completed = True
            elif message["type"] in (
                "lifespan.startup.failed",  # the server will not serve: let go of what start-up began
                "lifespan.shutdown.complete",
                "lifespan.shutdown.failed",
            ):
                await self.shutdown()
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception as exc:
            if startup_received:
                if not startup_completed:
                    await self.shutdown()  # a start-up that raised without saying it failed
                raise  # the app's own start-up or shutdown failed: the server reports it
            # Django, for one, raises on any scope but HTTP. Servers take that as "no lifespan", or (uvicorn
            # --lifespan on) refuse to start; answering the lifespan here keeps both running, with
            # distreload started at start-up instead of at the first request.
            logger.debug("distreload: the app refuses the lifespan (%r); distreload answers it alone", exc)
        if not startup_received:
            await self._lifespan_alone(receive, send)

    async def _lifespan_alone(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.ensure_started()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _start_page_flusher(self, pages: PageRegistry) -> None:
        broker = self._broker
        sink: PageSink = MemorySink()
        if broker.talks_to_redis:
            sink = RedisSink(lambda: getattr(broker, "redis_client", None))
        self._page_flusher = PageFlusher(pages, sink, broker.target.namespace)
        self._page_flusher.start()

    def _reload_arrived(self, reload: Reload) -> None:
        if self.pages is not None:
            self.pages.reload_arrived(reload)
        if self._on_reload is not None:
            self._run_on_reload(reload)

    def _run_on_reload(self, reload: Reload) -> None:
        assert self._on_reload is not None
        outcome = self._on_reload(reload)
        if inspect.isawaitable(outcome):
            task = asyncio.ensure_future(outcome)
            self._background.add(task)
            task.add_done_callback(self._finish_background)

    def _finish_background(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("distreload: on_reload failed", exc_info=task.exception())


# gunicorn takes a worker's exit status 3 as "failed to boot" and stops, where it would boot the worker
# again and again after any other; uvicorn exits with 3 itself when an app's start-up fails.
BAD_ENVIRONMENT_EXIT_STATUS = 3


@contextlib.contextmanager
def refusing_to_start_on_a_bad_environment() -> Iterator[None]:
    """A setting read from a ``DISTRELOAD_*`` variable that distreload cannot use stops the process with
    one line naming the variable, the value and what is accepted: the fix is in the environment, and a
    traceback of the user's code (the app is made at import) would only bury that line. A bad argument
    is a bug in the code and raises ConfigError as usual."""
    try:
        yield
    except config.ConfigError as exc:
        if not str(exc).startswith("DISTRELOAD_"):  # every message starts with the setting's name
            raise
        print(f"distreload: {exc}; not starting", file=sys.stderr, flush=True)
        raise SystemExit(BAD_ENVIRONMENT_EXIT_STATUS) from None


def _say_off(*, explicitly: bool) -> None:
    global _said_off
    if _said_off:
        return
    _said_off = True
    if explicitly:
        logger.info(
            "distreload is off (enabled=False or %s=0): pages are served without live reload",
            config.ENV_ENABLED,
        )
    else:
        # A warning: servers show those by default, and a user who added DistReload must see why nothing
        # reloads.
        logger.warning(
            "distreload is off: pages are served without live reload. Set %s=1 (or pass "
            "enabled=True) to turn it on in development.",
            config.ENV_ENABLED,
        )

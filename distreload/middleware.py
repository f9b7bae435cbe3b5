"""Pure ASGI middleware: the reload routes, the script tag in HTML pages, and the drop-in API.

Nothing here buffers a response: the injector holds back at most the tail of the page from its last
``</body>`` on (or a few bytes that might start one), and everything else passes through as it comes.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import inspect
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from copy import copy
from inspect import ismethod
from pathlib import Path
from types import MethodType
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import config
from .broker import Broker, get_broker
from .endpoint import CLIENT_SCRIPT_ETAG, ReloadEndpoint, StreamHub
from .protocol import ClusterVersion, PublishResult, Reload

logger = logging.getLogger(__name__)

BODY_MARKER = b"</body"
PRESENT_MARKER = b"data-distreload"
HOLD_LIMIT = 64 * 1024  # the most of a page's tail held back while waiting to see whether </body> was last
_SCOPE_FLAG = "distreload.injected"

NonceSource = Callable[[Scope], str | None]
ReloadCallback = Callable[[Reload], Any]


def default_csp_nonce(scope: Scope) -> str | None:
    """The nonce an app put in ``request.state.csp_nonce`` (or ``scope["csp_nonce"]``)."""
    state = scope.get("state")
    nonce = None
    if isinstance(state, Mapping):
        nonce = state.get("csp_nonce")
    if nonce is None:
        nonce = scope.get("csp_nonce")
    return nonce if isinstance(nonce, str) and nonce else None


def compute_build_id(extra: str = "") -> str:
    """A fingerprint of the project's own loaded source files.

    A worker restarted by a code change reports a new build, so its pages reload; a worker recycled or
    reached on another host with the same code reports the same one, so nothing reloads for that.
    """
    explicit = os.environ.get(config.ENV_BUILD_ID, "").strip()
    if explicit:
        return explicit[:64]
    root = Path.cwd().resolve()
    ignored = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    digest = hashlib.sha256(extra.encode())
    files: set[Path] = set()
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if not filename or not filename.endswith(".py"):
            continue
        path = Path(filename).resolve()
        if not path.is_relative_to(root) or any(path.is_relative_to(prefix) for prefix in ignored):
            continue
        if "site-packages" in path.parts:
            continue
        files.add(path)
    for path in sorted(files):
        try:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:12]


def _running_under_several_workers() -> bool:
    if multiprocessing.parent_process() is not None:  # uvicorn --workers spawns its workers
        return True
    argv = " ".join(sys.argv)
    if "gunicorn" in argv or "gunicorn" in sys.modules:
        for flag in ("-w", "--workers"):
            if flag in sys.argv:
                index = sys.argv.index(flag)
                if index + 1 < len(sys.argv) and sys.argv[index + 1] != "1":
                    return True
        return os.environ.get("WEB_CONCURRENCY", "1") not in ("", "1")
    return False


# The browser script's options (``client_options=``), sent as JSON in ``data-distreload-options``:
#   message_prefix          text before every console line                      "[distreload]"
#   connected_message       logged once the page is connected                   "connected"
#   reconnect_message       logged before each retry; ${reconnectInterval} becomes the wait in ms
#   reconnect_interval      base wait before the first retry, in ms (doubles-ish with jitter)  1000
#   max_reconnect_interval  the longest wait between retries, in ms             10000
#   silent                  true: nothing on the console                        false
#   shared_worker           false: one connection per tab instead of one shared by all tabs  true
# fast-hot-reload's names are accepted too and mean the same.
CLIENT_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "message_prefix": (str,), "connected_message": (str,), "reconnect_message": (str,),
    "reconnect_interval": (int, float), "max_reconnect_interval": (int, float),
    "silent": (bool,), "shared_worker": (bool,),
}
CLIENT_OPTION_ALIASES = {
    "ws_message_prefix": "message_prefix", "ws_connected_message": "connected_message",
    "ws_reconnect_message": "reconnect_message", "ws_reconnect_interval": "reconnect_interval",
    "_ws_reconnect_interval": "reconnect_interval",
}


def check_client_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``client_options`` at start-up (a typo must not be silently ignored by the browser)."""
    checked: dict[str, Any] = {}
    for key, value in (options or {}).items():
        name = CLIENT_OPTION_ALIASES.get(key, key)
        types = CLIENT_OPTION_TYPES.get(name)
        if types is None:
            raise config.ConfigError(f"client_options: unknown option {key!r} "
                                     f"(known: {', '.join(CLIENT_OPTION_TYPES)})")
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            wanted = " or ".join(kind.__name__ for kind in types)
            raise config.ConfigError(f"client_options: {key!r} must be {wanted}")
        if name.endswith("interval") and not (isinstance(value, int | float) and value > 0):
            raise config.ConfigError(f"client_options: {key!r} must be a positive number of milliseconds")
        checked[name] = value
    return checked


class DistReload:
    """Live reload for one ASGI app: ``app = DistReload(app, redis_url=..., namespace=...)``.

    Serves the reload endpoint under ``prefix`` and injects the browser script into HTML pages.
    ``on_reload`` (sync or async, given the :class:`Reload`) runs in every worker a reload reaches.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        redis_url: str | None = None,
        namespace: str | None = None,
        enabled: bool | None = None,
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
        self.enabled = config.resolve_enabled(enabled)
        self.prefix = config.validate_prefix(prefix)
        self.routes = routes
        self.inject = inject
        self.csp_nonce = csp_nonce or default_csp_nonce
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.client_options = check_client_options(client_options)  # see CLIENT_OPTION_TYPES
        self._explicit_build_id = build_id
        self.build_id = build_id or ""
        self.broker = broker or get_broker(redis_url, namespace)
        if redis_url is not None or namespace is not None:
            _set_default_target(self.broker)
        self.hub = StreamHub(self.broker, heartbeat_interval=heartbeat_interval)
        self.endpoint = ReloadEndpoint(self.broker, self.hub, build_id=self.build_id,
                                       token=config.resolve_token(token), ensure_started=self.ensure_started)
        self._on_reload = on_reload
        if on_reload is not None:
            self.broker.add_listener(self._run_on_reload)
        self._started = False
        self._tag_cache: tuple[ClusterVersion, str, bytes] | None = None
        self._start_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled:
            await self.app(scope, receive, send)
            return
        scope_type = scope["type"]
        if scope_type == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
            return
        if scope_type != "http":
            await self.app(scope, receive, send)
            return
        if not self._started:
            await self.ensure_started()
        # Every request of the app passes here: the common case is kept to a few dictionary lookups.
        if self.routes and self.prefix in scope["path"]:
            subpath = self._subpath(scope)
            if subpath is not None:
                await self.endpoint(scope, receive, send, subpath)
                return
        if self.inject and scope["method"] == "GET" and _SCOPE_FLAG not in scope:
            scope[_SCOPE_FLAG] = True
            extensions = scope.get("extensions")
            if extensions and "http.response.pathsend" in extensions:
                # A file sent by path never passes through here, so ask for it as body chunks instead.
                scope = {**scope, "extensions": {key: value for key, value in extensions.items()
                                                 if key != "http.response.pathsend"}}
            injector = _Injector(send, self, scope)
            await self.app(scope, receive, injector.send)
            return
        await self.app(scope, receive, send)

    def _subpath(self, scope: Scope) -> str | None:
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path):]
        if path == self.prefix or path.startswith(self.prefix + "/"):
            return path[len(self.prefix):]
        return None

    def endpoint_base(self, scope: Scope) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        root_path: str = scope.get("root_path", "")
        return root_path.rstrip("/") + self.prefix

    def script_tag(self, scope: Scope) -> bytes:
        base = self.endpoint_base(scope)
        version = self.broker.version
        # The tag changes only with the version (or root_path): render it once per change, not per page.
        cached = self._tag_cache
        if cached is None or cached[0] is not version or cached[1] != base:
            attributes = {
                "src": f"{base}/client.js?v={CLIENT_SCRIPT_ETAG}",
                "data-distreload": base,
                "data-distreload-version": str(version),
                "data-distreload-build": self.build_id,
            }
            if self.client_options:
                attributes["data-distreload-options"] = json.dumps(self.client_options,
                                                                   separators=(",", ":"))
            rendered = " ".join(f'{name}="{html.escape(value, quote=True)}"'
                                for name, value in attributes.items())
            cached = self._tag_cache = (version, base, f"<script {rendered}".encode())
        nonce = self.csp_nonce(scope)
        if nonce:
            return cached[2] + f' nonce="{html.escape(nonce, quote=True)}" async></script>'.encode()
        return cached[2] + b" async></script>"

    async def ensure_started(self) -> None:
        """Start this worker's subscription: from the lifespan, or on the first request without one."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            if not self._explicit_build_id:
                # Both layers of patch_for_auto_reloading start on one broker: read the sources once.
                self.build_id = self.endpoint.build_id = self.broker.build_id or compute_build_id()
            self.broker.build_id = self.build_id
            self.hub.reopen()
            # patch_for_auto_reloading stacks two layers on one broker: only the one that starts it speaks.
            announce = not self.broker.is_running_here()
            await self.broker.start()
            self._started = True
            if not announce:
                return
            # A warning, not info: servers show warnings by default, and a deploy must notice this is on.
            logger.warning("distreload active: endpoint %s, Redis %s, namespace %r, worker %s, build %s "
                           "(development live-reload: keep DISTRELOAD_ENABLED off in production)",
                           self.prefix, self.broker.target.display_url(), self.broker.target.namespace,
                           self.broker.identity, self.build_id)
            if self.broker.target.is_memory and _running_under_several_workers():
                logger.warning("distreload: running under several workers with no Redis URL; a reload "
                               "reaches only the worker it was sent in. Set %s (redis://...) to reach all.",
                               config.ENV_REDIS_URL)

    async def shutdown(self) -> None:
        self.hub.close_all()
        if self._started:
            self._started = False
            await self.broker.stop()

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.ensure_started()
            elif message["type"] == "lifespan.shutdown":
                self.hub.close_all()
            return message

        return wrapped

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.shutdown()
            await send(message)

        return wrapped

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


def _headers_to_keep(message: Message) -> list[tuple[bytes, bytes]] | None:
    """The headers of an HTML page with a body, not compressed and not a download, minus the validators
    (the page will carry a per-render tag: a 304 would bring back a stale copy of it); None for anything
    that is not to be touched. One pass: every response of the app comes through here."""
    status = message.get("status", 200)
    if status < 200 or status == 204 or status == 304:
        return None
    is_html = False
    kept: list[tuple[bytes, bytes]] = []
    for header in message.get("headers", ()):
        name = header[0].lower()
        if name == b"content-type":
            is_html = b"html" in header[1].lower()  # text/html, application/xhtml+xml
        elif name == b"content-encoding":
            if header[1].strip().lower() not in (b"", b"identity"):
                return None
        elif name == b"content-disposition":
            if b"attachment" in header[1].lower():
                return None
        elif name == b"etag" or name == b"last-modified":
            continue
        kept.append(header)
    return kept if is_html else None


class _Injector:
    """Per-response state: decides from the headers, then places one tag before the last ``</body>``.

    Only the last ``SCAN_WINDOW`` bytes of each chunk are searched (the last ``</body>`` of a page sits at its
    end), and a chunk with nothing to change is forwarded as the very same message: a big streamed page
    costs a few microseconds per chunk, not a scan and a copy of every byte.
    """

    __slots__ = ("_send", "_owner", "_scope", "_start", "_headers", "_active", "_done", "_tag", "_held",
                 "_holding_marker", "_already_present", "_declared_length")

    def __init__(self, send: Send, owner: DistReload, scope: Scope) -> None:
        # Most responses are not HTML pages: set up only what deciding needs; the rest when one is.
        self._send = send
        self._owner = owner
        self._scope = scope
        self._active = False

    async def send(self, message: Message) -> None:
        if not self._active:
            if message["type"] == "http.response.start":
                headers = _headers_to_keep(message)
                if headers is not None:
                    self._active, self._done, self._headers = True, False, headers
                    self._start: Message | None = message
                    return
            await self._send(message)
            return
        if self._done:
            await self._send(message)
            return
        if message["type"] != "http.response.body":
            await self._flush_start(None)
            await self._send(message)
            return
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        if self._start is not None:
            if not more_body:
                await self._send_whole_page(body)
                return
            await self._flush_start(body)
        out = self._place(body, final=not more_body)
        if out is body and more_body:
            await self._send(message)
        elif out or not more_body:
            await self._send({"type": "http.response.body", "body": out, "more_body": more_body})

    async def _send_whole_page(self, body: bytes) -> None:
        """The common case, a page in one message: place the tag and send, nothing held."""
        start, self._start, self._done = self._start, None, True
        assert start is not None
        if PRESENT_MARKER in body:
            tag = b""
        else:
            tag = self._owner.script_tag(self._scope)
            index = _last_marker(body, after=0)
            body = body + tag if index == -1 else body[:index] + tag + body[index:]
        await self._send({**start, "headers": _with_length(self._headers, len(tag))})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _flush_start(self, first_body: bytes | None) -> None:
        """Send the held response start with headers fixed for the tag (a streamed page)."""
        start, self._start = self._start, None
        if start is None:
            return
        self._tag = self._owner.script_tag(self._scope)
        self._held, self._holding_marker = b"", False
        # A page that includes the script itself has it in its head: look through the first chunk.
        self._already_present = first_body is not None and PRESENT_MARKER in first_body
        added = 0 if self._already_present else len(self._tag)
        headers = _with_length(self._headers, added)
        # Only a length that promised room for the tag needs padding should the marker turn up later.
        self._declared_length = added > 0 and headers is not self._headers
        await self._send({**start, "headers": headers})

    def _place(self, chunk: bytes, *, final: bool) -> bytes:
        held = self._held
        data = held + chunk if held else chunk
        index = _last_marker(data, after=1 if self._holding_marker else 0)
        if index == -1 and held and not self._holding_marker:
            # A marker split across the two chunks starts in the few held bytes, maybe far from the window.
            index = _last_marker(data[: len(held) + len(BODY_MARKER)], after=0)
        if index != -1:
            out, self._held, self._holding_marker = data[:index], data[index:], True
        elif self._holding_marker:
            out, self._held = b"", data
        else:
            keep = _partial_marker_length(data)
            out, self._held = (data[:-keep], data[-keep:]) if keep else (data, b"")
        if self._holding_marker and len(self._held) > HOLD_LIMIT:
            # A huge tail after an early </body>: place the tag here rather than hold the page back.
            out, self._held, self._done = out + self._tag_bytes() + self._held, b"", True
            return out
        if final:
            out += self._tag_bytes() + self._held if self._holding_marker else self._held + self._tag_bytes()
            self._held, self._done = b"", True
        return out

    def _tag_bytes(self) -> bytes:
        if not self._already_present:
            return self._tag
        # The page carried the script already. Only a streamed response that declared its length up
        # front can get here; keep that length true with white space in place of the second tag.
        return b" " * len(self._tag) if self._declared_length else b""


SCAN_WINDOW = 1024


def _last_marker(data: bytes, *, after: int) -> int:
    """Index of the last ``</body`` (any case) starting at ``after`` or later within the scan window."""
    low = max(after, len(data) - SCAN_WINDOW)
    # Lowering the window and one search beats pre-checks: HTML is full of "</" that slow a plain search down.
    found = data[low:].lower().rfind(BODY_MARKER)
    return -1 if found == -1 else low + found


def _with_length(headers: list[tuple[bytes, bytes]], added: int) -> list[tuple[bytes, bytes]]:
    """``headers`` with Content-Length grown by ``added``; the same list when there is none to change."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"content-length":
            fixed = list(headers)
            try:
                fixed[index] = (name, str(int(value) + added).encode())
            except ValueError:
                del fixed[index]  # not a number: let the server frame the body itself
            return fixed
    return headers


def _partial_marker_length(data: bytes) -> int:
    """How many bytes at the end of ``data`` could be the start of ``</body`` (0 to 5)."""
    if data.find(b"<", max(0, len(data) - (len(BODY_MARKER) - 1))) == -1:
        return 0
    tail = data[-(len(BODY_MARKER) - 1):].lower()
    for length in range(len(tail), 0, -1):
        if tail[-length:] == BODY_MARKER[:length]:
            return length
    return 0


class UniversalMiddleware(Middleware):
    """One object usable in a Starlette ``middleware=[...]`` list, with ``add_middleware`` and as
    ``wrapper(app)``; keyword options pass through: ``app.add_middleware(auto_refresh_middleware, ...)``."""

    def __init__(self, asgi_middleware: Callable[..., ASGIApp]) -> None:
        self.fn = asgi_middleware
        super().__init__(self)

    def __call__(self, app: ASGIApp, *args: Any, **options: Any) -> ASGIApp:
        return self.fn(app, *args, **options)


def _injection_only(app: ASGIApp, **options: Any) -> ASGIApp:
    return DistReload(app, routes=False, **options)


def _routes_only(app: ASGIApp, **options: Any) -> ASGIApp:
    return DistReload(app, inject=False, **options)


html_injection_middleware = UniversalMiddleware(_injection_only)
"""Injects the browser script into HTML pages."""

reloader_route_middleware = UniversalMiddleware(_routes_only)
"""Serves the reload endpoint (``/---distreload---``) in front of the app."""


def patch_for_auto_reloading(app: ASGIApp, **options: Any) -> ASGIApp:
    """Return ``app`` with live reload: the endpoint in front, the injector inside its middleware.

    For a Starlette/FastAPI app the injector goes innermost, so compression the app adds still
    compresses the page after the tag is in; the original app object is left untouched.
    """
    from starlette.applications import Starlette

    if isinstance(app, Starlette):
        patched = copy(app)
        patched.user_middleware = [*app.user_middleware,
                                   Middleware(html_injection_middleware, **options)]
        patched.middleware_stack = None
        # Instrumentation (OpenTelemetry and others) binds methods to the original object; rebind them.
        for name in dir(patched):
            method = getattr(patched, name, None)
            if ismethod(method) and method.__self__ is app:
                setattr(patched, name, MethodType(method.__func__, patched))
        return DistReload(patched, inject=False, **options)
    return DistReload(app, **options)


auto_refresh_middleware = UniversalMiddleware(patch_for_auto_reloading)
"""Routes and injection together: the whole of distreload in one middleware."""


# --- Publishing from application code -------------------------------------------------------------------

_default_target: list[Broker] = []


def _set_default_target(broker: Broker) -> None:
    _default_target[:] = [broker]


def _broker_for(redis_url: str | None, namespace: str | None) -> Broker:
    if redis_url is None and namespace is None and _default_target:
        return _default_target[0]
    return get_broker(redis_url, namespace)


def send_reload_signal(kind: str = "reload", paths: Sequence[str] = (), *, redis_url: str | None = None,
                       namespace: str | None = None) -> PublishResult:
    """Reload every page held by every worker of the cluster; safe to call from any thread.

    ``kind="css"`` (with optional stylesheet ``paths``) swaps stylesheets in place instead. Raises
    :class:`PublishError` when the reload did not go out (Redis unreachable).
    """
    return _broker_for(redis_url, namespace).publish_threadsafe(kind, paths)


async def send_reload_signal_async(
    kind: str = "reload", paths: Sequence[str] = (), *, redis_url: str | None = None,
    namespace: str | None = None,
) -> PublishResult:
    """The async twin of :func:`send_reload_signal`, for code already on an event loop."""
    return await _broker_for(redis_url, namespace).publish(kind, paths)

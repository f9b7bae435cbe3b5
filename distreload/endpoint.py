"""The reload endpoint every worker serves under its prefix, and the hub that holds its open streams.

An open stream costs no task, queue or timer of its own: its request coroutine parks in ``receive()``
(which the server wakes only on disconnect), and the hub writes each event to every stream from one loop
iteration, calling the server's ``send`` directly. A send that cannot finish at once (a client that stopped
reading) is finished by a task for that client only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import signal
import weakref
from collections.abc import Awaitable, Callable, Generator, MutableSet
from importlib import resources
from types import FrameType
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Message, Receive, Scope, Send

from .broker import Broker
from .protocol import ClusterVersion, PublishError, Reload

logger = logging.getLogger(__name__)

CLIENT_SCRIPT = resources.files(__package__).joinpath("client.js").read_bytes()
CLIENT_SCRIPT_ETAG = hashlib.sha256(CLIENT_SCRIPT).hexdigest()[:16]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # Proxies and browsers must neither cache nor buffer the stream (nginx honours X-Accel-Buffering).
    (b"cache-control", b"no-cache, no-store, no-transform"),
    (b"x-accel-buffering", b"no"),
]
HEARTBEAT = b": heartbeat\n\n"
RETRY_MILLISECONDS = 1000


def sse_event(event: str, data: str, event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def reload_event(reload: Reload) -> bytes:
    return sse_event("reload", reload.to_json(), str(reload.version))


class _Stream:
    """One open SSE response. ``backlog`` holds messages queued behind a send that had to wait."""

    __slots__ = ("send", "backlog", "__weakref__")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.backlog: list[Message] | None = None

    def write(self, body: bytes, *, more_body: bool = True) -> bool:
        """Write without waiting; False when the stream is gone."""
        message: Message = {"type": "http.response.body", "body": body, "more_body": more_body}
        if self.backlog is not None:
            self.backlog.append(message)
            return True
        coroutine: Any = self.send(message)
        try:
            waiting_on = coroutine.send(None)
        except StopIteration:
            return True
        except Exception:
            return False
        # The server's send is waiting (its write buffer is full): finish this send, and any that queue
        # up behind it, in a task of this stream's own.
        self.backlog = []
        asyncio.ensure_future(self._finish(coroutine, waiting_on))
        return True

    async def _finish(self, coroutine: Any, waiting_on: Any) -> None:
        try:
            await _resume(coroutine, waiting_on)
            while self.backlog:
                await self.send(self.backlog.pop(0))
        except Exception:
            pass
        finally:
            self.backlog = None


async def _resume(coroutine: Any, waiting_on: Any) -> None:
    """Drive a coroutine that was started by hand until it completes, as a task would."""
    while True:
        if waiting_on is None:
            await asyncio.sleep(0)
        else:
            # The coroutine itself sees the outcome when it is resumed.
            with contextlib.suppress(BaseException):
                await waiting_on
        try:
            waiting_on = coroutine.send(None)
        except StopIteration:
            return


class StreamHub:
    """All open streams of one app in this process, woken together by one broadcast."""

    def __init__(self, broker: Broker, *, heartbeat_interval: float = 15.0) -> None:
        self.broker = broker
        self.heartbeat_interval = heartbeat_interval
        self.closing = False
        self._streams: MutableSet[_Stream] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        broker.add_listener(self.broadcast_reload)
        broker.stream_count = functools.partial(streams_held, broker)
        _live_hubs.add(self)

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, send: Send, first: bytes) -> _Stream:
        stream = _Stream(send)
        self._streams.add(stream)
        stream.write(first)
        self._ensure_heartbeat()
        return stream

    def discard(self, stream: _Stream) -> None:
        self._streams.discard(stream)

    def broadcast(self, body: bytes) -> None:
        for stream in list(self._streams):
            if not stream.write(body):
                self._streams.discard(stream)

    def broadcast_reload(self, reload: Reload) -> None:
        self.broadcast(reload_event(reload))

    def close_all(self, reason: str = "shutdown") -> None:
        """End every stream now, so a server that is stopping does not wait for open pages."""
        self.closing = True
        farewell = sse_event("shutdown", json.dumps({"reason": reason}))
        streams, self._streams = list(self._streams), set()
        for stream in streams:
            stream.write(farewell, more_body=False)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None

    def reopen(self) -> None:
        """The server is starting (again): accept streams."""
        self.closing = False
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to watch from
            asyncio.get_running_loop()
            if _gunicorn_reloader_on():
                # Watched from the start, not from the first stream: the watch is what makes a code
                # change restart this worker (see _server_is_exiting).
                _watch_for_server_exit()

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat())
        # Every time: the watch ends when the last stream does, the heartbeat task only a beat later.
        _watch_for_server_exit()

    async def _beat(self) -> None:
        # One timer for every stream: keeps proxies from timing the streams out.
        while self._streams:
            await asyncio.sleep(self.heartbeat_interval)
            self.broadcast(HEARTBEAT)


_live_hubs: weakref.WeakSet[StreamHub] = weakref.WeakSet()


def streams_held(broker: Broker) -> int:
    """Open streams of every app in this process that reloads through ``broker`` (for its presence)."""
    return sum(len(hub) for hub in list(_live_hubs) if hub.broker is broker)


def close_all_streams(reason: str = "shutdown") -> None:
    for hub in list(_live_hubs):
        hub.close_all(reason)


# --- Ending streams when the server stops --------------------------------------------------------------
# uvicorn and gunicorn wait for open responses before they exit ("Waiting for connections to close"), and
# they tell the app nothing until every connection is gone. So distreload listens for the same signals,
# chained in front of the server's own handlers, and also watches the server's exit flag.

_hooked_signals: set[int] = set()
_watch_task: asyncio.Task[None] | None = None


def _watch_for_server_exit() -> None:
    global _watch_task
    loop = asyncio.get_running_loop()
    _chain_signal_handlers(loop)
    if _watch_task is None or _watch_task.done() or _watch_task.get_loop() is not loop:
        _watch_task = loop.create_task(_poll_server_exit())


def _chain_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signum in _hooked_signals:
            continue
        try:
            previous = signal.getsignal(signum)
        except ValueError:
            return
        if not callable(previous):
            continue  # no server handler to chain: the default action ends the process anyway

        def handler(sig: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            loop.call_soon_threadsafe(close_all_streams)
            previous(sig, frame)

        try:
            signal.signal(signum, handler)
        except ValueError:  # not the main thread
            return
        _hooked_signals.add(signum)


def _server_objects() -> Generator[Any, None, None]:
    """The objects (uvicorn's ``Server``, a gunicorn worker) whose methods handle SIGTERM and SIGINT."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            handler = signal.getsignal(signum)
        except ValueError:  # not the main thread
            return
        yield from _handler_owners(handler)


def _server_is_exiting() -> bool:
    """Read uvicorn's ``should_exit`` (and gunicorn's ``alive``) from the objects behind the handlers."""
    for candidate in _server_objects():
        if getattr(candidate, "should_exit", False) is True:
            return True
        if getattr(candidate, "alive", True) is False:
            return True
        worker = _gunicorn_worker_behind(candidate)
        if worker is not None and getattr(worker, "alive", True) is False:
            # gunicorn's reloader (--reload) marks the worker dead and ends only its own thread with
            # sys.exit; uvicorn's server under it never hears of it and goes on serving the old code
            # (benoitc/gunicorn#2339). Stop the server as SIGTERM would, so gunicorn boots new code.
            candidate.should_exit = True
            return True
    return False


def _gunicorn_worker_behind(server: Any) -> Any:
    """The gunicorn worker running a uvicorn ``Server`` (uvicorn-worker passes its bound
    ``callback_notify`` into the server's config), or None."""
    callback = getattr(getattr(server, "config", None), "callback_notify", None)
    worker = getattr(callback, "__self__", None)
    return worker if worker is not None and hasattr(worker, "alive") else None


def _gunicorn_reloader_on() -> bool:
    for candidate in _server_objects():
        worker = _gunicorn_worker_behind(candidate)
        if worker is not None and getattr(worker, "reloader", None) is not None:
            return True
    return False


def _handler_owners(handler: Any) -> Generator[Any, None, None]:
    owner = getattr(handler, "__self__", None)
    if owner is not None:
        yield owner
    defaults = getattr(handler, "__defaults__", None) or ()
    for value in defaults:  # our own chained handler keeps the server's as a default argument
        inner = getattr(value, "__self__", None)
        if inner is not None:
            yield inner


async def _poll_server_exit() -> None:
    # Under gunicorn --reload the watch outlives the streams: it is what turns a code change into a restart.
    while any(len(hub) for hub in list(_live_hubs)) or _gunicorn_reloader_on():
        if _server_is_exiting():
            close_all_streams()
            return
        await asyncio.sleep(0.25)


# --- The ASGI endpoint --------------------------------------------------------------------------------

async def _send_simple(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                       *, head: bool = False) -> None:
    all_headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class ReloadEndpoint:
    """Serves ``<prefix>`` (readiness), ``<prefix>/events`` (SSE), ``<prefix>/client.js`` and, when a
    token is configured, ``<prefix>/publish``."""

    def __init__(self, broker: Broker, hub: StreamHub, *, build_id: str,
                 token: str | None = None,
                 ensure_started: Callable[[], Awaitable[None]] | None = None) -> None:
        self.broker = broker
        self.hub = hub
        self.build_id = build_id
        self.token = token
        self._ensure_started = ensure_started

    def version_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-distreload-version", str(self.broker.version).encode()),
            (b"x-distreload-build", self.build_id.encode()),
            (b"cache-control", b"no-store"),
        ]

    def __call__(self, scope: Scope, receive: Receive, send: Send, subpath: str) -> Awaitable[None]:
        # A plain function handing back the handler's coroutine: an open stream keeps one frame fewer.
        method = scope.get("method", "GET")
        if subpath in ("", "/"):
            if method not in ("GET", "HEAD"):
                return self._not_allowed(send, "GET, HEAD")
            return self._info(send, head=method == "HEAD")
        if subpath == "/events":
            if method != "GET":
                return self._not_allowed(send, "GET")
            return self._events(scope, receive, send)
        if subpath == "/client.js":
            if method not in ("GET", "HEAD"):
                return self._not_allowed(send, "GET, HEAD")
            return self._client_script(scope, send, head=method == "HEAD")
        if subpath == "/publish" and self.token:
            if method != "POST":
                return self._not_allowed(send, "POST")
            return self._publish(scope, receive, send)
        return _send_simple(send, 404, b"distreload: no such endpoint\n",
                            [(b"content-type", b"text/plain; charset=utf-8")], head=method == "HEAD")

    async def _not_allowed(self, send: Send, allowed: str) -> None:
        await _send_simple(send, 405, b"distreload: method not allowed\n",
                           [(b"content-type", b"text/plain; charset=utf-8"), (b"allow", allowed.encode())])

    async def _info(self, send: Send, *, head: bool) -> None:
        body = json.dumps({
            "version": str(self.broker.version),
            "build": self.build_id,
            "worker": str(self.broker.identity),
            "streams": len(self.hub),
            "redis_connected": self.broker.connected,
        }).encode()
        headers = [(b"content-type", b"application/json"), *self.version_headers()]
        await _send_simple(send, 200, body, headers, head=head)

    async def _client_script(self, scope: Scope, send: Send, *, head: bool) -> None:
        etag = f'"{CLIENT_SCRIPT_ETAG}"'.encode()
        headers = [(b"content-type", b"text/javascript; charset=utf-8"),
                   (b"cache-control", b"public, max-age=86400"), (b"etag", etag)]
        if (_header(scope, b"if-none-match") or "").encode() == etag:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await _send_simple(send, 200, CLIENT_SCRIPT, headers, head=head)

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = await self._open_stream(scope, send)
        if stream is None:
            return
        # Parked here until the client goes away (or the hub ends the response at shutdown): the server
        # wakes this coroutine for nothing else, and every event is written by the hub directly.
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.hub.discard(stream)

    async def _open_stream(self, scope: Scope, send: Send) -> _Stream | None:
        """Answer the request and register the stream; None when the server is stopping. A function of its
        own so that what it builds is freed before the stream parks for hours."""
        if self._ensure_started is not None:
            await self._ensure_started()
        if self.hub.closing:
            await _send_simple(send, 503, b"distreload: server is shutting down\n",
                               [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")])
            return None
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        last_event_id = _header(scope, b"last-event-id") or (query.get("last_event_id") or [""])[0]
        seen = ClusterVersion.parse(last_event_id)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*SSE_HEADERS, *self.version_headers()[:2]]})
        current = self.broker.version
        hello = json.dumps({"version": str(current), "build": self.build_id,
                            "worker": str(self.broker.identity),
                            "heartbeat": self.hub.heartbeat_interval})
        first = f"retry: {RETRY_MILLISECONDS}\n\n".encode() + sse_event("hello", hello, str(current))
        if seen is not None and seen.is_behind(current):
            # Reconnected after missing a reload: deliver it now (what was missed is unknown: reload all).
            first += reload_event(Reload(current, "reload"))
        return self.hub.open(send, first)

    async def _publish(self, scope: Scope, receive: Receive, send: Send) -> None:
        json_headers = [(b"content-type", b"application/json")]
        supplied = _header(scope, b"authorization") or ""
        scheme, _, credential = supplied.partition(" ")
        expected = (self.token or "").encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), expected):
            await _send_simple(send, 401, b'{"error":"missing or wrong bearer token"}\n',
                               [*json_headers, (b"www-authenticate", b"Bearer")])
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > 64 * 1024:
                await _send_simple(send, 413, b'{"error":"request body too large"}\n', json_headers)
                return
            if not message.get("more_body", False):
                break
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
            kind = request.get("kind", "reload")
            paths = request.get("paths", [])
            if not isinstance(kind, str) or not isinstance(paths, list):
                raise ValueError("kind must be a string and paths a list")
            result = await self.broker.publish(kind, paths)
        except ValueError as exc:
            await _send_simple(send, 400, json.dumps({"error": str(exc)}).encode(), json_headers)
            return
        except PublishError as exc:
            await _send_simple(send, 503, json.dumps({"error": str(exc)}).encode(), json_headers)
            return
        answer = {"version": str(result.version), "receivers": result.receivers}
        await _send_simple(send, 200, json.dumps(answer).encode(), json_headers)

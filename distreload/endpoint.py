"""The reload endpoint every worker serves under its prefix: readiness, the event stream, the browser
script, and (with a token) publishing over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from .broker import Broker
from .hub import Stream, StreamHub, reload_event, sse_event
from .protocol import ClusterVersion, PublishError, reload_request

if TYPE_CHECKING:
    from .fleet import FleetRoutes

CLIENT_SCRIPT = resources.files(__package__).joinpath("client.js").read_bytes()
CLIENT_SCRIPT_ETAG = hashlib.sha256(CLIENT_SCRIPT).hexdigest()[:16]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # Proxies and browsers must neither cache nor buffer the stream (nginx honours X-Accel-Buffering).
    (b"cache-control", b"no-cache, no-store, no-transform"),
    (b"x-accel-buffering", b"no"),
]
RETRY_MILLISECONDS = 1000
MAX_PUBLISH_BODY = 64 * 1024
MAX_WAIT_SECONDS = 3600


async def respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], *, head: bool = False
) -> None:
    """A whole small response: status, headers with Content-Length, body (none for a HEAD request)."""
    all_headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of the request header ``name`` (lower case), if any."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def bearer_matches(scope: Scope, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``; compared in constant time."""
    scheme, _, credential = (header(scope, b"authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode())


class BodyTooLarge(Exception):
    """A request body past the route's limit; the rest of it was not read."""


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request's whole body, or None when the client left first; raise BodyTooLarge past ``limit``
    bytes, so that a client cannot make a worker hold more than that."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return body


class ReloadEndpoint:
    """Serves ``<prefix>`` (readiness), ``<prefix>/events`` (SSE), ``<prefix>/client.js`` and, when a
    token is configured, ``<prefix>/publish``."""

    def __init__(
        self,
        broker: Broker,
        hub: StreamHub,
        *,
        build_id: str,
        token: str | None = None,
        ensure_started: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.broker = broker
        self.hub = hub
        self.build_id = build_id
        self.token = token
        self._ensure_started = ensure_started
        # The page reports, the fleet page and --wait (see fleet.py); None serves none of them.
        self.fleet: FleetRoutes | None = None
        hub.on_close = self._stream_closed

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
        if self.fleet is not None and subpath in self.fleet.subpaths:
            return self.fleet(scope, receive, send, subpath)
        return respond(
            send,
            404,
            b"distreload: no such endpoint\n",
            [(b"content-type", b"text/plain; charset=utf-8")],
            head=method == "HEAD",
        )

    async def _not_allowed(self, send: Send, allowed: str) -> None:
        await respond(
            send,
            405,
            b"distreload: method not allowed\n",
            [(b"content-type", b"text/plain; charset=utf-8"), (b"allow", allowed.encode())],
        )

    async def _info(self, send: Send, *, head: bool) -> None:
        body = json.dumps(
            {
                "version": str(self.broker.version),
                "build": self.build_id,
                "worker": str(self.broker.identity),
                "streams": len(self.hub),
                "redis_connected": self.broker.connected,
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), *self.version_headers()]
        await respond(send, 200, body, headers, head=head)

    async def _client_script(self, scope: Scope, send: Send, *, head: bool) -> None:
        etag = f'"{CLIENT_SCRIPT_ETAG}"'.encode()
        headers = [
            (b"content-type", b"text/javascript; charset=utf-8"),
            (b"cache-control", b"public, max-age=86400"),
            (b"etag", etag),
        ]
        if (header(scope, b"if-none-match") or "").encode() == etag:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await respond(send, 200, CLIENT_SCRIPT, headers, head=head)

    def _events(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # The stream's own serve() is the one frame an open stream keeps; the opening runs inside it.
        stream = self.hub.stream(send)
        return stream.serve(receive, self._open_stream(scope, send, stream))

    async def _open_stream(self, scope: Scope, send: Send, stream: Stream) -> bool:
        """Answer the event stream request, register the stream and write its first events; False when
        refused. What this needs on the way (query, headers, the first events) is gone once it returns."""
        if self._ensure_started is not None:
            await self._ensure_started()
        if self.hub.closing:
            await respond(
                send,
                503,
                b"distreload: server is shutting down\n",
                [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")],
            )
            return False
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*SSE_HEADERS, *self.version_headers()[:2]],
            }
        )
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        last_event_id = header(scope, b"last-event-id") or (query.get("last_event_id") or [""])[0]
        seen = ClusterVersion.parse(last_event_id)
        current = self.broker.version
        # Registered before the first events go out, so a reload arriving while they are written is queued
        # behind them. A client that comes from a worker further on is not told again what it has.
        ahead = seen if seen is not None and current.is_behind(seen) else None
        # The pages that report through this stream (its id comes with the hello) leave when it closes.
        # It begins with this worker's token: a report for it that another worker receives is passed on.
        stream.key = secrets.token_hex(8) if self.fleet is None else self.fleet.pages.new_stream_id()
        self.hub.add(stream, client_ahead=ahead)
        if self.fleet is not None:
            self.fleet.pages.stream_opened(stream.key)
        try:
            first = self._first_events(seen, current, stream.key)
            await send({"type": "http.response.body", "body": first, "more_body": True})
        except BaseException:
            self.hub.discard(stream)
            if self.fleet is not None:
                self.fleet.pages.stream_closed(stream.key)
            raise
        return True

    def _stream_closed(self, stream: Stream) -> None:
        if self.fleet is not None:
            self.fleet.pages.stream_closed(stream.key)

    def _first_events(
        self, seen: ClusterVersion | None, current: ClusterVersion, stream_id: str = ""
    ) -> bytes:
        """The retry hint, hello, and the reload a reconnecting client missed, if any."""
        hello = json.dumps(
            {
                "version": str(current),
                "build": self.build_id,
                "worker": str(self.broker.identity),
                "heartbeat": self.hub.heartbeat_interval,
                "stream": stream_id,
            }
        )
        first = f"retry: {RETRY_MILLISECONDS}\n\n".encode() + sse_event("hello", hello, str(current))
        if seen is not None and seen.is_behind(current):
            # Reconnected after missing a reload: deliver it now (the last one when only it was missed).
            first += reload_event(self.broker.state().reload_for(seen))
        return first

    async def _publish(self, scope: Scope, receive: Receive, send: Send) -> None:
        json_headers = [(b"content-type", b"application/json")]
        if not bearer_matches(scope, self.token or ""):
            await respond(
                send,
                401,
                b'{"error":"missing or wrong bearer token"}\n',
                [*json_headers, (b"www-authenticate", b"Bearer")],
            )
            return
        try:
            body = await read_body(receive, MAX_PUBLISH_BODY)
        except BodyTooLarge:
            await respond(send, 413, b'{"error":"request body too large"}\n', json_headers)
            return
        if body is None:
            return
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
            unknown = set(request) - {"kind", "paths", "spread", "match", "wait"}
            if unknown:
                raise ValueError(
                    f"unknown field {sorted(unknown)[0]!r} (known: kind, paths, spread, match, wait)"
                )
            wait = request.get("wait")
            if wait is not None and (
                isinstance(wait, bool)
                or not isinstance(wait, int | float)
                or not 0 < wait <= MAX_WAIT_SECONDS
            ):
                raise ValueError(f"wait must be a number of seconds above 0, at most {MAX_WAIT_SECONDS}")
            paths = request.get("paths", [])
            if not isinstance(paths, list):
                raise ValueError("paths must be a list of URL paths")
            reload = reload_request(
                request.get("kind", "reload"), paths, request.get("spread", 0.0), request.get("match")
            )
            if wait is not None:
                from .delivery import PagesUnavailable
                from .publisher import publish_and_wait

                try:
                    summary = await publish_and_wait(self.broker, reload, float(wait))
                except PagesUnavailable as exc:
                    raise PublishError(str(exc)) from None
                answer = {"version": str(summary.version), "receivers": summary.receivers}
                answer["pages"] = summary.pages.to_dict() if summary.pages is not None else None
                await respond(send, 200, json.dumps(answer).encode(), json_headers)
                return
            result = await self.broker.publish(reload)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep to read
            await respond(send, 400, json.dumps({"error": str(exc)}).encode(), json_headers)
            return
        except PublishError as exc:
            await respond(send, 503, json.dumps({"error": str(exc)}).encode(), json_headers)
            return
        answer = {"version": str(result.version), "receivers": result.receivers}
        await respond(send, 200, json.dumps(answer).encode(), json_headers)

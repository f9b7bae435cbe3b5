"""The app every benchmark serves, bare or wrapped: ``build_app(variant)``.

uvicorn loads ``benchmarks.apps:app``, built for the variant named in ``BENCH_VARIANT``; distreload talks to
the Redis in ``BENCH_REDIS_URL`` (namespace ``BENCH_NAMESPACE``) when it is set, else to its memory backend.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from benchmarks.common import BARE, DISTRELOAD, DISTRELOAD_DROPIN, FASTAPI_RELOADER, FLOOR, INJECTOR_FLOOR

CHUNK_SIZE = 64 * 1024

# A small, ordinary page (about 2 KB): what a template renders for a developer's browser.
PAGE = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Benchmark page</title>'
    '<link rel="stylesheet" href="/static/site.css"></head>\n<body>\n<header><nav><a href="/">Home</a> '
    '<a href="/about">About</a></nav></header>\n<main>\n'
    + "".join(
        f'<section id="s{i}"><h2>Section {i}</h2><p>Some text for paragraph {i}, with a '
        f'<a href="/item/{i}">link</a> and <em>emphasis</em>.</p></section>\n'
        for i in range(16)
    )
    + "</main>\n<footer>footer</footer>\n</body>\n</html>\n"
)

# A longer page (about 20 KB): a listing, with a pager whose links carry query strings.
PAGE_20K = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Benchmark listing</title>'
    '<link rel="stylesheet" href="/static/site.css"></head>\n<body>\n<header><nav><a href="/">Home</a> '
    '<a href="/about">About</a></nav></header>\n<main>\n<table>\n'
    + "".join(
        f'<tr id="r{i}"><td><a href="/item/{i}">Item {i}</a></td><td>A line of text describing item {i}'
        f"</td><td><em>{i * 7 % 100}</em></td></tr>\n"
        for i in range(166)
    )
    + "</table>\n<nav>"
    + " ".join(f'<a href="/items?page={n}">{n}</a>' for n in range(1, 5))
    + "</nav>\n</main>\n<footer>footer</footer>\n</body>\n</html>\n"
)

_FILLER_LINE = b"<p>" + b"streamed paragraph text " * 3 + b"</p>\n"
FILLER_CHUNK = (_FILLER_LINE * (CHUNK_SIZE // len(_FILLER_LINE) + 1))[:CHUNK_SIZE]
PAGE_HEAD = b"<!doctype html>\n<html><head><title>big page</title></head>\n<body>\n"
PAGE_TAIL = b"\n</body>\n</html>\n"


def big_page_chunks(total_bytes: int) -> list[bytes]:
    """The chunks of an HTML page of ``total_bytes`` (the filler chunk object is reused, as a server's
    template engine or file reader would hand out fresh buffers of the same size)."""
    count = max(2, round(total_bytes / CHUNK_SIZE))
    chunks = [PAGE_HEAD + FILLER_CHUNK[len(PAGE_HEAD) :]] + [FILLER_CHUNK] * (count - 2)
    chunks.append(FILLER_CHUNK[: CHUNK_SIZE - len(PAGE_TAIL)] + PAGE_TAIL)
    return chunks


def base_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/ready")
    async def ready() -> Response:
        return Response(str(os.getpid()), media_type="text/plain")

    @app.get("/json")
    async def as_json() -> dict[str, object]:
        return {"message": "hello", "items": [1, 2, 3]}

    @app.get("/page", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/page-20k", response_class=HTMLResponse)
    async def page_20k() -> str:
        return PAGE_20K

    @app.get("/big")
    async def big(mb: float = 10.0) -> StreamingResponse:
        chunks = big_page_chunks(int(mb * 2**20))

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return StreamingResponse(stream(), media_type="text/html; charset=utf-8")

    return app


# The floor's reload: as many bytes as distreload's reload event, so that both cost the server the same write.
FLOOR_RELOAD = (
    b'event: reload\nid: 0123456789abcdef-1\ndata: {"version": "0123456789abcdef-1", "kind": "full", '
    b'"paths": [], "match": null, "spread": 0}\n\n'
)


class FloorApp:
    """The least an ASGI app on uvicorn can do to hold event streams and reach them all: a stream costs only
    what the server needs to hold the connection open (the idle floor), and a reload is one loop awaiting
    the server's ``send`` for each stream in turn: no task, no context, no record per stream (the fan-out
    floor). With a Redis URL, POST /trigger publishes on a channel every worker listens to; without one it
    reaches the streams of the worker it lands on."""

    def __init__(self, redis_url: str | None = None, namespace: str | None = None) -> None:
        self.redis_url = redis_url
        self.channel = f"{namespace or 'floor'}:floor-reload"
        self.sends: set[Send] = set()
        self.listener: asyncio.Task[None] | None = None
        self.publisher: Any = None  # one connection kept, as distreload keeps its own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/ready":
            await _answer(send, str(os.getpid()).encode())
            return
        if scope["path"] == "/trigger":
            await self.trigger()
            await _answer(send, b"{}")
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        if self.redis_url is not None and self.listener is None:
            self.listener = asyncio.get_running_loop().create_task(self.listen())
        self.sends.add(send)
        try:
            await send(
                {
                    "type": "http.response.body",
                    "body": b'event: hello\ndata: {"worker": "floor-%d"}\n\n' % os.getpid(),
                    "more_body": True,
                }
            )
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.sends.discard(send)

    async def trigger(self) -> None:
        if self.redis_url is None:
            await self.reach_all()
            return
        if self.publisher is None:
            import redis.asyncio

            self.publisher = redis.asyncio.Redis.from_url(self.redis_url)
        await self.publisher.publish(self.channel, b"reload")

    async def listen(self) -> None:
        import redis.asyncio

        async with redis.asyncio.Redis.from_url(self.redis_url) as client, client.pubsub() as pubsub:
            await pubsub.subscribe(self.channel)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    await self.reach_all()

    async def reach_all(self) -> None:
        message = {"type": "http.response.body", "body": FLOOR_RELOAD, "more_body": True}
        for send in list(self.sends):
            try:
                await send(message)
            except Exception:
                self.sends.discard(send)


async def _answer(send: Send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


# A tag as distreload writes it for this app's pages (its length, its shape): what the injector floor places,
# and what page_steps.py joins into a page.
SAMPLE_TAG = (
    b'<script src="/---distreload---/client.js?v=0123456789abcdef" data-distreload="/---distreload---" '
    b'data-distreload-version="0123456789abcdef-1" data-distreload-build="0123456789ab" async></script>'
)
_BODY_END = b"</body"
_DECIDING, _PAGE, _PASSING = range(3)


class InjectorFloor:
    """The least any middleware placing a script tag can do to these benchmarks' pages: the yardstick for
    what placing a tag costs at all, measured beside the bare app and distreload.

    A response whose Content-Type starts ``text/html`` goes out with its Content-Length (if any) grown by
    the tag at once, as it always gets the tag; then the tag goes before the ``</body>`` (spelt so) in the
    end of the first body message that has one there, as much of it as distreload looks at in a chunk
    (``injector.CHUNK_WINDOW``), with one copy; or at the end of the page. Everything else is left out,
    and it is what distreload does on top: looking for a tag already in the page (and then leaving the
    page as it came, which means holding its start), ``</body>`` in other cases and farther from the end,
    HEAD, validators, encodings, charsets, byte order marks, the reload endpoint and its check header.
    ``send`` hands back the server's own awaitable, as distreload's does, so that the difference is the
    work done, not how."""

    def __init__(self, app: ASGIApp) -> None:
        # The end of a chunk looked at is distreload's own: imported here, so that the bare app's process
        # never loads distreload.
        from distreload.injector import CHUNK_WINDOW

        self.app = app
        self.end_looked_at = CHUNK_WINDOW

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _FloorResponse(send, -self.end_looked_at).send)


class _FloorResponse:
    __slots__ = ("_send", "_state", "_from_end")

    def __init__(self, send: Send, from_end: int) -> None:
        self._send = send
        self._state = _DECIDING
        self._from_end = from_end

    def send(self, message: Message) -> Awaitable[None]:
        state = self._state
        if state == _DECIDING:
            self._state = _PASSING
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                for name, value in headers:
                    if name == b"content-type":
                        if value.startswith(b"text/html"):
                            self._state = _PAGE
                            return self._send({**message, "headers": _grown(headers)})
                        break
        elif state == _PAGE:
            body: bytes = message.get("body", b"")
            at = body.rfind(_BODY_END, self._from_end)
            if at != -1 or not message.get("more_body", False):
                self._state = _PASSING
                body = b"".join((body[:at], SAMPLE_TAG, body[at:])) if at != -1 else body + SAMPLE_TAG
                return self._send({**message, "body": body})
        return self._send(message)


def _grown(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [
        (name, b"%d" % (int(value) + len(SAMPLE_TAG))) if name == b"content-length" else (name, value)
        for name, value in headers
    ]


def build_app(variant: str, *, redis_url: str | None = None, namespace: str | None = None) -> ASGIApp:
    if variant == FLOOR:
        return FloorApp(redis_url, namespace)
    app = base_app()
    if variant == BARE:
        return app
    if variant == INJECTOR_FLOOR:
        return InjectorFloor(app)
    if variant in (DISTRELOAD, DISTRELOAD_DROPIN):
        import distreload

        @app.post("/trigger")
        async def trigger() -> JSONResponse:
            result = await distreload.send_reload_signal_async()
            return JSONResponse({"version": str(result.version), "receivers": result.receivers})

        options: dict[str, object] = {"enabled": True, "redis_url": redis_url, "namespace": namespace}
        if variant == DISTRELOAD:
            return distreload.DistReload(app, **options)  # type: ignore[arg-type]
        return distreload.patch_for_auto_reloading(app, **options)
    if variant == FASTAPI_RELOADER:
        import fastapi_reloader

        @app.post("/trigger")
        async def trigger_fastapi_reloader() -> JSONResponse:
            fastapi_reloader.send_reload_signal()  # per process: reaches the streams of this worker only
            return JSONResponse({"receivers": 1})

        return fastapi_reloader.patch_for_auto_reloading(app)
    raise ValueError(f"unknown variant {variant!r}")


def _app_from_environment() -> ASGIApp:
    return build_app(
        os.environ.get("BENCH_VARIANT", BARE),
        redis_url=os.environ.get("BENCH_REDIS_URL") or None,
        namespace=os.environ.get("BENCH_NAMESPACE") or None,
    )


def __getattr__(name: str) -> ASGIApp:
    # Built on first access, so importing this module for build_app() does not build an app.
    if name == "app":
        built = _app_from_environment()
        globals()["app"] = built
        return built
    raise AttributeError(name)

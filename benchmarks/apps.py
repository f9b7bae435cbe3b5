"""The app every benchmark serves, bare or wrapped: ``build_app(variant)``.

uvicorn loads ``benchmarks.apps:app``, built for the variant named in ``BENCH_VARIANT``; distreload talks to
the Redis in ``BENCH_REDIS_URL`` (namespace ``BENCH_NAMESPACE``) when it is set, else to its memory backend.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from benchmarks.common import BARE, DISTRELOAD, DISTRELOAD_DROPIN, FASTAPI_RELOADER, FLOOR

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


async def floor_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An event stream that costs only what the server needs to hold the connection open."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/ready":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    await send(
        {
            "type": "http.response.body",
            "body": b'event: hello\ndata: {"worker": "floor"}\n\n',
            "more_body": True,
        }
    )
    while (await receive())["type"] != "http.disconnect":
        pass


def build_app(variant: str, *, redis_url: str | None = None, namespace: str | None = None) -> ASGIApp:
    if variant == FLOOR:
        return floor_app
    app = base_app()
    if variant == BARE:
        return app
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

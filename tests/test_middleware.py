"""The injector and the drop-in API, driven through ASGI with a ``send`` that records every message."""

from __future__ import annotations

import asyncio
import gzip
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import distreload
from distreload import (
    DistReload,
    UniversalMiddleware,
    auto_refresh_middleware,
    html_injection_middleware,
    patch_for_auto_reloading,
    reloader_route_middleware,
)
from distreload.broker import MemoryBroker
from distreload.config import ConfigError, Target
from distreload.middleware import compute_build_id, default_csp_nonce

pytestmark = pytest.mark.anyio

TAG_PATTERN = re.compile(
    rb'<script src="[^"]*/client\.js\?v=[0-9a-f]+" data-distreload="[^"]*"[^>]*></script>')


def memory_broker() -> MemoryBroker:
    return MemoryBroker(Target("memory://", "test"))


def raw_app(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None,
            chunks: list[bytes] | None = None) -> ASGIApp:
    """An ASGI app that answers with exactly these headers and body chunks."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": headers if headers is not None else [(b"content-type", b"text/html")]})
        parts = chunks if chunks is not None else [b"<html><body>hi</body></html>"]
        for index, chunk in enumerate(parts):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < len(parts) - 1})
    return app


def wrap(app: ASGIApp, **options: Any) -> DistReload:
    options.setdefault("enabled", True)
    options.setdefault("broker", memory_broker())
    options.setdefault("build_id", "build1")
    return DistReload(app, **options)


async def call(app: ASGIApp, method: str = "GET", path: str = "/", *, root_path: str = "",
               headers: list[tuple[bytes, bytes]] | None = None,
               extra_scope: dict[str, Any] | None = None) -> list[Message]:
    sent: list[Message] = []
    requested = False
    finished = asyncio.Event()

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # like a server: http.disconnect only once the response is over
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    scope: Scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                    "scheme": "http", "path": root_path + path, "raw_path": (root_path + path).encode(),
                    "root_path": root_path, "query_string": b"", "headers": headers or [],
                    "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), **(extra_scope or {})}
    await app(scope, receive, send)
    return sent


def body_of(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def headers_of(messages: list[Message]) -> list[tuple[bytes, bytes]]:
    return list(messages[0]["headers"])


def header(messages: list[Message], name: bytes) -> list[bytes]:
    return [v for k, v in headers_of(messages) if k.lower() == name]


def tag_of(app: DistReload, root_path: str = "") -> bytes:
    return app.script_tag({"type": "http", "root_path": root_path, "headers": []})


# --- Where the tag goes ---------------------------------------------------------------------------------

async def test_tag_goes_before_body_close_and_content_length_follows() -> None:
    page = b"<html><body><h1>hi</h1></body></html>"
    app = wrap(raw_app(headers=[(b"content-type", b"text/html; charset=utf-8"),
                                (b"content-length", str(len(page)).encode())], chunks=[page]))
    sent = await call(app)
    tag = tag_of(app)
    assert body_of(sent) == b"<html><body><h1>hi</h1>" + tag + b"</body></html>"
    assert header(sent, b"content-length") == [str(len(page) + len(tag)).encode()]
    assert tag.startswith(b'<script src="/---distreload---/client.js?v=')
    assert b'data-distreload-build="build1"' in tag


async def test_marker_split_across_chunks_is_found() -> None:
    chunks = [b"<html><body>a</bo", b"dy></html>"]
    app = wrap(raw_app(chunks=chunks))
    sent = await call(app)
    assert body_of(sent) == b"<html><body>a" + tag_of(app) + b"</body></html>"


async def test_tag_goes_before_the_last_body_close_in_any_case() -> None:
    chunks = [b"<body><pre>&lt;/body&gt; </body> sample</pre>", b"</BODY>\n</html>\n"]
    app = wrap(raw_app(chunks=chunks))
    sent = await call(app)
    expected = b"<body><pre>&lt;/body&gt; </body> sample</pre>" + tag_of(app) + b"</BODY>\n</html>\n"
    assert body_of(sent) == expected


async def test_page_without_body_close_gets_the_tag_appended() -> None:
    app = wrap(raw_app(chunks=[b"<h1>fragment</h1>"]))
    sent = await call(app)
    assert body_of(sent) == b"<h1>fragment</h1>" + tag_of(app)


async def test_a_body_close_far_from_the_end_leaves_the_tag_at_the_end() -> None:
    """Only each chunk's last 1 KiB is searched: a </body> followed by more than that (unusual: the
    last one ends a page) puts the tag at the end, where browsers still run it."""
    page = b"<html><body>x</body>" + b"<!-- trailing -->" * 1000 + b"</html>"
    app = wrap(raw_app(chunks=[page]))
    assert body_of(await call(app)) == page + tag_of(app)


async def test_chunks_with_nothing_to_change_are_forwarded_as_they_are() -> None:
    middle = {"type": "http.response.body", "body": b"<p>" + b"x" * 100_000 + b"</p>", "more_body": True}
    forwarded: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        html_type = [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": 200, "headers": html_type})
        await send({"type": "http.response.body", "body": b"<html><body>", "more_body": True})
        await send(middle)
        await send({"type": "http.response.body", "body": b"</body></html>", "more_body": False})

    async def send(message: Message) -> None:
        forwarded.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "GET", "path": "/", "root_path": "", "headers": [],
             "query_string": b""}
    await wrap(app)(scope, receive, send)
    assert forwarded[2] is middle  # no copy, no new message


async def test_page_that_already_carries_the_script_gets_no_second_tag() -> None:
    page = b'<html><body><script src="/x.js" data-distreload="/---distreload---"></script></body></html>'
    headers = [(b"content-type", b"text/html"), (b"content-length", str(len(page)).encode())]
    app = wrap(raw_app(headers=headers, chunks=[page]))
    sent = await call(app)
    assert body_of(sent) == page
    assert header(sent, b"content-length") == [str(len(page)).encode()]


async def test_applying_the_middleware_twice_injects_once() -> None:
    broker = memory_broker()
    app = wrap(wrap(raw_app(), broker=broker), broker=broker)
    sent = await call(app)
    assert len(TAG_PATTERN.findall(body_of(sent))) == 1


# --- What is left alone ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "status", "headers"), [
    ("HEAD", 200, [(b"content-type", b"text/html")]),
    ("POST", 200, [(b"content-type", b"text/html")]),
    ("GET", 204, [(b"content-type", b"text/html")]),
    ("GET", 304, [(b"content-type", b"text/html")]),
    ("GET", 200, [(b"content-type", b"application/json")]),
    ("GET", 200, [(b"content-type", b"text/event-stream")]),
    ("GET", 200, [(b"content-type", b"text/html"), (b"content-encoding", b"gzip")]),
    ("GET", 200, [(b"content-type", b"text/html"), (b"content-disposition", b"attachment; filename=a.html")]),
    ("GET", 200, []),
])
async def test_responses_that_are_not_html_pages_pass_untouched(
        method: str, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    chunks = [b"<html><body>", b"x</body></html>"]
    inner = raw_app(status=status, headers=headers, chunks=chunks)
    direct = await call(inner, method)
    wrapped = await call(wrap(inner), method)
    assert wrapped == direct


async def test_repeated_headers_are_all_kept() -> None:
    headers = [(b"content-type", b"text/html"), (b"set-cookie", b"a=1; Path=/"),
               (b"set-cookie", b"b=2; Path=/"), (b"x-custom", b"one"), (b"x-custom", b"two")]
    sent = await call(wrap(raw_app(headers=headers)))
    assert header(sent, b"set-cookie") == [b"a=1; Path=/", b"b=2; Path=/"]
    assert header(sent, b"x-custom") == [b"one", b"two"]


async def test_validators_are_dropped_from_injected_pages() -> None:
    # A 304 would bring back a cached copy with a stale version in its tag.
    headers = [(b"content-type", b"text/html"), (b"etag", b'"abc"'), (b"last-modified", b"Mon, 01 Jan 2024")]
    sent = await call(wrap(raw_app(headers=headers)))
    assert header(sent, b"etag") == [] and header(sent, b"last-modified") == []


async def test_streaming_stays_streaming() -> None:
    """Each chunk goes out before the app has produced the next one; no Content-Length is invented."""
    gate = asyncio.Event()
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        html_type = [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": 200, "headers": html_type})
        await send({"type": "http.response.body", "body": b"<html><body>" + b"a" * 1000, "more_body": True})
        await gate.wait()
        await send({"type": "http.response.body", "body": b"</body></html>", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "root_path": "", "headers": [],
             "query_string": b""}
    task = asyncio.create_task(wrap(app)(scope, receive, send))
    await asyncio.sleep(0.05)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"].startswith(b"<html><body>aaa") and sent[1]["more_body"] is True
    assert header(sent, b"content-length") == []
    gate.set()
    await task
    assert sent[-1]["more_body"] is False


async def test_file_responses_sent_by_path_are_asked_for_as_chunks() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await raw_app()(scope, receive, send)

    extensions = {"http.response.pathsend": {}, "other": {}}
    await call(wrap(app), extra_scope={"extensions": extensions})
    assert seen[0]["extensions"] == {"other": {}}


# --- The tag itself -------------------------------------------------------------------------------------

async def test_tag_honours_root_path_and_endpoint_override() -> None:
    sent = await call(wrap(raw_app()), root_path="/app")
    assert b'src="/app/---distreload---/client.js?v=' in body_of(sent)
    sent = await call(wrap(raw_app(), endpoint_url="https://dev.example.test/reload/"))
    assert b'src="https://dev.example.test/reload/client.js?v=' in body_of(sent)


async def test_tag_carries_the_csp_nonce_from_request_state() -> None:
    async def page(request: Request) -> HTMLResponse:
        request.state.csp_nonce = "n0nce"
        return HTMLResponse("<html><body>x</body></html>")

    app = wrap(Starlette(routes=[Route("/", page)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/")
    assert 'nonce="n0nce"' in response.text


async def test_tag_nonce_from_a_callable_and_options_are_escaped() -> None:
    app = wrap(raw_app(), csp_nonce=lambda scope: "abc", client_options={"message_prefix": '"><x>'})
    body = body_of(await call(app))
    assert b'nonce="abc"' in body
    assert b"<x>" not in body and b"&quot;&gt;&lt;x&gt;" in body


def test_default_nonce_reads_state_then_scope() -> None:
    assert default_csp_nonce({"state": {"csp_nonce": "s"}}) == "s"
    assert default_csp_nonce({"csp_nonce": "t"}) == "t"
    assert default_csp_nonce({"state": {"csp_nonce": 5}}) is None
    assert default_csp_nonce({}) is None


# --- Routes, lifespan and the drop-in API ---------------------------------------------------------------

async def test_disabled_serves_no_script_and_no_endpoint() -> None:
    app = wrap(raw_app(), enabled=False)
    assert body_of(await call(app)) == b"<html><body>hi</body></html>"

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("app 404", 404)(scope, receive, send)

    sent = await call(wrap(not_found, enabled=False), path="/---distreload---/client.js")
    assert sent[0]["status"] == 404 and body_of(sent) == b"app 404"


def test_enabled_comes_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "yes")
    assert DistReload(raw_app(), broker=memory_broker()).enabled is True
    monkeypatch.setenv("DISTRELOAD_ENABLED", "0")
    assert DistReload(raw_app(), broker=memory_broker()).enabled is False
    monkeypatch.setenv("DISTRELOAD_ENABLED", "maybe")
    with pytest.raises(ConfigError, match="DISTRELOAD_ENABLED"):
        DistReload(raw_app(), broker=memory_broker())


async def test_endpoint_is_served_under_root_path() -> None:
    sent = await call(wrap(raw_app()), "HEAD", "/---distreload---", root_path="/app")
    assert sent[0]["status"] == 200
    assert header(sent, b"x-distreload-build") == [b"build1"]


async def test_lifespan_state_and_startup_are_preserved() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    api = FastAPI(lifespan=lifespan)

    @api.get("/state")
    async def state(request: Request) -> dict[str, str]:
        return {"db": request.state.db}

    app = patch_for_auto_reloading(api, enabled=True, broker=memory_broker(), build_id="b")
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client:
        assert (await client.get("/state")).json() == {"db": "connected"}
        assert (await client.head("/---distreload---")).status_code == 200
    assert events == ["startup", "shutdown"]


async def test_patch_puts_the_injector_inside_the_apps_compression() -> None:
    api = FastAPI(middleware=[Middleware(GZipMiddleware, minimum_size=10)])

    @api.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return "<html><body>" + "word " * 100 + "</body></html>"

    app = patch_for_auto_reloading(api, enabled=True, broker=memory_broker(), build_id="b")
    assert app is not api
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert len(TAG_PATTERN.findall(response.content)) == 1  # httpx has already decompressed it
    assert gzip.compress(b"x")  # the page really was compressed by the app's own middleware


@pytest.mark.parametrize("style", ["middleware-list", "add_middleware", "wrapper"])
async def test_universal_middleware_works_in_every_slot(style: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "1")

    async def page(request: Request) -> Response:
        return HTMLResponse("<html><body>x</body></html>")

    routes = [Route("/", page)]
    app: ASGIApp
    if style == "middleware-list":
        app = Starlette(routes=routes, middleware=[auto_refresh_middleware])  # type: ignore[list-item]
    elif style == "add_middleware":
        starlette_app = Starlette(routes=routes)
        starlette_app.add_middleware(auto_refresh_middleware)  # type: ignore[arg-type]
        app = starlette_app
    else:
        app = html_injection_middleware(reloader_route_middleware(Starlette(routes=routes)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        page_response = await client.get("/")
        script = await client.get("/---distreload---/client.js")
    assert len(TAG_PATTERN.findall(page_response.content)) == 1
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")


def test_drop_in_names_match_fastapi_reloader() -> None:
    for name in ("auto_refresh_middleware", "html_injection_middleware", "reloader_route_middleware",
                 "patch_for_auto_reloading", "send_reload_signal", "UniversalMiddleware"):
        assert name in distreload.__all__ and getattr(distreload, name) is not None
    assert isinstance(auto_refresh_middleware, UniversalMiddleware)
    with pytest.raises(AttributeError):
        distreload.no_such_name  # noqa: B018


async def test_send_reload_signal_reaches_streams_through_the_default_broker() -> None:
    broker = memory_broker()
    seen: list[str] = []
    broker.add_listener(lambda reload: seen.append(str(reload.version)))
    app = wrap(raw_app(), broker=broker)
    await app.ensure_started()
    result = broker.publish_threadsafe()
    assert seen == [str(result.version)] and result.receivers == 1
    result = await asyncio.to_thread(broker.publish_threadsafe, "css", ["/static/site.css"])
    assert seen[-1] == str(result.version)


async def test_on_reload_runs_sync_and_async_callbacks() -> None:
    calls: list[str] = []

    async def async_callback(reload: distreload.Reload) -> None:
        calls.append(f"async {reload.kind}")

    broker = memory_broker()
    wrap(raw_app(), broker=broker, on_reload=lambda reload: calls.append(f"sync {reload.kind}"))
    wrap(raw_app(), broker=broker, on_reload=async_callback)
    await broker.publish("css", ["/a.css"])
    await asyncio.sleep(0.01)
    assert calls == ["sync css", "async css"]


def test_build_id_is_stable_and_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compute_build_id() == compute_build_id()
    monkeypatch.setenv("DISTRELOAD_BUILD_ID", "release-42")
    assert compute_build_id() == "release-42"


async def test_json_through_fastapi_is_byte_identical() -> None:
    api = FastAPI()

    @api.get("/data")
    async def data() -> JSONResponse:
        return JSONResponse({"a": [1, 2, 3]}, headers={"set-cookie": "x=1"})

    bare = await call(api, path="/data")
    wrapped = await call(patch_for_auto_reloading(api, enabled=True, broker=memory_broker()), path="/data")
    assert wrapped == bare


async def test_streaming_response_from_fastapi_gets_one_tag() -> None:
    api = FastAPI()

    @api.get("/")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[str]:
            for part in ("<html><body>", "<p>one</p></b", "ody></html>"):
                yield part
        return StreamingResponse(chunks(), media_type="text/html")

    app = patch_for_auto_reloading(api, enabled=True, broker=memory_broker(), build_id="b")
    sent = await call(app)
    body = body_of(sent)
    assert TAG_PATTERN.sub(b"", body) == b"<html><body><p>one</p></body></html>"
    assert body.index(b"<script") < body.index(b"</body>")


# --- Any page, any chunking -----------------------------------------------------------------------------

html_text = st.lists(st.sampled_from([b"<p>", b"</p>", b"</body>", b"</BODY>", b"</bo", b"dy>", b"<body>",
                                      b"x", b"\xc3\xa9", b" ", b"\n", b"<", b"/", b">", b"</html>"]),
                     max_size=40).map(b"".join)


def expected_with_tag(page: bytes, tag: bytes) -> bytes:
    index = page.lower().rfind(b"</body")
    return page + tag if index == -1 else page[:index] + tag + page[index:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(page=html_text, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
       declare_length=st.booleans(), cookies=st.integers(min_value=0, max_value=3))
def test_any_page_in_any_chunks_keeps_every_byte_plus_one_tag(
        page: bytes, cuts: list[int], declare_length: bool, cookies: int) -> None:
    points = sorted({min(c, len(page)) for c in cuts})
    chunks = [page[a:b] for a, b in zip([0, *points], [*points, len(page)], strict=True)]
    headers = [(b"content-type", b"text/html; charset=utf-8")]
    headers += [(b"set-cookie", f"c{i}=1".encode()) for i in range(cookies)]
    if declare_length:
        headers.append((b"content-length", str(len(page)).encode()))
    app = wrap(raw_app(headers=headers, chunks=chunks))
    sent = asyncio.run(call(app))
    tag = tag_of(app)
    assert body_of(sent) == expected_with_tag(page, tag)
    assert header(sent, b"set-cookie") == [f"c{i}=1".encode() for i in range(cookies)]
    if declare_length:
        assert header(sent, b"content-length") == [str(len(page) + len(tag)).encode()]
    else:
        assert header(sent, b"content-length") == []
    assert sent[-1]["more_body"] is False

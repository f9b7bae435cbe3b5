"""The fastapi-reloader drop-in: its names, on by default as there, in every slot Starlette offers."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp

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
from distreload.config import Target

from .asgi import body_of, call

pytestmark = pytest.mark.anyio

TAG_PATTERN = re.compile(
    rb'<script src="[^"]*/client\.js\?v=[0-9a-f]+" data-distreload="[^"]*"[^>]*></script>'
)


@pytest.fixture(autouse=True)
def _no_setting_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTRELOAD_ENABLED", raising=False)


def memory_broker() -> MemoryBroker:
    return MemoryBroker(Target("memory://", "test"))


def page_app() -> FastAPI:
    api = FastAPI()

    @api.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return "<html><body>" + "word " * 100 + "</body></html>"

    return api


async def get(app: ASGIApp, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get(path, headers=headers)


def test_drop_in_names_match_fastapi_reloader() -> None:
    for name in (
        "auto_refresh_middleware",
        "html_injection_middleware",
        "reloader_route_middleware",
        "patch_for_auto_reloading",
        "send_reload_signal",
        "UniversalMiddleware",
    ):
        assert name in distreload.__all__ and getattr(distreload, name) is not None
    assert isinstance(auto_refresh_middleware, UniversalMiddleware)
    with pytest.raises(AttributeError):
        distreload.no_such_name  # noqa: B018


async def test_changing_only_the_import_turns_reload_on() -> None:
    """Using the drop-in is the opt-in, as in fastapi-reloader; DistReload(app) stays off unless enabled."""
    app = patch_for_auto_reloading(page_app(), broker=memory_broker())
    assert len(TAG_PATTERN.findall((await get(app, "/")).content)) == 1
    assert (await get(app, "/---distreload---")).status_code == 200
    assert TAG_PATTERN.search((await get(DistReload(page_app()), "/")).content) is None


async def test_distreload_enabled_0_still_turns_the_drop_in_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "0")
    app = patch_for_auto_reloading(page_app(), broker=memory_broker())
    assert TAG_PATTERN.search((await get(app, "/")).content) is None
    assert (await get(app, "/---distreload---")).status_code == 404
    assert patch_for_auto_reloading(page_app(), enabled=True, broker=memory_broker()).enabled


@pytest.mark.parametrize("word", ["false", "0", "no", "off", " False "])
async def test_the_drop_in_names_take_the_environments_off_words_as_off(word: str) -> None:
    """``enabled=settings.RELOAD`` with a setting read as text: "false" must mean off."""
    patched = patch_for_auto_reloading(page_app(), enabled=word, broker=memory_broker())
    assert isinstance(patched, DistReload) and not patched.enabled
    assert TAG_PATTERN.search((await get(patched, "/")).content) is None
    for middleware in (html_injection_middleware, reloader_route_middleware, auto_refresh_middleware):
        wrapped = middleware(page_app(), enabled=word, broker=memory_broker())
        assert isinstance(wrapped, DistReload) and not wrapped.enabled
    assert patch_for_auto_reloading(page_app(), enabled="on", broker=memory_broker()).enabled


@pytest.mark.parametrize("value", ["maybe", "enable", 1, 0.0])
def test_the_drop_in_names_refuse_an_enabled_they_cannot_read(value: object) -> None:
    for middleware in (html_injection_middleware, reloader_route_middleware, auto_refresh_middleware):
        with pytest.raises(ValueError, match="^enabled: .* is not "):
            middleware(page_app(), enabled=value, broker=memory_broker())


def test_a_bad_distreload_enabled_stops_the_drop_in_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "maybe")
    with pytest.raises(SystemExit):
        patch_for_auto_reloading(page_app(), broker=memory_broker())
    assert capsys.readouterr().err.startswith("distreload: DISTRELOAD_ENABLED: 'maybe' is not one of ")


async def test_lifespan_state_passes_through_the_patch() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    api = FastAPI(lifespan=lifespan, middleware=[Middleware(GZipMiddleware)])

    @api.get("/state")
    async def state(request: Request) -> dict[str, str]:
        return {"db": request.state.db}

    app = patch_for_auto_reloading(api, broker=memory_broker(), build_id="b")
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        assert (await client.get("/state")).json() == {"db": "connected"}
        assert (await client.head("/---distreload---")).status_code == 200
    assert events == ["startup", "shutdown"]


async def test_the_patch_puts_the_injector_inside_the_apps_compression() -> None:
    api = FastAPI(middleware=[Middleware(GZipMiddleware, minimum_size=10)])

    @api.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return "<html><body>" + "word " * 100 + "</body></html>"

    app = patch_for_auto_reloading(api, broker=memory_broker(), build_id="b")
    assert app is not api
    sent = await call(app, headers=[(b"accept-encoding", b"gzip")])
    assert dict(sent[0]["headers"])[b"content-encoding"] == b"gzip"
    page = gzip.decompress(body_of(sent))  # compressed by the app's own middleware, tag and all
    assert len(TAG_PATTERN.findall(page)) == 1


@pytest.mark.parametrize("style", ["middleware-list", "add_middleware", "wrapper"])
async def test_universal_middleware_works_in_every_slot(style: str) -> None:
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
    page_response = await get(app, "/")
    script = await get(app, "/---distreload---/client.js")
    assert len(TAG_PATTERN.findall(page_response.content)) == 1
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("with_middleware", [False, True])
async def test_json_is_byte_identical_and_a_stream_gets_one_tag(with_middleware: bool) -> None:
    api = FastAPI(middleware=[Middleware(GZipMiddleware, minimum_size=10**6)] if with_middleware else [])

    @api.get("/data")
    async def data() -> JSONResponse:
        return JSONResponse({"a": [1, 2, 3]}, headers={"set-cookie": "x=1"})

    @api.get("/")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[str]:
            for part in ("<html><body>", "<p>one</p></b", "ody></html>"):
                yield part

        return StreamingResponse(chunks(), media_type="text/html")

    app = patch_for_auto_reloading(api, broker=memory_broker(), build_id="b")
    assert await call(app, path="/data") == await call(api, path="/data")
    body = body_of(await call(app))
    assert TAG_PATTERN.sub(b"", body) == b"<html><body><p>one</p></body></html>"
    assert body.index(b"<script") < body.index(b"</body>")

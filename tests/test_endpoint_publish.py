"""``POST <prefix>/publish``: only with a token, bearer compared in constant time, validated bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from distreload.broker import MemoryBroker
from distreload.config import resolve_target
from distreload.middleware import DistReload
from distreload.protocol import Reload

TOKEN = "s3cret-token"
URL = "http://app/---distreload---/publish"


async def page(request: object) -> HTMLResponse:
    return HTMLResponse("<html><body>page</body></html>")


def make_app(token: str | None) -> tuple[DistReload, list[Reload]]:
    broker = MemoryBroker(resolve_target("memory://", "publish-tests"))
    received: list[Reload] = []
    broker.add_listener(received.append)
    app = DistReload(Starlette(routes=[Route("/", page)]), enabled=True, token=token, broker=broker)
    return app, received


def post(app: DistReload, body: bytes | None = b"{}", headers: dict[str, str] | None = None,
         method: str = "POST") -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            return await client.request(method, URL, content=body, headers=headers or {})

    # In a thread of its own: a session's Playwright keeps an event loop running in the main thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(go())).result()


@pytest.fixture(autouse=True)
def _no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("DISTRELOAD_TOKEN", raising=False)
    yield


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_publish_with_the_token_reloads_and_answers_version_and_receivers() -> None:
    app, received = make_app(TOKEN)
    response = post(app, b'{"kind": "css", "paths": ["/static/site.css"]}', bearer(TOKEN))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"version": str(received[0].version), "receivers": 1}
    assert (received[0].kind, received[0].paths) == ("css", ("/static/site.css",))
    empty = post(app, b"", bearer(TOKEN))  # no body: a plain reload
    assert empty.status_code == 200
    assert received[1].kind == "reload" and received[1].version.number == received[0].version.number + 1


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_TOKEN", "from-env")
    app, received = make_app(None)
    assert post(app, b"{}", bearer("from-env")).status_code == 200
    assert post(app, b"{}", bearer(TOKEN)).status_code == 401
    assert len(received) == 1


def test_no_token_configured_means_no_endpoint() -> None:
    app, received = make_app(None)
    response = post(app, b"{}", bearer(TOKEN))
    assert response.status_code == 404
    assert received == []


@pytest.mark.parametrize("headers", [
    {}, bearer("wrong"), bearer(TOKEN + "x"), bearer(""), {"authorization": f"Basic {TOKEN}"},
    {"authorization": TOKEN},
])
def test_missing_or_wrong_token_is_401(headers: dict[str, str]) -> None:
    app, received = make_app(TOKEN)
    response = post(app, b"{}", headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": "missing or wrong bearer token"}
    assert received == []


def test_scheme_is_case_insensitive() -> None:
    app, received = make_app(TOKEN)
    assert post(app, b"{}", {"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert len(received) == 1


@pytest.mark.parametrize(("body", "error"), [
    (b"[1]", "expected a JSON object"),
    (b"not json", "Expecting value"),
    (b'{"kind": "explode"}', "kind must be one of reload, css"),
    (b'{"kind": 3}', "kind must be a string and paths a list"),
    (b'{"paths": "/a.css"}', "kind must be a string and paths a list"),
    (b'{"kind": "css", "paths": ["//evil.example/x.css"]}', "is not a same-origin URL path"),
    (b'{"kind": "css", "paths": ["javascript:alert(1)"]}', "is not a same-origin URL path"),
])
def test_bad_bodies_are_400_and_publish_nothing(body: bytes, error: str) -> None:
    app, received = make_app(TOKEN)
    response = post(app, body, bearer(TOKEN))
    assert response.status_code == 400
    assert error in response.json()["error"]
    assert received == []


def test_oversized_body_is_413() -> None:
    app, received = make_app(TOKEN)
    body = json.dumps({"kind": "css", "paths": ["/a.css"], "pad": "x" * 70_000}).encode()
    assert post(app, body, bearer(TOKEN)).status_code == 413
    assert received == []


def test_only_post() -> None:
    app, received = make_app(TOKEN)
    response = post(app, None, bearer(TOKEN), method="GET")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert received == []

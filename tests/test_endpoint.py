"""The reload endpoint, driven through ASGI with recording ``send`` functions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from distreload import DistReload
from distreload.broker import MemoryBroker
from distreload.config import Target
from distreload.endpoint import CLIENT_SCRIPT
from distreload.hub import HEARTBEAT, sse_event
from distreload.protocol import ClusterVersion, Reload, ReloadRequest

from .asgi import complete, request, settle

pytestmark = pytest.mark.anyio


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"app says 404"})


@pytest.fixture
async def app() -> AsyncIterator[DistReload]:
    distreload = DistReload(
        not_found,
        enabled=True,
        broker=MemoryBroker(Target("memory://", "test")),
        build_id="build1",
        heartbeat_interval=0.05,
        token="s3cret",
    )
    await distreload.ensure_started()
    yield distreload
    await distreload.shutdown()


# --- Readiness, script, unknown paths -------------------------------------------------------------------


async def test_readiness_probe_answers_with_version_and_build(app: DistReload) -> None:
    head = await complete(request(app, "HEAD", "/---distreload---"))
    assert head.status == 200 and head.body == b""
    assert head.headers[b"x-distreload-build"] == b"build1"
    assert ClusterVersion.parse(head.headers[b"x-distreload-version"].decode()) == app.broker.version
    info = await complete(request(app, "GET", "/---distreload---"))
    assert b'"streams": 0' in info.body and b'"build": "build1"' in info.body


async def test_client_script_is_the_package_file_and_cacheable(app: DistReload) -> None:
    script = await complete(request(app, "GET", "/---distreload---/client.js"))
    assert script.status == 200 and script.body == CLIENT_SCRIPT
    assert script.headers[b"content-type"] == b"text/javascript; charset=utf-8"
    assert b"max-age" in script.headers[b"cache-control"]
    again = await complete(
        request(
            app,
            "GET",
            "/---distreload---/client.js",
            headers={"If-None-Match": script.headers[b"etag"].decode()},
        )
    )
    assert again.status == 304 and again.body == b""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/---distreload---/nope", 404),
        ("GET", "/---distreload---/events/extra", 404),
        ("POST", "/---distreload---/events", 405),
        ("DELETE", "/---distreload---", 405),
        ("GET", "/---distreload---/publish", 405),
    ],
)
async def test_unknown_paths_and_methods_under_the_prefix(
    app: DistReload, method: str, path: str, status: int
) -> None:
    answer = await complete(request(app, method, path))
    assert answer.status == status and answer.body.startswith(b"distreload: ")


async def test_paths_outside_the_prefix_belong_to_the_app(app: DistReload) -> None:
    for path in ("/---distreload", "/---distreload---x", "/other"):
        answer = await complete(request(app, "GET", path))
        assert answer.body == b"app says 404"


# --- The event stream -----------------------------------------------------------------------------------


async def test_stream_starts_with_hello_and_is_not_buffered_by_proxies(app: DistReload) -> None:
    stream = request(app, "GET", "/---distreload---/events", headers={"Accept": "text/event-stream"})
    await settle()
    assert stream.status == 200
    assert stream.headers[b"content-type"].startswith(b"text/event-stream")
    assert stream.headers[b"x-accel-buffering"] == b"no"
    assert b"no-cache" in stream.headers[b"cache-control"]
    version = str(app.broker.version)
    assert stream.body.startswith(b"retry: 1000\n\nevent: hello\nid: " + version.encode() + b"\n")
    assert app.hub is not None and len(app.hub) == 1
    stream.hang_up.set()
    await complete(stream)
    assert len(app.hub) == 0


async def test_every_stream_gets_each_reload_once_and_in_order(app: DistReload) -> None:
    streams = [request(app, "GET", "/---distreload---/events") for _ in range(50)]
    await settle()
    first = await app.broker.publish(ReloadRequest())
    second = await app.broker.publish(ReloadRequest("css", ("/static/site.css",)))
    await settle()
    for stream in streams:
        body = stream.body
        assert body.count(b"event: reload") == 2
        assert body.index(f"id: {first.version}".encode()) < body.index(f"id: {second.version}".encode())
        assert b'"kind":"css","paths":["/static/site.css"],"spread":0.0,"match":""' in body
        stream.hang_up.set()
    await asyncio.gather(*(complete(s) for s in streams))


@pytest.mark.parametrize("how", ["header", "query"])
async def test_reconnect_behind_the_cluster_gets_the_reload_at_once(app: DistReload, how: str) -> None:
    old = str(app.broker.version)
    await app.broker.publish(ReloadRequest())
    options: dict[str, Any] = (
        {"headers": {"Last-Event-ID": old}} if how == "header" else {"query": f"last_event_id={old}"}
    )
    stream = request(app, "GET", "/---distreload---/events", **options)
    await settle()
    assert stream.body.count(b"event: reload") == 1
    assert f"event: reload\nid: {app.broker.version}".encode() in stream.body
    stream.hang_up.set()
    await complete(stream)


async def test_a_reconnect_that_missed_only_the_last_reload_gets_it_as_it_was(app: DistReload) -> None:
    seen = str(app.broker.version)
    published = await app.broker.publish(ReloadRequest("morph", (), 5.0, "/kiosk/*"))
    stream = request(app, "GET", "/---distreload---/events", headers={"Last-Event-ID": seen})
    await settle()
    expected = Reload(published.version, "morph", (), 5.0, "/kiosk/*").to_json()
    assert f"event: reload\nid: {published.version}\ndata: {expected}\n\n".encode() in stream.body
    stream.hang_up.set()
    await complete(stream)


@pytest.mark.parametrize(
    "last_event_id",
    [
        "",
        "garbage",
        "-1",
        "0123456789abcdef--5",
        "0123456789abcdef-99999999999999999999",
        "\u00e9",
        "x" * 5000,
    ],
)
async def test_malformed_last_event_id_is_treated_as_absent(app: DistReload, last_event_id: str) -> None:
    await app.broker.publish(ReloadRequest())
    stream = request(
        app, "GET", "/---distreload---/events", query="last_event_id=" + last_event_id.encode().hex()
    )
    stream2 = request(
        app,
        "GET",
        "/---distreload---/events",
        headers={"Last-Event-ID": last_event_id.encode("utf-8").decode("latin-1")},
    )
    await settle()
    for each in (stream, stream2):
        assert each.status == 200 and b"event: hello" in each.body and b"event: reload" not in each.body
        each.hang_up.set()
        await complete(each)


async def test_a_reconnect_that_is_current_or_from_another_epoch_with_nothing_new_does_not_reload(
    app: DistReload,
) -> None:
    await app.broker.publish(ReloadRequest())
    current = str(app.broker.version)
    other_epoch = "fedcba9876543210-7"
    streams = [
        request(app, "GET", "/---distreload---/events", headers={"Last-Event-ID": value})
        for value in (current, other_epoch)
    ]
    await settle()
    assert b"event: reload" not in streams[0].body
    assert b"event: reload" in streams[1].body  # the cluster counted a reload this browser never saw
    for stream in streams:
        stream.hang_up.set()
        await complete(stream)


async def test_heartbeats_keep_idle_streams_alive(app: DistReload) -> None:
    stream = request(app, "GET", "/---distreload---/events")
    await asyncio.sleep(0.2)
    assert stream.body.count(HEARTBEAT) >= 2
    stream.hang_up.set()
    await complete(stream)


async def test_closing_ends_every_stream_and_refuses_new_ones(app: DistReload) -> None:
    streams = [request(app, "GET", "/---distreload---/events") for _ in range(20)]
    await settle()
    assert app.hub is not None
    app.hub.close_all()
    await asyncio.gather(*(complete(s) for s in streams))
    for stream in streams:
        assert stream.finished and stream.body.endswith(sse_event("shutdown", '{"reason": "shutdown"}'))
    late = await complete(request(app, "GET", "/---distreload---/events"))
    assert late.status == 503 and late.headers[b"retry-after"] == b"1"


# --- Publishing over HTTP (needs the token) -------------------------------------------------------------


async def test_publish_needs_the_right_bearer_token(app: DistReload) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        denied = await complete(request(app, "POST", "/---distreload---/publish", headers=headers))
        assert denied.status == 401
    before = app.broker.version.number
    allowed = await complete(
        request(
            app,
            "POST",
            "/---distreload---/publish",
            headers={"Authorization": "Bearer s3cret"},
            body=b'{"kind": "css", "paths": ["/a.css"]}',
        )
    )
    assert allowed.status == 200 and app.broker.version.number == before + 1
    for body in (
        b'{"kind": "boom"}',
        b'{"spread": -1}',
        b'{"match": "no-slash"}',
        b'{"paths": "/a.css"}',
        b'{"kynd": "css"}',
        b"[1]",
        b"not json",
    ):
        bad = await complete(
            request(
                app,
                "POST",
                "/---distreload---/publish",
                headers={"Authorization": "Bearer s3cret"},
                body=body,
            )
        )
        assert bad.status == 400 and app.broker.version.number == before + 1
        assert b"\n" not in bad.body.rstrip(b"\n")
    fleet = await complete(
        request(
            app,
            "POST",
            "/---distreload---/publish",
            headers={"Authorization": "Bearer s3cret"},
            body=b'{"kind": "images", "paths": ["/logo.png"], "spread": 3, "match": "/tv/*"}',
        )
    )
    assert fleet.status == 200
    assert app.broker.last == Reload(app.broker.version, "images", ("/logo.png",), 3.0, "/tv/*")


@pytest.mark.parametrize(
    "body",
    [
        b'{"spread": ' + b"9" * 400 + b"}",
        b'{"paths": ' + b"[" * 20000 + b"]" * 20000 + b"}",
        b'{"kind": ' + b"[" * 20000 + b"]" * 20000 + b"}",
        b'{"spread": 1e999}',
        b'{"kind": "css", "paths": {"/a.css": 1}}',
        b'{"kind": "\xff"}',
        b"\xff\xfe",
    ],
    ids=["400-digit spread", "nested paths", "nested kind", "1e999", "paths object", "bytes", "utf16"],
)
async def test_a_crafted_publish_body_is_refused_with_400_not_500(app: DistReload, body: bytes) -> None:
    before = app.broker.version.number
    bad = await complete(
        request(
            app, "POST", "/---distreload---/publish", headers={"Authorization": "Bearer s3cret"}, body=body
        )
    )
    assert bad.status == 400 and app.broker.version.number == before


async def test_publish_does_not_exist_without_a_token() -> None:
    app = DistReload(not_found, enabled=True, broker=MemoryBroker(Target("memory://", "test")), build_id="b")
    answer = await complete(
        request(app, "POST", "/---distreload---/publish", headers={"Authorization": "Bearer anything"})
    )
    assert answer.status == 404


async def test_publish_token_from_the_environment_any_scheme_case_and_size_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISTRELOAD_TOKEN", "from-env")
    app = DistReload(not_found, enabled=True, broker=MemoryBroker(Target("memory://", "test")), build_id="b")
    await app.ensure_started()
    try:
        ok = await complete(
            request(
                app,
                "POST",
                "/---distreload---/publish",
                headers={"Authorization": "bEaReR from-env"},
                body=b"{}",
            )
        )
        assert ok.status == 200 and b'"receivers": 1' in ok.body
        huge = await complete(
            request(
                app,
                "POST",
                "/---distreload---/publish",
                headers={"Authorization": "Bearer from-env"},
                body=b" " * (65 * 1024),
            )
        )
        assert huge.status == 413
        wrong_method = await complete(
            request(app, "PUT", "/---distreload---/publish", headers={"Authorization": "Bearer from-env"})
        )
        assert wrong_method.status == 405 and wrong_method.headers[b"allow"] == b"POST"
    finally:
        await app.shutdown()

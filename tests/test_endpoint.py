"""The reload endpoint and its stream hub, driven through ASGI with recording ``send`` functions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from distreload import DistReload
from distreload.broker import MemoryBroker
from distreload.config import Target
from distreload.endpoint import CLIENT_SCRIPT, HEARTBEAT, StreamHub, sse_event
from distreload.protocol import ClusterVersion

pytestmark = pytest.mark.anyio


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"app says 404"})


@pytest.fixture
async def app() -> AsyncIterator[DistReload]:
    distreload = DistReload(not_found, enabled=True, broker=MemoryBroker(Target("memory://", "test")),
                            build_id="build1", heartbeat_interval=0.05, token="s3cret")
    await distreload.ensure_started()
    yield distreload
    await distreload.shutdown()


@dataclass
class Client:
    """One request in flight: its messages, and a way to hang up."""

    sent: list[Message] = field(default_factory=list)
    hang_up: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    request_body: bytes = b""

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    @property
    def finished(self) -> bool:
        return bool(self.sent) and self.sent[-1]["type"] == "http.response.body" and \
            not self.sent[-1].get("more_body", False)


def request(app: DistReload, method: str, path: str, *, headers: dict[str, str] | None = None,
            query: str = "", body: bytes = b"", root_path: str = "") -> Client:
    client = Client(request_body=body)
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await client.hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        client.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            client.hang_up.set()  # as a server does once the response is complete

    scope: dict[str, Any] = {
        "type": "http", "method": method, "path": root_path + path, "root_path": root_path,
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    client.task = asyncio.ensure_future(app(scope, receive, send))
    return client


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def complete(client: Client) -> Client:
    assert client.task is not None
    await asyncio.wait_for(client.task, 5)
    return client


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
    again = await complete(request(app, "GET", "/---distreload---/client.js",
                                   headers={"If-None-Match": script.headers[b"etag"].decode()}))
    assert again.status == 304 and again.body == b""


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/---distreload---/nope", 404),
    ("GET", "/---distreload---/events/extra", 404),
    ("POST", "/---distreload---/events", 405),
    ("DELETE", "/---distreload---", 405),
    ("GET", "/---distreload---/publish", 405),
])
async def test_unknown_paths_and_methods_under_the_prefix(app: DistReload, method: str, path: str,
                                                          status: int) -> None:
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
    assert len(app.hub) == 1
    stream.hang_up.set()
    await complete(stream)
    assert len(app.hub) == 0


async def test_every_stream_gets_each_reload_once_and_in_order(app: DistReload) -> None:
    streams = [request(app, "GET", "/---distreload---/events") for _ in range(50)]
    await settle()
    first = await app.broker.publish()
    second = await app.broker.publish("css", ["/static/site.css"])
    for stream in streams:
        body = stream.body
        assert body.count(b"event: reload") == 2
        assert body.index(f"id: {first.version}".encode()) < body.index(f"id: {second.version}".encode())
        assert b'"kind":"css","paths":["/static/site.css"]' in body
        stream.hang_up.set()
    await asyncio.gather(*(complete(s) for s in streams))


@pytest.mark.parametrize("how", ["header", "query"])
async def test_reconnect_behind_the_cluster_gets_the_reload_at_once(app: DistReload, how: str) -> None:
    old = str(app.broker.version)
    await app.broker.publish()
    options: dict[str, Any] = ({"headers": {"Last-Event-ID": old}} if how == "header"
                               else {"query": f"last_event_id={old}"})
    stream = request(app, "GET", "/---distreload---/events", **options)
    await settle()
    assert stream.body.count(b"event: reload") == 1
    assert f"event: reload\nid: {app.broker.version}".encode() in stream.body
    stream.hang_up.set()
    await complete(stream)


@pytest.mark.parametrize("last_event_id", [
    "", "garbage", "-1", "0123456789abcdef--5", "0123456789abcdef-99999999999999999999", "\u00e9", "x" * 5000,
])
async def test_malformed_last_event_id_is_treated_as_absent(app: DistReload, last_event_id: str) -> None:
    await app.broker.publish()
    stream = request(app, "GET", "/---distreload---/events",
                     query="last_event_id=" + last_event_id.encode().hex())
    stream2 = request(app, "GET", "/---distreload---/events",
                      headers={"Last-Event-ID": last_event_id.encode("utf-8").decode("latin-1")})
    await settle()
    for each in (stream, stream2):
        assert each.status == 200 and b"event: hello" in each.body and b"event: reload" not in each.body
        each.hang_up.set()
        await complete(each)


async def test_a_reconnect_that_is_current_or_from_another_epoch_with_nothing_new_does_not_reload(
        app: DistReload) -> None:
    await app.broker.publish()
    current = str(app.broker.version)
    other_epoch = "fedcba9876543210-7"
    streams = [request(app, "GET", "/---distreload---/events", headers={"Last-Event-ID": value})
               for value in (current, other_epoch)]
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
    app.hub.close_all()
    await asyncio.gather(*(complete(s) for s in streams))
    for stream in streams:
        assert stream.finished and stream.body.endswith(sse_event("shutdown", '{"reason": "shutdown"}'))
    late = await complete(request(app, "GET", "/---distreload---/events"))
    assert late.status == 503 and late.headers[b"retry-after"] == b"1"


async def test_a_client_that_stopped_reading_gets_its_events_in_order_later() -> None:
    """A send that has to wait is finished by a task of that stream's own; others are not held up."""
    hub = StreamHub(MemoryBroker(Target("memory://", "test")), heartbeat_interval=60)
    gate = asyncio.Event()
    slow: list[bytes] = []
    fast: list[bytes] = []

    async def slow_send(message: Message) -> None:
        await gate.wait()
        slow.append(message["body"])

    async def fast_send(message: Message) -> None:
        fast.append(message["body"])

    hub.open(slow_send, b"first")
    hub.open(fast_send, b"first")
    hub.broadcast(b"second")
    hub.broadcast(b"third")
    assert fast == [b"first", b"second", b"third"] and slow == []
    gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert slow == [b"first", b"second", b"third"]
    hub.close_all()


async def test_a_stream_whose_send_fails_is_dropped() -> None:
    hub = StreamHub(MemoryBroker(Target("memory://", "test")), heartbeat_interval=60)

    async def broken_send(message: Message) -> None:
        raise OSError("connection reset")

    hub.open(broken_send, b"first")
    hub.broadcast(b"x")
    assert len(hub) == 0
    hub.close_all()


# --- Publishing over HTTP (needs the token) -------------------------------------------------------------

async def test_publish_needs_the_right_bearer_token(app: DistReload) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        denied = await complete(request(app, "POST", "/---distreload---/publish", headers=headers))
        assert denied.status == 401
    before = app.broker.version.number
    allowed = await complete(request(app, "POST", "/---distreload---/publish",
                                     headers={"Authorization": "Bearer s3cret"},
                                     body=b'{"kind": "css", "paths": ["/a.css"]}'))
    assert allowed.status == 200 and app.broker.version.number == before + 1
    bad = await complete(request(app, "POST", "/---distreload---/publish",
                                 headers={"Authorization": "Bearer s3cret"}, body=b'{"kind": "boom"}'))
    assert bad.status == 400 and app.broker.version.number == before + 1


async def test_publish_does_not_exist_without_a_token() -> None:
    app = DistReload(not_found, enabled=True, broker=MemoryBroker(Target("memory://", "test")), build_id="b")
    answer = await complete(request(app, "POST", "/---distreload---/publish",
                                    headers={"Authorization": "Bearer anything"}))
    assert answer.status == 404

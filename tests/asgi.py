"""Driving an ASGI app by hand in tests: one request in flight, its messages, and a way to hang up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
        return (
            bool(self.sent)
            and self.sent[-1]["type"] == "http.response.body"
            and not self.sent[-1].get("more_body", False)
        )


def request(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    body: bytes = b"",
    root_path: str = "",
) -> Client:
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
        "type": "http",
        "method": method,
        "path": root_path + path,
        "root_path": root_path,
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


def raw_app(
    status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, chunks: list[bytes] | None = None
) -> ASGIApp:
    """An ASGI app that answers with exactly these headers and body chunks."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers if headers is not None else [(b"content-type", b"text/html")],
            }
        )
        parts = chunks if chunks is not None else [b"<html><body>hi</body></html>"]
        for index, chunk in enumerate(parts):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < len(parts) - 1})

    return app


async def call(
    app: ASGIApp,
    method: str = "GET",
    path: str = "/",
    *,
    root_path: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    extra_scope: dict[str, Any] | None = None,
) -> list[Message]:
    """One complete request; every message the app sent."""
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

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        **(extra_scope or {}),
    }
    await app(scope, receive, send)
    return sent


def body_of(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def headers_of(messages: list[Message]) -> list[tuple[bytes, bytes]]:
    return list(messages[0]["headers"])


def header(messages: list[Message], name: bytes) -> list[bytes]:
    return [v for k, v in headers_of(messages) if k.lower() == name]

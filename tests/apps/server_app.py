"""A plain ASGI app (no framework) behind DistReload, served by every ASGI server in
tests/system/test_servers.py; its code-change tests copy this file into a temporary directory and edit
CODE while pages are open.

A probe in front of it, as a tracing or request-id middleware would be, checks that every message sent on a
request is sent in that request's own context: ``/probe`` says how many writes this worker saw, and how
many ran in another request's context.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distreload import DistReload
from tests.apps.twin import distreload_options, json_bytes, page, with_plain_twin

CODE = "first"

REQUEST: ContextVar[object | None] = ContextVar("request", default=None)
WRITES = {"writes": 0, "foreign": 0}


def probe(app: ASGIApp) -> ASGIApp:
    async def probed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request = object()
        REQUEST.set(request)

        def checked_send(message: Message) -> Awaitable[None]:
            # Not async: the server's own awaitable goes back to the app as it is (granian's is no coroutine).
            WRITES["writes"] += 1
            if REQUEST.get() is not request:
                WRITES["foreign"] += 1
            return send(message)

        await app(scope, receive, checked_send)

    return probed


async def respond(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def plain(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/page":
        await respond(send, 200, b"text/html; charset=utf-8", page("plain ASGI", CODE).encode())
    elif scope["path"] == "/json":
        await respond(send, 200, b"application/json", json_bytes(separators=(",", ":")))
    elif scope["path"] == "/probe":
        await respond(send, 200, b"application/json", json.dumps({"pid": os.getpid(), **WRITES}).encode())
    else:
        await respond(send, 404, b"text/plain", b"not found\n")


app = probe(with_plain_twin(DistReload(plain, **distreload_options()), plain))

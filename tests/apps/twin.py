"""What the server and framework apps share: the page and the JSON every one of them serves, the options
the tests set through the environment, and the unwrapped twin served beside the wrapped app.

Every app answers ``/page`` (HTML) and ``/json``; the same app *without* distreload answers under
``/plain/...`` in the same process, so a test compares the two responses of one server byte for byte.
"""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

PLAIN_PREFIX = "/plain"
# </body> inside a JSON string: the injector must leave anything but an HTML page alone, whatever it holds.
DATA: dict[str, Any] = {"text": "</body> stays in JSON", "numbers": [1, 2, 3]}


def page(framework: str, code: str = "first") -> str:
    return (
        f"<!doctype html><html><head><title>{framework}</title></head>"
        f'<body><h1>{framework}</h1><p id="code">{code}</p></body></html>'
    )


def json_bytes(**dumps_options: Any) -> bytes:
    return json.dumps(DATA, **dumps_options).encode()


def distreload_options() -> dict[str, Any]:
    """Options the tests choose per server: a short heartbeat, so "long after the heartbeats began" is
    about a second; Redis and the namespace come from DISTRELOAD_REDIS_URL / DISTRELOAD_NAMESPACE."""
    return {"heartbeat_interval": float(os.environ.get("TEST_HEARTBEAT_INTERVAL", "15"))}


def with_plain_twin(wrapped: ASGIApp, plain: ASGIApp) -> ASGIApp:
    """``wrapped`` for every request, except ``/plain/...``, which ``plain`` answers as ``/...``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PLAIN_PREFIX + "/"):
            path = scope["path"][len(PLAIN_PREFIX) :]
            scope = {**scope, "path": path, "raw_path": path.encode()}
            await plain(scope, receive, send)
            return
        await wrapped(scope, receive, send)

    return app

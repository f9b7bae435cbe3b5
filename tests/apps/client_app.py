"""The app the browser tests load: a page with a stylesheet, a form field and room to scroll.

Configured from the environment like a user's app would be: DISTRELOAD_REDIS_URL / DISTRELOAD_NAMESPACE
(unset: one process, in memory) and CLIENT_APP_OPTIONS (JSON for ``client_options``).
``POST /failure/500`` makes every page fail with that status, as a broken template would (``/failure/0``
mends it); distreload's own endpoint keeps answering.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from distreload import DistReload, send_reload_signal_async

PAGE = """<!doctype html>
<html><head><title>distreload client page</title>
<link rel="stylesheet" href="{root}/static/site.css">
<link rel="stylesheet" href="{root}/static/other.css">
</head>
<body><h1 id="title">{name}</h1><p id="other">other</p><p id="worker">{pid}</p>
<input id="field" type="text">
<div style="height: 4000px">tall</div>
</body></html>"""

colours = {"site": "rgb(0, 0, 0)", "other": "rgb(0, 0, 0)"}
failure = {"status": 0}

FAILURE_BODY = """Traceback (most recent call last):
  File "tests/apps/client_app.py", line 42, in page
    return render(PAGE, name=name)
  File "templates/page.html", line 3, in top-level template code
    {% for item in items %}
TemplateSyntaxError: unexpected end of template (the failure a test switched on)
"""

inner = FastAPI()


def failing() -> PlainTextResponse | None:
    if not failure["status"]:
        return None
    return PlainTextResponse(FAILURE_BODY, status_code=failure["status"])


@inner.get("/page/{name}", response_class=HTMLResponse)
async def page(name: str, request: Request) -> Response:
    return failing() or HTMLResponse(
        PAGE.format(root=request.scope.get("root_path", ""), name=name, pid=os.getpid())
    )


@inner.post("/failure/{status}")
async def set_failure(status: int) -> dict[str, int]:
    failure["status"] = status
    return failure


@inner.get("/csp/{name}")
async def csp_page(name: str, request: Request) -> Response:
    """A page under a strict Content-Security-Policy: only scripts carrying this response's nonce run."""
    broken = failing()
    if broken is not None:
        return broken
    nonce = secrets.token_urlsafe(16)
    request.state.csp_nonce = nonce
    body = PAGE.format(root=request.scope.get("root_path", ""), name=name, pid=os.getpid())
    return HTMLResponse(body, headers={"content-security-policy": f"script-src 'nonce-{nonce}'"})


@inner.get("/static/{sheet}.css")
async def stylesheet(sheet: str) -> PlainTextResponse:
    selector = "h1" if sheet == "site" else "#other"
    return PlainTextResponse(
        f"{selector} {{ color: {colours.get(sheet, 'rgb(0, 0, 0)')}; }}", media_type="text/css"
    )


@inner.post("/colour/{sheet}/{red}/{green}/{blue}")
async def set_colour(sheet: str, red: int, green: int, blue: int) -> dict[str, str]:
    colours[sheet] = f"rgb({red}, {green}, {blue})"
    return colours


@inner.post("/publish")
async def publish(
    kind: str = "reload",
    path: Annotated[list[str] | None, Query()] = None,
    spread: float = 0.0,
    match: str = "",
) -> dict[str, object]:
    result = await send_reload_signal_async(kind, path or [], spread=spread, match=match)
    return {"version": str(result.version), "receivers": result.receivers}


app = DistReload(inner, client_options=json.loads(os.environ.get("CLIENT_APP_OPTIONS") or "{}"))

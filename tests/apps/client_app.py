"""The app the browser tests load: a page with a stylesheet, a form field and room to scroll.

Configured from the environment like a user's app would be: DISTRELOAD_REDIS_URL / DISTRELOAD_NAMESPACE
(unset: one process, in memory) and CLIENT_APP_OPTIONS (JSON for ``client_options``).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

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

inner = FastAPI()


@inner.get("/page/{name}", response_class=HTMLResponse)
async def page(name: str, request: Request) -> str:
    return PAGE.format(root=request.scope.get("root_path", ""), name=name, pid=os.getpid())


@inner.get("/csp/{name}")
async def csp_page(name: str, request: Request) -> HTMLResponse:
    """A page under a strict Content-Security-Policy: only scripts carrying this response's nonce run."""
    nonce = secrets.token_urlsafe(16)
    request.state.csp_nonce = nonce
    body = PAGE.format(root=request.scope.get("root_path", ""), name=name, pid=os.getpid())
    return HTMLResponse(body, headers={"content-security-policy": f"script-src 'nonce-{nonce}'"})


@inner.get("/static/{sheet}.css")
async def stylesheet(sheet: str) -> PlainTextResponse:
    selector = "h1" if sheet == "site" else "#other"
    return PlainTextResponse(f"{selector} {{ color: {colours.get(sheet, 'rgb(0, 0, 0)')}; }}",
                             media_type="text/css")


@inner.post("/colour/{sheet}/{red}/{green}/{blue}")
async def set_colour(sheet: str, red: int, green: int, blue: int) -> dict[str, str]:
    colours[sheet] = f"rgb({red}, {green}, {blue})"
    return colours


@inner.post("/publish")
async def publish(kind: str = "reload",
                  path: Annotated[list[str] | None, Query()] = None) -> dict[str, object]:
    result = await send_reload_signal_async(kind, path or [])
    return {"version": str(result.version), "receivers": result.receivers}


app = DistReload(inner, client_options=json.loads(os.environ.get("CLIENT_APP_OPTIONS") or "{}"))

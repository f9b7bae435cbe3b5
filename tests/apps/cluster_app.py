"""A small FastAPI app served by real uvicorn/gunicorn processes in the tests.

Configured from the environment (DISTRELOAD_REDIS_URL, DISTRELOAD_NAMESPACE) like a user's app would be.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, StreamingResponse

from distreload import patch_for_auto_reloading, send_reload_signal_async

app = FastAPI()

PAGE = """<!doctype html>
<html><head><title>distreload test page</title><link rel="stylesheet" href="/static/site.css"></head>
<body><h1 id="title">page</h1><p id="worker">{pid}</p></body></html>"""


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    return PAGE.format(pid=os.getpid())


@app.get("/page/{name}", response_class=HTMLResponse)
async def page(name: str) -> str:
    return PAGE.format(pid=os.getpid()).replace(">page<", f">{name}<")


@app.get("/json")
async def as_json() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def chunks():  # type: ignore[no-untyped-def]
        yield "<html><body><p>one</p>"
        yield "<p>two</p></bo"
        yield "dy></html>"

    return StreamingResponse(chunks(), media_type="text/html")


@app.get("/static/site.css")
async def css() -> StreamingResponse:
    async def body():  # type: ignore[no-untyped-def]
        yield "h1 { color: rgb(0, 0, 0); }"

    return StreamingResponse(body(), media_type="text/css")


@app.post("/trigger")
async def trigger() -> dict[str, object]:
    """Publish from inside one worker (what a file watcher or an admin action would do)."""
    result = await send_reload_signal_async()
    return {"version": str(result.version), "receivers": result.receivers, "pid": os.getpid()}


@app.post("/trigger-sync")
def trigger_sync() -> dict[str, object]:
    """The synchronous API, called from Starlette's thread pool."""
    from distreload import send_reload_signal

    result = send_reload_signal()
    return {"version": str(result.version), "receivers": result.receivers, "pid": os.getpid()}


app = patch_for_auto_reloading(app)  # type: ignore[assignment]

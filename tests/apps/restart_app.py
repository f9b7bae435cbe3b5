"""Copied into a temporary directory by the code-change tests, which then edit CODE and watch the server
restart (``uvicorn --reload``, ``gunicorn --reload``) with pages open."""

from __future__ import annotations

import os

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from distreload import patch_for_auto_reloading

CODE = "first"

app = FastAPI()


@app.get("/page/{name}", response_class=HTMLResponse)
async def page(name: str) -> str:
    return (
        f"<!doctype html><html><head><title>restart {name}</title></head>"
        f'<body><p id="code">{CODE}</p><p id="worker">{os.getpid()}</p></body></html>'
    )


app = patch_for_auto_reloading(app)  # type: ignore[assignment]

"""Apps whose page breaks the way a user's does while they edit: FastAPI rendering a Jinja2 template, and
Starlette and Litestar handlers reading a settings file. The template and the settings live in the project
directory named by ``FAILING_APP_DIR`` (``templates/page.html``, ``settings.json``): a test breaks the page by
writing a syntax error into the template or bad settings into the file, as an editor would.

``fastapi_app``, ``starlette_app`` and ``litestar_app``, each with its unwrapped twin under ``/plain/...``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from litestar import Litestar, MediaType, get
from starlette.applications import Starlette
from starlette.responses import HTMLResponse as StarletteHTMLResponse
from starlette.routing import Route

from distreload import DistReload
from tests.apps.twin import with_plain_twin

PROJECT = Path(os.environ.get("FAILING_APP_DIR", "."))


def greeting() -> str:
    settings: dict[str, Any] = json.loads((PROJECT / "settings.json").read_text())
    return str(settings["greeting"])


def page(framework: str) -> str:
    return (
        f"<!doctype html><html><head><title>{framework}</title></head>"
        f'<body><h1>{framework}</h1><p id="greeting">{greeting()}</p></body></html>'
    )


templates = Jinja2Templates(directory=str(PROJECT / "templates"))
fastapi_inner = FastAPI()


@fastapi_inner.get("/page", response_class=HTMLResponse)
async def fastapi_page(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "page.html", {"framework": "FastAPI"})


fastapi_app = with_plain_twin(DistReload(fastapi_inner), fastapi_inner)


async def starlette_page(request: Any) -> StarletteHTMLResponse:
    return StarletteHTMLResponse(page("Starlette"))


starlette_inner = Starlette(routes=[Route("/page", starlette_page)])
starlette_app = with_plain_twin(DistReload(starlette_inner), starlette_inner)


@get("/page", media_type=MediaType.HTML)
async def litestar_page() -> str:
    return page("Litestar")


litestar_inner = Litestar(route_handlers=[litestar_page])
litestar_app = with_plain_twin(DistReload(litestar_inner), litestar_inner)

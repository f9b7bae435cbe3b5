"""Starlette with DistReload in its ``middleware=[...]`` list; the same routes without it answer /plain/."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from distreload import DistReload
from tests.apps.twin import DATA, distreload_options, page, with_plain_twin


async def html_page(request: Request) -> HTMLResponse:
    return HTMLResponse(page("Starlette"))


async def as_json(request: Request) -> JSONResponse:
    return JSONResponse(DATA)


routes = [Route("/page", html_page), Route("/json", as_json)]
plain = Starlette(routes=routes)
app = with_plain_twin(
    Starlette(routes=routes, middleware=[Middleware(DistReload, **distreload_options())]), plain
)

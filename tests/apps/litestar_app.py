"""Litestar wrapped in DistReload."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, MediaType, get

from distreload import DistReload
from tests.apps.twin import DATA, distreload_options, page, with_plain_twin


@get("/page", media_type=MediaType.HTML)
async def html_page() -> str:
    return page("Litestar")


@get("/json")
async def as_json() -> dict[str, Any]:
    return DATA


inner = Litestar(route_handlers=[html_page, as_json])
app = with_plain_twin(DistReload(inner, **distreload_options()), inner)

"""FastAPI behind distreload through the fastapi-reloader drop-in (``patch_for_auto_reloading``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from distreload import patch_for_auto_reloading
from tests.apps.twin import DATA, distreload_options, page, with_plain_twin

inner = FastAPI()


@inner.get("/page", response_class=HTMLResponse)
async def html_page() -> str:
    return page("FastAPI")


@inner.get("/json")
async def as_json() -> dict[str, Any]:
    return DATA


app = with_plain_twin(patch_for_auto_reloading(inner, **distreload_options()), inner)

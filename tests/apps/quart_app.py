"""Quart wrapped in DistReload."""

from __future__ import annotations

from typing import Any

from quart import Quart

from distreload import DistReload
from tests.apps.twin import DATA, distreload_options, page, with_plain_twin

inner = Quart(__name__)


@inner.get("/page")
async def html_page() -> str:
    return page("Quart")


@inner.get("/json")
async def as_json() -> dict[str, Any]:
    return DATA


app = with_plain_twin(DistReload(inner, **distreload_options()), inner)

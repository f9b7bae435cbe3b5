"""Pages the browser tests change, break and count while several hosts serve them at once.

Each host runs this app wrapped in DistReload on the Redis and namespace of DISTRELOAD_REDIS_URL and
DISTRELOAD_NAMESPACE (both required). What the pages depend on lives in that Redis too, under
``distreload-test:<namespace>:`` and expiring on its own, so every worker of every host renders the same
revision, fails alike and records to one list:

- ``/morph/{name}``: a page rendered by the current revision (``POST /control/revision/{rev}``): ``1``,
  ``2``, ``script`` (its inline script changed), ``3`` (``script``'s script, other text), ``redirect``
  (a 302 to ``/moved/{name}``) or ``json``.
- ``/quiet/...``: the same pages through a second DistReload, with ``{"overlay": false, "indicator": false}``.
- ``/kiosk/{group}/{name}``, ``/moved/{name}``; ``/images/{name}``, a page of images whose files are 10 px
  wide per image revision (``POST /control/image-revision/{n}``); ``slow.svg`` takes 1.5 s when busted.
- ``POST /control/failure/{status}``: every page answers that status with a traceback (0: mended).
- ``POST /control/publish`` with ``{"kind", "paths", "spread", "match"}``: ``send_reload_signal_async()``;
  answers the version, the receivers and when it was sent (``published_at``, on this host's clock).
- ``GET /control/arrivals``: every page and image request (time, path, query, Sec-Fetch-Mode, worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from distreload import DistReload, send_reload_signal_async

NAMESPACE = os.environ["DISTRELOAD_NAMESPACE"]
KEY = f"distreload-test:{NAMESPACE}"
KEEP_SECONDS = 3600  # the shared Redis is never flushed: what a test wrote goes away on its own
QUIET_PREFIX = "/quiet"
QUIET_OPTIONS = {"overlay": False, "indicator": False}

store: aioredis.Redis = aioredis.Redis.from_url(os.environ["DISTRELOAD_REDIS_URL"])


async def read(name: str, default: str) -> str:
    value = await store.get(f"{KEY}:{name}")
    return value.decode() if value is not None else default


async def record(request: Request) -> None:
    arrival = {
        "t": time.time(),
        "path": request.url.path,
        "query": request.url.query,
        "mode": request.headers.get("sec-fetch-mode", ""),
        "worker": str(loud.broker.identity),  # as the stream's hello names it
    }
    await store.rpush(f"{KEY}:arrivals", json.dumps(arrival))
    await store.expire(f"{KEY}:arrivals", KEEP_SECONDS)


async def render(request: Request, body: str) -> Response:
    """Record the request and answer the page, or the failure a test switched on."""
    await record(request)
    failure = int(await read("failure", "0"))
    if failure:
        return PlainTextResponse(
            "Traceback (most recent call last):\n"
            '  File "tests/apps/cluster_pages_app.py", line 1, in render\n'
            "    return template.render(page)\n"
            f"RuntimeError: this page fails with {failure} on purpose (POST /control/failure/0 mends it)\n",
            status_code=failure,
        )
    return Response(body, media_type="text/html")


# --- pages -------------------------------------------------------------------------------------------------

MORPH_PAGE = """<!doctype html>
<html lang="en" data-revision="{rev}"><head><meta charset="utf-8"><title>distreload morph {rev}</title>
<link rel="stylesheet" href="/static/theme-{sheet}.css">
<style>#note {{ font-weight: {weight}; }}</style>
</head>
<body class="revision-{rev}">
<h1 id="title">Revision {rev}</h1>
<p id="note" data-revision="{rev}">{note}</p>
{banner}<ul id="list">{items}</ul>
<form><input id="name" type="text" value=""> <textarea id="notes"></textarea>
<input id="token" type="hidden" value="token-{rev}"></form>
<details id="more"><summary>More</summary><p>inside {rev}</p></details>
<button id="counter" type="button">count</button>
<div id="tall" style="height: 4000px">tall</div>
<script>{script}</script>
</body></html>"""

PAGE_SCRIPT = """window.scriptRuns = (window.scriptRuns || 0) + 1; window.clicks = 0;
document.getElementById("counter").addEventListener("click", function () { window.clicks += 1; });"""

REVISIONS: dict[str, dict[str, str]] = {
    "1": {
        "sheet": "plain",
        "weight": "400",
        "note": "first note",
        "banner": "",
        "items": '<li id="item-1">one</li><li id="item-2">two</li>',
        "script": PAGE_SCRIPT,
    },
    "2": {
        "sheet": "red",
        "weight": "700",
        "note": "second note",
        "banner": '<p id="banner">a new banner</p>\n',
        "items": '<li id="item-0">zero</li><li id="item-2">two</li><li id="item-1">one, edited</li>',
        "script": PAGE_SCRIPT,
    },
}
REVISIONS["script"] = {**REVISIONS["2"], "script": PAGE_SCRIPT + "\nwindow.changedScript = true;"}
REVISIONS["3"] = {**REVISIONS["script"], "note": "third note"}  # what follows "script" without a reload
THEMES = {"plain": "rgb(0, 0, 0)", "red": "rgb(200, 0, 0)"}


async def morph_page(request: Request) -> Response:
    name = request.path_params["name"]
    revision = await read("revision", "1")
    if revision == "redirect":
        await record(request)
        return RedirectResponse(f"/moved/{name}", status_code=302)
    if revision == "json":
        await record(request)
        return JSONResponse({"page": name, "note": "not HTML any more"})
    return await render(request, MORPH_PAGE.format(rev=revision, **REVISIONS[revision]))


SIMPLE_PAGE = """<!doctype html><html><head><title>distreload {what}</title></head>
<body><h1 id="title">{what}</h1><p id="worker">{pid}</p></body></html>"""


async def kiosk_page(request: Request) -> Response:
    what = f"kiosk {request.path_params['group']} {request.path_params['name']}"
    return await render(request, SIMPLE_PAGE.format(what=what, pid=os.getpid()))


async def moved_page(request: Request) -> Response:
    what = f"moved {request.path_params['name']}"
    return await render(request, SIMPLE_PAGE.format(what=what, pid=os.getpid()))


IMAGES_PAGE = """<!doctype html><html><head><title>distreload images</title>
<link rel="stylesheet" href="/static/images.css"></head>
<body>
<img id="plain" src="/img/plain.svg" alt="">
<img id="responsive" src="/img/responsive.svg" alt=""
     srcset="/img/responsive.svg 1x, /img/responsive.svg?hi 2x">
<div id="inline" style="width: 40px; height: 10px; background-image: url('/img/inline.svg')"></div>
<div id="sheet" class="sheet-background"></div>
<img id="slow" src="/img/slow.svg" alt="">
<img id="elsewhere" src="/img/elsewhere.svg" alt="">
</body></html>"""


async def images_page(request: Request) -> Response:
    return await render(request, IMAGES_PAGE)


async def image(request: Request) -> Response:
    """An SVG as wide as 10 x the image revision, so a test can see which one the page shows."""
    await record(request)
    if request.path_params["name"] == "slow" and request.query_params.get("distreload"):
        await asyncio.sleep(1.5)
    width = 10 * int(await read("image-revision", "1"))
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="10"></svg>'
    return Response(svg, media_type="image/svg+xml", headers={"cache-control": "max-age=3600"})


async def stylesheet(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "images":
        body = ".sheet-background { width: 40px; height: 10px; background-image: url(/img/sheet.svg); }"
    else:
        body = f"h1 {{ color: {THEMES[name.removeprefix('theme-')]}; }}"
    return Response(body, media_type="text/css")


# --- control -----------------------------------------------------------------------------------------------


async def publish(request: Request) -> Response:
    spec = await request.json()
    published_at = time.time()
    result = await send_reload_signal_async(
        spec.get("kind", "reload"),
        spec.get("paths", ()),
        spread=spec.get("spread", 0.0),
        match=spec.get("match"),
    )
    return JSONResponse(
        {"version": str(result.version), "receivers": result.receivers, "published_at": published_at}
    )


async def set_value(request: Request) -> Response:
    name, value = request.path_params["name"], request.path_params["value"]
    await store.set(f"{KEY}:{name}", value, ex=KEEP_SECONDS)
    return JSONResponse({name: value})


async def arrivals(request: Request) -> Response:
    return JSONResponse([json.loads(item) for item in await store.lrange(f"{KEY}:arrivals", 0, -1)])


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await store.aclose()


pages = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/morph/{name}", morph_page),
        Route("/kiosk/{group}/{name}", kiosk_page),
        Route("/moved/{name}", moved_page),
        Route("/images/{name}", images_page),
        Route("/img/{name}.svg", image),
        Route("/static/{name}.css", stylesheet),
        Route("/control/publish", publish, methods=["POST"]),
        Route("/control/{name}/{value}", set_value, methods=["POST"]),
        Route("/control/arrivals", arrivals),
    ],
)

loud = DistReload(pages, enabled=True)
quiet = DistReload(pages, enabled=True, client_options=QUIET_OPTIONS)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/quiet/...`` goes to the quiet DistReload as to an app mounted there (its tag and its endpoint under
    ``/quiet``); everything else, the lifespan included, to the usual one. Side by side, not one inside the
    other: the outermost DistReload writes a page's tag, and an inner one stands aside."""
    if scope["type"] == "http" and scope["path"].startswith(QUIET_PREFIX + "/"):
        await quiet({**scope, "root_path": scope.get("root_path", "") + QUIET_PREFIX}, receive, send)
        return
    await loud(scope, receive, send)

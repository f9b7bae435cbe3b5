"""Screens whose reloads ``distreload publish --wait`` counts, served by several hosts at once.

Each host runs this app wrapped in DistReload (with the token ``screens-token``) on the Redis and namespace
of DISTRELOAD_REDIS_URL and DISTRELOAD_NAMESPACE. What a screen does when it is fetched is kept in that
Redis, under ``distreload-test:<namespace>:`` and expiring on its own, so every host agrees:

- ``/screen/{group}/{name}``: a small page;
- ``POST /control/fail/{name}/{status}``: the screen ``name`` answers that status (0: mended);
- ``POST /control/slow/{name}/{seconds}``: the screen ``name`` answers after that long (0: at once).

With SCREENS_DEBUG=1 distreload's debug lines go to stderr (the server's log), for a test that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from distreload import DistReload

if os.environ.get("SCREENS_DEBUG") == "1":
    logging.basicConfig(format="%(asctime)s %(process)d %(name)s: %(message)s")
    logging.getLogger("distreload").setLevel(logging.DEBUG)

NAMESPACE = os.environ["DISTRELOAD_NAMESPACE"]
KEY = f"distreload-test:{NAMESPACE}"
KEEP_SECONDS = 3600  # the shared Redis is never flushed: what a test wrote goes away on its own
TOKEN = "screens-token"

store: aioredis.Redis = aioredis.Redis.from_url(os.environ["DISTRELOAD_REDIS_URL"])

PAGE = """<!doctype html><html><head><title>screen {group}/{name}</title></head>
<body><h1>Screen {group}/{name}</h1><p>served by {pid}</p></body></html>"""


async def screen(request: Request) -> Response:
    group, name = request.path_params["group"], request.path_params["name"]
    slow = float(await store.get(f"{KEY}:slow:{name}") or 0)
    if slow:
        await asyncio.sleep(slow)
    failure = int(await store.get(f"{KEY}:fail:{name}") or 0)
    if failure:
        return PlainTextResponse(f"screen {name} fails with {failure} on purpose\n", status_code=failure)
    return Response(PAGE.format(group=group, name=name, pid=os.getpid()), media_type="text/html")


async def set_value(request: Request) -> Response:
    what, name, value = (request.path_params[k] for k in ("what", "name", "value"))
    await store.set(f"{KEY}:{what}:{name}", value, ex=KEEP_SECONDS)
    return JSONResponse({name: value})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await store.aclose()


screens = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/screen/{group}/{name}", screen),
        Route("/control/{what}/{name}/{value}", set_value, methods=["POST"]),
    ],
)

app = DistReload(screens, enabled=True, token=TOKEN)

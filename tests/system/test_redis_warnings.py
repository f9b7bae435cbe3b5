"""A user's own test suite, run with ``python -W error``, that starts an app wrapped by distreload against a
real Redis: distreload and what it uses of redis-py must warn about nothing, at start, on a page, on a
publish and at shutdown. Run as a subprocess, so that no filter of this suite's own applies."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.redis

USER_TEST = textwrap.dedent(
    """
    import asyncio, logging, sys

    import httpx
    from asgi_lifespan import LifespanManager
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from distreload import DistReload, send_reload_signal_async

    async def page(request):
        return HTMLResponse("<html><body>hello</body></html>")

    async def main(redis_url, namespace):
        logging.basicConfig(level=logging.WARNING)
        app = DistReload(Starlette(routes=[Route("/", page)]), redis_url=redis_url, namespace=namespace,
                         enabled=True)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                response = await client.get("/")
                assert "data-distreload" in response.text, response.text
            result = await send_reload_signal_async(redis_url=redis_url, namespace=namespace)
            assert result.receivers == 1, result
            assert app.broker.connected
        print("ok", result.version)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_an_app_started_under_warnings_as_errors_runs_and_publishes(
    shared_redis_url: str, namespace: str
) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DISTRELOAD_")}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", USER_TEST, shared_redis_url, namespace],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=str(ROOT),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok "), done.stdout
    # Nothing from redis-py or anything else in the worker's log: distreload's own lines only.
    foreign = [line for line in done.stderr.splitlines() if line and "distreload" not in line]
    assert foreign == [], done.stderr

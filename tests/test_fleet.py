"""The page routes: tabs report to ``<prefix>/page``; ``<prefix>/fleet`` and ``/fleet.json`` show them;
``POST <prefix>/publish`` with a wait answers what became of them. Driven through ASGI, on the in-memory
broker."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
from starlette.types import Receive, Scope, Send

from distreload import DistReload, send_reload_signal_async
from distreload.broker import MemoryBroker
from distreload.config import Target
from distreload.pages import MAX_REPORT_BYTES

from .asgi import complete, request

pytestmark = pytest.mark.anyio
TOKEN = "fleet-token"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def app() -> AsyncIterator[DistReload]:
    distreload = DistReload(
        not_found, enabled=True, broker=MemoryBroker(Target("memory://", "fleet-test")), token=TOKEN
    )
    await distreload.ensure_started()
    yield distreload
    await distreload.shutdown()


def page_report(page: str, path: str = "/tv/1", **fields: object) -> bytes:
    return json.dumps({"page": page, "path": path, "how": "loaded", "state": "live", **fields}).encode()


async def post_report(app: DistReload, body: bytes) -> int:
    return (await complete(request(app, "POST", "/---distreload---/page", body=body))).status


async def test_a_tab_reports_and_leaves(app: DistReload) -> None:
    assert app.pages is not None
    assert await post_report(app, page_report("0123456789abcdef", version=str(app.broker.version))) == 204
    assert list(app.pages.pages) == ["0123456789abcdef"]
    assert await post_report(app, b'{"page": "0123456789abcdef", "leave": true}') == 204
    assert len(app.pages) == 0


async def test_garbage_and_floods_never_touch_the_pages_counted(
    app: DistReload, caplog: pytest.LogCaptureFixture
) -> None:
    assert app.pages is not None
    app.pages.max_pages = 3
    for name in ("good-page-1", "good-page-2"):
        assert await post_report(app, page_report(name)) == 204
    caplog.set_level(logging.DEBUG, logger="distreload.fleet")
    statuses = set()
    bogus = page_report("good-page-1", state="bogus")
    for body in (b"nonsense", b"{}", page_report("x"), b"[" * 5000, bogus):
        statuses.add(await post_report(app, body))
    statuses.add(await post_report(app, b"{" + b" " * MAX_REPORT_BYTES + b"}"))
    for number in range(50):  # made-up pages past the limit are refused
        statuses.add(await post_report(app, page_report(f"flood-{number:05}")))
    assert statuses == {204, 400, 413, 429}
    assert set(app.pages.pages) == {"good-page-1", "good-page-2", "flood-00000"}
    assert app.pages.pages["good-page-1"].state == "live"
    refused = [r for r in caplog.records if "refused page reports" in r.getMessage()]
    assert len(refused) == 1  # one debug line, however many


async def test_the_fleet_page_and_its_data_are_behind_the_token(app: DistReload) -> None:
    page = await complete(request(app, "GET", "/---distreload---/fleet"))
    assert page.status == 200 and b"distreload fleet" in page.body and b"fleet-token" not in page.body
    denied = await complete(request(app, "GET", "/---distreload---/fleet.json"))
    assert denied.status == 401
    await post_report(app, page_report("0123456789abcdef", version=str(app.broker.version)))
    await asyncio.sleep(0.3)  # the flusher writes the page table
    answer = await complete(request(app, "GET", "/---distreload---/fleet.json", headers=AUTHORIZED))
    data = json.loads(answer.body)
    assert answer.status == 200 and data["publish"] is True
    assert data["pages"]["/tv/1"]["states"] == {"live": 1}
    assert [w["pages"] for w in data["workers"]] == [1]


async def test_publish_with_a_wait_answers_what_the_pages_did(app: DistReload) -> None:
    version = str(app.broker.version)
    await post_report(app, page_report("applies-0000001", "/tv/1", version=version, stream=""))
    await post_report(app, page_report("fails-00000001", "/tv/2", version=version))
    await post_report(app, page_report("elsewhere-00001", "/office", version=version))
    publishing = asyncio.ensure_future(
        complete(
            request(
                app,
                "POST",
                "/---distreload---/publish",
                headers=AUTHORIZED,
                body=b'{"match": "/tv/*", "wait": 10}',
            )
        )
    )
    while str(app.broker.version) == version:
        await asyncio.sleep(0.01)
    new = str(app.broker.version)
    await post_report(app, page_report("applies-0000001", "/tv/1", version=new, how="reloaded"))
    failing = page_report("fails-00000001", "/tv/2", version=version, state="overlay", reason="500")
    await post_report(app, failing)
    answer = await publishing
    pages = json.loads(answer.body)["pages"]
    assert answer.status == 200
    assert (pages["outcome"], pages["applied"], pages["expected"], pages["excluded"]) == ("failed", 1, 2, 1)
    assert pages["failed"][0]["path"] == "/tv/2" and pages["failed"][0]["reason"] == "500"


async def test_a_publish_wait_is_validated(app: DistReload) -> None:
    for body in (b'{"wait": 0}', b'{"wait": "soon"}', b'{"wait": true}', b'{"wait": 99999}'):
        bad = await complete(request(app, "POST", "/---distreload---/publish", headers=AUTHORIZED, body=body))
        assert bad.status == 400 and b"wait" in bad.body


async def test_send_reload_signal_async_waits_for_the_pages(app: DistReload) -> None:
    result = await send_reload_signal_async(wait=1)
    assert result.pages is not None
    assert (result.pages.outcome, result.pages.expected) == ("applied", 0)
    with pytest.raises(ValueError, match="wait"):
        await send_reload_signal_async(wait=-1)

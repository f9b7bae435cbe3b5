"""The routes around the page registry: tabs report to ``<prefix>/page``, and ``<prefix>/fleet`` shows the
hosts, workers and pages of the whole namespace, live, with the publish controls.

The fleet page itself holds no data; what it shows comes from ``<prefix>/fleet.json``, which asks for the
bearer token whenever the app has one (the page keeps the token the user types, or the one in its URL's
fragment, which never reaches a server, in the tab's session storage).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources
from typing import Any

from starlette.types import Receive, Scope, Send

from .broker import Broker
from .delivery import PagesUnavailable, group_by_path, read_page_tables, wait_for_pages
from .endpoint import BodyTooLarge, bearer_matches, read_body, respond
from .pages import MAX_REPORT_BYTES, BadReport, PageRegistry, parse_report

logger = logging.getLogger(__name__)

FLEET_PAGE = resources.files(__package__).joinpath("fleet.html").read_bytes()
JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
BAD_REPORT_LOG_SECONDS = 60.0  # one debug line per interval, however many bad reports come


class FleetRoutes:
    """``/page`` (POST, from the tabs), ``/fleet`` (the page) and ``/fleet.json`` (what it shows)."""

    subpaths = frozenset({"/page", "/fleet", "/fleet.json"})

    def __init__(self, pages: PageRegistry, broker: Broker, token: str | None) -> None:
        self.pages = pages
        self.broker = broker
        self.token = token
        self.bad_reports = 0
        self._bad_logged_at = -float("inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send, subpath: str) -> None:
        method = scope.get("method", "GET")
        if subpath == "/page":
            if method != "POST":
                await respond(send, 405, b"", [(b"allow", b"POST")])
                return
            await self._report(receive, send)
        elif method != "GET":
            await respond(send, 405, b"", [(b"allow", b"GET")])
        elif subpath == "/fleet":
            headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
            await respond(send, 200, FLEET_PAGE, headers)
        elif not self._authorized(scope):
            await respond(send, 401, b'{"error":"missing or wrong bearer token"}', JSON_HEADERS)
        else:
            try:
                body = json.dumps(await asyncio.to_thread(self.snapshot)).encode()
            except PagesUnavailable as exc:
                await respond(send, 503, json.dumps({"error": str(exc)}).encode(), JSON_HEADERS)
                return
            await respond(send, 200, body, JSON_HEADERS)

    def _authorized(self, scope: Scope) -> bool:
        return not self.token or bearer_matches(scope, self.token)

    async def _report(self, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, MAX_REPORT_BYTES)
        except BodyTooLarge:
            self._bad(f"a report over {MAX_REPORT_BYTES} bytes")
            await respond(send, 413, b"", [])
            return
        if body is None:
            return
        try:
            report = parse_report(body)
        except BadReport as exc:
            self._bad(str(exc))
            await respond(send, 400, json.dumps({"error": str(exc)}).encode(), JSON_HEADERS)
            return
        if not self.pages.report(report):
            self._bad(f"a new page past the limit of {self.pages.max_pages}")
            await respond(send, 429, b"", [])
            return
        await respond(send, 204, b"", [])

    def _bad(self, why: str) -> None:
        """Count a refused report; say so in one debug line per interval, never more."""
        self.bad_reports += 1
        now = time.monotonic()
        if now - self._bad_logged_at >= BAD_REPORT_LOG_SECONDS:
            self._bad_logged_at = now
            logger.debug(
                "distreload: refused page reports (%d so far; the latest: %s)", self.bad_reports, why
            )

    def snapshot(self) -> dict[str, Any]:
        """The namespace's hosts, workers and pages, and the outcome of the latest reload (blocking I/O)."""
        from .presence import PresenceUnavailable, presence_of, read_presence

        target = self.broker.target
        version = str(self.broker.version)
        if target.is_memory:
            streams = self.broker.stream_count()
            workers = [presence_of(self.broker.identity, streams=streams, version=version, build="")]
        else:
            try:
                cluster = read_presence(target)
            except PresenceUnavailable as exc:
                raise PagesUnavailable(str(exc)) from None
            workers = cluster.workers
            version = cluster.version or version
        tables = read_page_tables(target)
        pages_of: dict[str, int] = {}
        for table in tables:
            worker, count = str(table.get("worker")).split("#")[0], table.get("pages")
            if isinstance(count, int):
                pages_of[worker] = pages_of.get(worker, 0) + count
        last = wait_for_pages(target, version, seconds=0, workers=0).to_dict()
        return {
            "namespace": target.namespace,
            "version": version,
            "publish": bool(self.token),
            "hosts": sorted({w.host for w in workers}),
            "workers": [
                {
                    "host": w.host,
                    "pid": w.pid,
                    "streams": w.streams,
                    "pages": pages_of.get(f"{w.host}:{w.pid}", 0),
                    "version": w.version,
                    "build": w.build,
                    "age": round(max(0.0, time.time() - w.started), 1),
                }
                for w in workers
            ],
            "pages": group_by_path(tables),
            "last": last if last["expected"] or last["workers"] else None,
        }

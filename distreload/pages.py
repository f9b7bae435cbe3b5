"""The pages a worker serves, what each one shows, and whether each one applied a reload.

Every tab reports to a worker (``POST <prefix>/page``) when what it shows changes: its path, the version
it shows, how it got there (loaded, reloaded, morphed, css, images) and its state (live, waiting out a
spread, paused, excluded by a match, or showing the overlay, with the reason and the reload it could not
apply). An idle page reports nothing. A page leaves the registry when its browser says so (``pagehide``
and ``sendBeacon``) or, where it cannot, when the event stream it listens through closes (the stream's
heartbeat finds a closed connection within one interval).

When a reload reaches the worker, the pages listening through its open streams are its round: each one is
expected to apply it (or is excluded by the match, or paused). A page between two documents then (reloading,
or its stream closed) joins the round when it reports again: here if the reload came through its stream
here, else at the worker of its next stream; so does a page whose first report reached the worker late,
through a stream the reload went out through. The round's outcome per page (applied and how long it took,
failed and why, closed, or still pending) is summarised per worker and written to one Redis hash per
version, a few times per second at most, whatever the number of pages: ``distreload publish --wait`` reads
those summaries until every page open at publish time applied the reload or failed, or the time is up.

Workers that share one port (``gunicorn -w N``, ``uvicorn --workers N``) get a tab's reports in any order:
the worker serving the tab's event stream decides. Stream ids begin with their worker's token, and a worker
that receives a report for a stream it does not serve passes it on through Redis, to a list the stream's
worker drains (:class:`PageFlusher`). A tab that changed stream (its document reloaded, the tab that held
the stream it shared left) names an earlier one (``was``: the one the latest reload came through, with that
reload, ``came``; or before any reload the one before): that stream's worker keeps counting the page in the
rounds it was open for, and the worker of the new stream lists it. A page whose stream closed is counted as
closed only VANISHED_SECONDS later (its last report may be on its way through another worker), and a report
passed on late through a stream the page has left counts but lists it nowhere. With no Redis, several
workers cannot tell each other anything: reports for another worker's stream are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .protocol import (
    ClusterVersion,
    Reload,
    glob_matches,
    inbox_key,
    is_same_origin_path,
    pages_prefix,
    round_key,
)
from .timeouts import within

logger = logging.getLogger(__name__)

MAX_REPORT_BYTES = 2048
MAX_PAGES = 20_000  # per worker and app: past it new pages are refused
MAX_REASON = 200
MAX_PATH = 512
MAX_ROUNDS = 4  # the latest reloads a worker keeps outcomes for
MAX_LISTED = 100  # pages named per worker and outcome in a summary; the rest are counted
FLUSH_SECONDS = 0.5  # the most often a worker writes a round's summary to Redis
PAGES_REFRESH_SECONDS = 5.0  # the page table is rewritten this often anyway, and expires after three times
REFUSED_RETRY_SECONDS = 60.0  # how long a worker whose writes Redis refused waits before trying again
TABLE_SECONDS = 1.0  # the most often a changed page table is written (status --pages, the fleet page)
VANISHED_SECONDS = 3.0  # a page whose stream closed is counted as closed after this, unless it reports
RELOADING_SECONDS = 60.0  # a page that said "reloading" and was not heard of since is gone after this
ROUND_TTL_SECONDS = 600
MAX_FORWARDED = 5000  # reports passed on to one worker per flush; the rest go with the next flushes
MAX_OUTBOX = MAX_PAGES  # reports waiting to be passed on to one worker, the latest per page; past it, dropped
MAX_INBOX = 10_000  # a worker's inbox keeps its newest reports only, if it falls that far behind
INBOX_TTL_SECONDS = 60  # the inbox of a worker that stopped goes away after this
STATES = ("live", "waiting", "paused", "excluded", "overlay", "reloading")
HOWS = ("loaded", "reloaded", "morphed", "css", "images")
_PAGE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_STREAM_ID = re.compile(r"[0-9a-f]{8,32}")
OWNER_CHARS = 8  # a stream id is its worker's token followed by 16 random hex digits
_OWNED_STREAM = re.compile(r"[0-9a-f]{24}")


def owner_of(stream: str) -> str | None:
    """The token of the worker that serves ``stream``; None for an id that names none (an older worker's)."""
    return stream[:OWNER_CHARS] if _OWNED_STREAM.fullmatch(stream) else None


class BadReport(ValueError):
    """A page report that the client script would not have sent."""


@dataclass(frozen=True, slots=True)
class PageReport:
    """One report from a tab, validated (see :func:`parse_report`)."""

    page: str
    path: str = "/"
    version: ClusterVersion | None = None
    how: str = "loaded"
    state: str = "live"
    reason: str = ""
    stream: str = ""
    leave: bool = False
    was: str = ""  # a stream the tab left: the one the latest reload came through, else the one before
    came: ClusterVersion | None = None  # the reload that came through ``was``, if one did
    trying: ClusterVersion | None = None  # showing the overlay: the reload it could not apply

    def to_json(self, **extra: object) -> str:
        """The report as the client sends it (what :func:`parse_report` reads back)."""
        data: dict[str, object] = {"page": self.page}
        if self.leave:
            data["leave"] = True
        else:
            version = str(self.version) if self.version else ""
            data.update(path=self.path, version=version, how=self.how, state=self.state, reason=self.reason)
            if self.trying is not None:
                data["trying"] = str(self.trying)
        for name in ("stream", "was"):
            if getattr(self, name):
                data[name] = getattr(self, name)
        if self.came is not None:
            data["came"] = str(self.came)
        return json.dumps({**data, **extra}, separators=(",", ":"))


def parse_report(body: bytes | str) -> PageReport:
    """Read a tab's report; raise BadReport for anything the client script would not send."""
    if len(body) > MAX_REPORT_BYTES:
        raise BadReport(f"report of {len(body)} bytes is over {MAX_REPORT_BYTES}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadReport("not JSON") from None
    return read_report(data)


def _stream_field(data: dict[str, Any], name: str) -> str:
    stream = data.get(name, "")
    if not isinstance(stream, str) or (stream and not _STREAM_ID.fullmatch(stream)):
        raise BadReport(f"{name} must be the id a stream's hello gave")
    return stream


def read_report(data: object) -> PageReport:
    """A report decoded from JSON, validated as :func:`parse_report` says."""
    if not isinstance(data, dict):
        raise BadReport("not a JSON object")
    page = data.get("page")
    if not isinstance(page, str) or not _PAGE_ID.fullmatch(page):
        raise BadReport("page must be an id of 8 to 64 letters, digits, '-' or '_'")
    stream, was = _stream_field(data, "stream"), _stream_field(data, "was")
    came_text = data.get("came", "")
    came = ClusterVersion.parse(came_text) if isinstance(came_text, str) and was else None
    if came_text and was and came is None:
        raise BadReport("came must be 'epoch-number'")
    if data.get("leave") is True:
        return PageReport(page, stream=stream, leave=True, was=was, came=came)
    path = data.get("path")
    if not is_same_origin_path(path):
        raise BadReport("path must be a same-origin URL path")
    assert isinstance(path, str)
    version_text = data.get("version", "")
    version = ClusterVersion.parse(version_text) if isinstance(version_text, str) else None
    if version_text and version is None:
        raise BadReport("version must be 'epoch-number'")
    how, state = data.get("how", "loaded"), data.get("state", "live")
    if how not in HOWS:
        raise BadReport(f"how must be one of {', '.join(HOWS)}")
    if state not in STATES:
        raise BadReport(f"state must be one of {', '.join(STATES)}")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise BadReport("reason must be text")
    reason = _printable(reason)[:MAX_REASON]
    trying_text = data.get("trying", "")
    trying = ClusterVersion.parse(trying_text) if isinstance(trying_text, str) else None
    if trying_text and trying is None:
        raise BadReport("trying must be 'epoch-number'")
    return PageReport(
        page, path[:MAX_PATH], version, how, state, reason, stream, was=was, came=came, trying=trying
    )


def _printable(text: str) -> str:
    return "".join(character if character.isprintable() else " " for character in text)


@dataclass(slots=True)
class Page:
    page: str
    path: str
    version: ClusterVersion | None
    how: str
    state: str
    reason: str
    stream: str
    since: float  # wall-clock time of the last report
    trying: ClusterVersion | None = None  # showing the overlay: the reload it could not apply (older
    # clients do not say: their overlay counts against every round they are pending in)


def _reached(page_version: ClusterVersion | None, wanted: ClusterVersion) -> bool:
    """Whether a page showing ``page_version`` shows ``wanted`` or a later one."""
    return page_version is not None and not page_version.is_behind(wanted)


@dataclass
class Round:
    """The pages open when one reload reached this worker, and what became of each."""

    version: ClusterVersion
    match: str
    started: float  # monotonic
    pending: dict[str, str] = field(default_factory=dict)  # page id -> path
    waiting: set[str] = field(default_factory=set)  # pending pages that wait out a spread
    applied_ms: list[int] = field(default_factory=list)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # page id -> (path, reason)
    paused: dict[str, str] = field(default_factory=dict)
    closed: dict[str, str] = field(default_factory=dict)
    excluded: int = 0
    expected: int = 0
    members: set[str] = field(default_factory=set)  # every page counted or excluded here
    dirty: bool = True

    def joinable(self, page_id: str, now: float) -> bool:
        """Whether a page not counted when the reload arrived may still be (it was between two documents,
        or its first report came late): not counted yet, and the reload is recent."""
        return page_id not in self.members and now - self.started < RELOADING_SECONDS

    def count_in(self, page: Page, now: float) -> None:
        """Count ``page`` in this round (or as excluded by its match)."""
        self.members.add(page.page)
        if self.match and not glob_matches(self.match, page.path):
            self.excluded += 1
            return
        self.expected += 1
        self.pending[page.page] = page.path
        # Paused already, or showing this version already, or failed to apply it already (its report came
        # through another worker first): settled from the start.
        if (
            page.state == "paused"
            or (page.state == "live" and _reached(page.version, self.version))
            or (page.state == "overlay" and _reached(page.trying, self.version))
        ):
            self.settle(page, now)
        self.dirty = True

    def settle(self, page: Page, now: float) -> None:
        """Take what ``page`` now shows as its outcome, if it is one."""
        if page.page in self.failed and page.state == "live" and _reached(page.version, self.version):
            path, _ = self.failed.pop(page.page)
            self.pending[page.page] = path  # the overlay went away and the page applied: count it below
        elif page.page in self.closed:
            # Back through another stream (the one it shared was held by a tab that left): open after all.
            self.pending[page.page] = self.closed.pop(page.page)
        if page.page not in self.pending:
            return
        if page.state == "live" and _reached(page.version, self.version):
            self.pending.pop(page.page)
            self.waiting.discard(page.page)
            self.applied_ms.append(round((now - self.started) * 1000))
        elif page.state == "overlay":
            if page.trying is not None and page.trying.is_behind(self.version):
                return  # its overlay is for an earlier reload (a report on its way): this one is still to try
            self.failed[page.page] = (self.pending.pop(page.page), page.reason or "overlay")
            self.waiting.discard(page.page)
        elif page.state == "paused":
            self.paused[page.page] = self.pending.pop(page.page)
            self.waiting.discard(page.page)
        elif page.state == "excluded":
            if not _reached(page.version, self.version):
                return  # left out by an earlier reload's match (a report passed on late): not by this one
            self.pending.pop(page.page)
            self.expected -= 1  # left out, as the pages the worker's own match check leaves out
            self.excluded += 1
        elif page.state == "waiting":
            self.waiting.add(page.page)
        else:
            return
        self.dirty = True

    def leave(self, page_id: str) -> None:
        path = self.pending.pop(page_id, None)
        if path is not None:
            self.waiting.discard(page_id)
            self.closed[page_id] = path
            self.dirty = True

    def summary(self, worker: str, host: str) -> dict[str, Any]:
        times: dict[int, int] = {}
        for ms in self.applied_ms:
            rounded = _two_digits(ms)
            times[rounded] = times.get(rounded, 0) + 1
        return {
            "worker": worker,
            "host": host,
            "expected": self.expected,
            "applied": len(self.applied_ms),
            "times": sorted(times.items()),
            "failed": [{"path": p, "reason": r} for p, r in list(self.failed.values())[:MAX_LISTED]],
            "failed_count": len(self.failed),
            "pending": [
                {"path": p, "state": "waiting" if i in self.waiting else "live"}
                for i, p in list(self.pending.items())[:MAX_LISTED]
            ],
            "pending_count": len(self.pending),
            "paused": [{"path": p} for p in list(self.paused.values())[:MAX_LISTED]],
            "paused_count": len(self.paused),
            "closed": [{"path": p} for p in list(self.closed.values())[:MAX_LISTED]],
            "closed_count": len(self.closed),
            "excluded": self.excluded,
        }


def _two_digits(ms: int) -> int:
    """``ms`` to two significant digits: a summary of thousands of times stays a few dozen pairs."""
    if ms < 100:
        return ms
    scale = 10 ** (len(str(ms)) - 2)
    return int(round(ms / scale) * scale)


_names_taken: dict[str, int] = {}


def registry_name(worker: str) -> str:
    """The name a registry writes its summaries under: the worker's, with ``#2``, ``#3``... for a second
    and further app in one process (each app has its own pages)."""
    taken = _names_taken[worker] = _names_taken.get(worker, 0) + 1
    return worker if taken == 1 else f"{worker}#{taken}"


class PageRegistry:
    """The pages of one app in this worker, bounded, and the rounds of the latest reloads."""

    def __init__(self, worker: str = "", host: str = "", *, max_pages: int = MAX_PAGES) -> None:
        self.worker = worker
        self.host = host
        self.max_pages = max_pages
        self.pages: OrderedDict[str, Page] = OrderedDict()
        self.rounds: OrderedDict[str, Round] = OrderedDict()
        self.open_streams: dict[str, float] = {}  # stream id -> when it opened (monotonic)
        self.stream_opened_at = -float("inf")  # monotonic
        self.changed = True  # the page table differs from what was last written
        self.wake: Callable[[], None] = lambda: None  # the flusher's doorbell
        self._refused_logged = 0.0
        self._token = ""
        self._token_pid = 0
        # Reports for other workers' streams, per worker token, the latest per page and kind.
        self.outbox: dict[str, OrderedDict[tuple[str, bool], str]] = {}
        self.forwarded = 0
        self.forwards_dropped = 0
        self.vanished: OrderedDict[str, float] = OrderedDict()  # page id -> when its stream closed
        # Page id -> a stream of this worker's that the page listens through no longer, and since when.
        self.left_streams: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.pages)

    @property
    def token(self) -> str:
        """Unique per app and process: the streams this registry serves begin with it (see owner_of). Made
        in the process that serves, not the one that built the app (``gunicorn --preload`` forks after)."""
        if self._token_pid != os.getpid():
            self._token, self._token_pid = secrets.token_hex(OWNER_CHARS // 2), os.getpid()
        return self._token

    def new_stream_id(self) -> str:
        return self.token + secrets.token_hex(8)

    def report(self, report: PageReport) -> bool:
        """Take a tab's report, or pass it on to the workers whose streams it names; False when it is a
        new page and the registry is full (a flood of made-up pages is refused rather than pushing out the
        pages already counted)."""
        owner = owner_of(report.stream)
        previous = owner_of(report.was) if report.was and report.was != report.stream else None
        if previous is not None and previous != owner:
            if previous == self.token:
                self.moved(report)
            else:
                self._forward(previous, report, moved=True)
        if owner is not None and owner != self.token:
            self._forward(owner, report, moved=False)
            return True
        return self.take(report)

    def _forward(self, owner: str, report: PageReport, *, moved: bool) -> None:
        batch = self.outbox.setdefault(owner, OrderedDict())
        key = (report.page, moved)
        if key not in batch and len(batch) >= MAX_OUTBOX:
            self.forwards_dropped += 1
            return
        batch.pop(key, None)  # a newer report of the page replaces the one not sent yet
        batch[key] = report.to_json(moved=True) if moved else report.to_json()
        self.wake()

    def take_outbox(self) -> dict[str, list[tuple[tuple[str, bool], str]]]:
        """The reports to pass on now, per worker token, taken out: MAX_FORWARDED per worker at most, the
        oldest first, each with its key in the outbox (see :meth:`put_back`)."""
        batches: dict[str, list[tuple[tuple[str, bool], str]]] = {}
        for owner, batch in list(self.outbox.items()):
            taken = batches[owner] = []
            while batch and len(taken) < MAX_FORWARDED:
                taken.append(batch.popitem(last=False))
            if not batch:
                del self.outbox[owner]
        self.forwarded += sum(len(taken) for taken in batches.values())
        return {owner: taken for owner, taken in batches.items() if taken}

    def put_back(self, batches: dict[str, list[tuple[tuple[str, bool], str]]]) -> None:
        """Reports that could not be passed on (Redis away): first in line again, unless a newer report of
        the same page is waiting already."""
        for owner, taken in batches.items():
            batch = self.outbox.setdefault(owner, OrderedDict())
            for key, text in reversed(taken):
                if key not in batch and len(batch) < MAX_OUTBOX:
                    batch[key] = text
                    batch.move_to_end(key, last=False)
            self.forwarded -= len(taken)

    def take_forwarded(self, entries: Iterable[bytes | str]) -> int:
        """Take the reports other workers passed on to this one; the number of unreadable ones, skipped."""
        bad = 0
        for entry in entries:
            try:
                data = json.loads(entry)
                report = read_report(data)
            except (BadReport, ValueError, RecursionError, TypeError):
                bad += 1
                continue
            if data.get("moved") is True:
                self.moved(report)
            else:
                self.take(report)
        return bad

    def moved(self, report: PageReport) -> None:
        """A page that listened through one of this worker's streams reports through another worker's: the
        rounds it was open for here take its outcome, and the other worker lists it."""
        self._note_left(report)
        listed = self.pages.get(report.page)
        # Listed through another stream of this worker's since: the page came back, and this report, passed
        # on by another worker, is older than the one that listed it.
        if listed is not None and (report.leave or listed.stream == report.was):
            del self.pages[report.page]
            self.changed = True
        if report.leave:
            self._left(report.page)
            return
        self._settle_only(report, join=True)

    def _note_left(self, report: PageReport) -> None:
        """Remember the stream of this worker's that the page left: a report through it that comes later
        (passed on by another worker) is older than this one."""
        if report.was and report.was != report.stream and owner_of(report.was) == self.token:
            self.left_streams.pop(report.page, None)
            self.left_streams[report.page] = (report.was, time.monotonic())
            while len(self.left_streams) > self.max_pages:
                self.left_streams.popitem(last=False)

    def _settle_only(self, report: PageReport, *, join: bool = False) -> None:
        """What ``report`` says counts in this worker's rounds; the page is not listed here. ``join``: the
        page left one of this worker's streams, and a reload that came through it counts it here even if
        it was reloading when the reload arrived (see :meth:`reload_arrived`)."""
        self.vanished.pop(report.page, None)
        now = time.monotonic()
        elsewhere = Page(
            report.page,
            report.path,
            report.version,
            report.how,
            report.state,
            report.reason,
            "",
            time.time(),
            report.trying,
        )
        underway = report.state in ("reloading", "waiting")
        for current in self.rounds.values():
            if join and current.joinable(report.page, now) and _reached(report.came, current.version):
                current.count_in(elsewhere, now)
            # Passed on, it may be older than the close: only an outcome reopens a page counted as closed.
            if not (underway and report.page in current.closed):
                current.settle(elsewhere, now)
        self.wake()

    def take(self, report: PageReport) -> bool:
        """Take a report for a page of this worker's (see :meth:`report`)."""
        now = time.monotonic()
        if report.leave:
            if self.vanished.pop(report.page, None) is not None:  # its stream closed first
                self._left(report.page)
            self.remove(report.page)
            return True
        left = self.left_streams.get(report.page)
        stale = left is not None and left[0] == report.stream
        if owner_of(report.stream) == self.token and (stale or report.stream not in self.open_streams):
            # Passed on by another worker after the page left its stream (the tab reloaded, or its shared
            # stream closed): it still counts, but listing it would keep a page that is gone, or listed
            # by the worker it listens through now.
            self._settle_only(report)
            return True
        self._note_left(report)
        self.vanished.pop(report.page, None)
        page = self.pages.get(report.page)
        if page is None:
            if len(self.pages) >= self.max_pages:
                return False
            page = Page(report.page, report.path, None, "loaded", "live", "", "", time.time())
            self.pages[report.page] = page
        else:
            self.pages.move_to_end(report.page)
        if page.version is None or report.version is None or not report.version.is_behind(page.version):
            page.version = report.version or page.version
        page.path, page.how, page.state, page.reason = report.path, report.how, report.state, report.reason
        page.trying = report.trying
        page.since = time.time()
        if report.stream:
            page.stream = report.stream
        opened = self.open_streams.get(page.stream)
        moved_in = bool(report.was) and report.was != report.stream
        left_here = moved_in and owner_of(report.was) == self.token
        for current in self.rounds.values():
            # Not counted when the reload arrived, but open then: it was between two documents (it names
            # the stream it left) or its first report here came after the reload, through a stream the
            # reload went out through (passed on by another worker, or sent late). Unless the reload came
            # through the stream it left: that stream's worker counts it (see moved), and when that worker
            # is this one, nobody passes the move on, so it is counted here (a tab that got the reload
            # on connecting, before it said anything, and reloaded onto this worker again).
            came_through_left = moved_in and _reached(report.came, current.version)
            if current.joinable(page.page, now) and (
                left_here
                if came_through_left
                else moved_in or (opened is not None and opened <= current.started)
            ):
                current.count_in(page, now)
            current.settle(page, now)
        self.changed = True
        self.wake()
        return True

    def remove(self, page_id: str) -> None:
        if self.pages.pop(page_id, None) is not None:
            self._left(page_id)

    def _left(self, page_id: str) -> None:
        for current in self.rounds.values():
            current.leave(page_id)
        self.changed = True
        self.wake()

    def forget_stale_reloads(self, now: float) -> None:
        """Drop the pages that said "reloading" RELOADING_SECONDS ago and were not heard of since: the new
        document reported to another worker, or never loaded. A round still waiting for one keeps it
        (``--wait`` names it unanswered). ``now``: wall-clock time, as the pages' ``since``."""
        stale = [
            page.page
            for page in self.pages.values()
            if page.state == "reloading" and now - page.since > RELOADING_SECONDS
        ]
        for page_id in stale:
            del self.pages[page_id]
        if stale:
            self.changed = True

    def stream_opened(self, stream: str) -> None:
        self.stream_opened_at = self.open_streams[stream] = time.monotonic()

    def awaits_reports(self, now: float) -> bool:
        """Whether reports passed on to this worker matter soon: a round still waits for a page, or a
        stream opened lately (its tabs' reports may come through another worker)."""
        if now - self.stream_opened_at < PAGES_REFRESH_SECONDS:
            return True
        return any(r.pending and now - r.started < ROUND_TTL_SECONDS for r in self.rounds.values())

    def stream_closed(self, stream: str) -> None:
        """The stream's connection ended: the pages that listened through it are gone (a tab that was
        hidden or reloaded reports again through its next stream). A round counts them as closed only
        VANISHED_SECONDS later if they said nothing since: a tab that shared the stream reports through
        the next one, and its latest report may be on its way through another worker."""
        self.open_streams.pop(stream, None)
        now = time.monotonic()
        for page in [p for p in self.pages.values() if p.stream == stream]:
            if page.state != "reloading":
                del self.pages[page.page]
                self.vanished[page.page] = now
                self.changed = True
        self.wake()

    def close_vanished(self, now: float) -> None:
        """Count as closed the pages whose stream closed VANISHED_SECONDS ago and that said nothing since, and
        forget the streams pages left RELOADING_SECONDS ago. ``now``: monotonic time, as both records'."""
        while self.vanished:
            page_id, since = next(iter(self.vanished.items()))
            if now - since < VANISHED_SECONDS:
                break
            del self.vanished[page_id]
            self._left(page_id)
        while self.left_streams:
            _, since = next(iter(self.left_streams.values()))
            if now - since < RELOADING_SECONDS:
                break
            self.left_streams.popitem(last=False)

    def reload_arrived(self, reload: Reload) -> None:
        """A new version reached this worker: the pages listening through its open streams are its round.

        A page that is reloading, or whose stream here has closed, is between two documents: it is counted
        once it reports again, by this worker if the reload came through its stream here (:meth:`moved`), else
        by the worker of its next stream (:meth:`take`)."""
        key = str(reload.version)
        if key in self.rounds:
            return
        now = time.monotonic()
        current = Round(reload.version, reload.match, now)
        for page in self.pages.values():
            # The dictionary lookup first: owner_of's pattern runs only for the few pages off an open stream.
            if page.state == "reloading" or (
                page.stream not in self.open_streams and owner_of(page.stream) == self.token
            ):
                continue
            current.count_in(page, now)
        self.rounds[key] = current
        while len(self.rounds) > MAX_ROUNDS:
            self.rounds.popitem(last=False)
        self.wake()

    def dirty_rounds(self) -> list[tuple[str, dict[str, Any]]]:
        """The summaries to write now, marked as written."""
        out = []
        for key, current in self.rounds.items():
            if current.dirty:
                current.dirty = False
                out.append((key, current.summary(self.worker, self.host)))
        return out

    def table(self) -> dict[str, Any]:
        """Pages grouped by path: counts per version, per state and per way of getting there."""
        paths: dict[str, dict[str, dict[str, int]]] = {}
        for page in self.pages.values():
            entry = paths.setdefault(page.path, {"versions": {}, "states": {}, "how": {}})
            version = str(page.version) if page.version else "?"
            state = page.state if page.state != "overlay" else f"overlay: {page.reason}"[:80]
            for group, name in (("versions", version), ("states", state), ("how", page.how)):
                entry[group][name] = entry[group].get(name, 0) + 1
        return {"worker": self.worker, "host": self.host, "pages": len(self.pages), "paths": paths}


# --- writing: one task per app and worker ----------------------------------------------------------------


class PageSink:
    """Where a worker writes its round summaries and page table: Redis, or this process's memory."""

    async def write_round(self, key: str, worker: str, summary: str) -> None:
        raise NotImplementedError

    async def write_table(self, key: str, table: str, ttl: int) -> None:
        raise NotImplementedError

    async def remove_table(self, key: str) -> None:
        raise NotImplementedError

    async def forward(self, batches: dict[str, list[str]]) -> None:
        """Append each list of reports to the inbox its key names."""
        raise NotImplementedError

    async def drain(self, key: str) -> list[Any]:
        """Everything in the inbox ``key``, taken out at once."""
        raise NotImplementedError


class MemorySink(PageSink):
    """The in-process twin, for an app with no Redis: the waiter reads the same dictionaries. Workers of
    their own processes share nothing here: a report for another worker's stream is dropped (several
    workers need Redis for their reloads anyway)."""

    rounds: dict[str, dict[str, str]] = {}
    tables: dict[str, tuple[str, float]] = {}
    dropped_logged = False

    async def forward(self, batches: dict[str, list[str]]) -> None:
        if batches and not MemorySink.dropped_logged:
            MemorySink.dropped_logged = True
            logger.debug("distreload: page reports for another worker's stream are dropped without Redis")

    async def drain(self, key: str) -> list[Any]:
        return []

    async def write_round(self, key: str, worker: str, summary: str) -> None:
        rounds = MemorySink.rounds
        rounds.setdefault(key, {})[worker] = summary
        while len(rounds) > MAX_ROUNDS * 4:  # the oldest first: dictionaries keep their order
            del rounds[next(iter(rounds))]

    async def write_table(self, key: str, table: str, ttl: int) -> None:
        MemorySink.tables[key] = (table, time.monotonic() + ttl)

    async def remove_table(self, key: str) -> None:
        MemorySink.tables.pop(key, None)


class RedisSink(PageSink):
    """Writes through the client ``client_of()`` gives (the worker's own connection), or nothing while it
    has none."""

    def __init__(self, client_of: Callable[[], Any]) -> None:
        self.client_of = client_of
        self.expiring: set[str] = set()

    async def write_round(self, key: str, worker: str, summary: str) -> None:
        client = self.client_of()
        if client is None:
            return
        await client.hset(key, worker, summary)
        if key not in self.expiring:
            self.expiring.add(key)
            await client.expire(key, ROUND_TTL_SECONDS)

    async def write_table(self, key: str, table: str, ttl: int) -> None:
        client = self.client_of()
        if client is not None:
            await client.set(key, table, ex=ttl)

    async def remove_table(self, key: str) -> None:
        client = self.client_of()
        if client is not None:
            await within(client.delete(key), 0.5)

    async def forward(self, batches: dict[str, list[str]]) -> None:
        client = self.client_of()
        if client is None:
            raise ConnectionError("no connection to Redis now")  # kept for the next flush
        if not batches:
            return
        # One round trip; the keys share the namespace's hash tag, so a Redis Cluster takes them together.
        async with client.pipeline(transaction=False) as pipe:
            for key, entries in batches.items():
                pipe.rpush(key, *entries)
                pipe.ltrim(key, -MAX_INBOX, -1)
                pipe.expire(key, INBOX_TTL_SECONDS)
            await pipe.execute()

    async def drain(self, key: str) -> list[Any]:
        client = self.client_of()
        if client is None:
            return []
        # Mostly empty: a read, and no write, tells so.
        if not await client.llen(key):
            return []
        # MULTI: nothing pushed between the read and the delete is lost (LPOP with a count needs 6.2).
        async with client.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            entries, _ = await pipe.execute()
        return list(entries)


class PageFlusher:
    """Writes a registry's changed rounds and page table, at most every FLUSH_SECONDS: one reload costs
    Redis a few writes per worker per second however many pages report. It also passes on the reports for
    other workers' streams, one batch per worker and flush, and drains this worker's inbox: every
    FLUSH_SECONDS while a round waits for pages (or a stream just opened), else every
    PAGES_REFRESH_SECONDS."""

    def __init__(self, registry: PageRegistry, sink: PageSink, namespace: str) -> None:
        self.registry = registry
        self.sink = sink
        self.namespace = namespace
        self._doorbell = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # said once per outage
        self._stopping = False
        self.writes = 0
        self.forwards = 0  # batches of reports passed on (one round trip each)
        self.drains = 0
        self.last_drain = -float("inf")  # monotonic
        self.bad_forwarded = 0
        self.inbox_refused_until = -float("inf")  # monotonic
        registry.wake = self._doorbell.set

    def start(self) -> None:
        self._stopping = False
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="distreload pages")

    async def stop(self) -> None:
        """Stop writing, and take this worker's page table out: its pages are gone with it."""
        task, self._task = self._task, None
        self._stopping = True
        while task is not None and not task.done():
            # Again until it is over: a library call in the task (a Redis write) may swallow one cancel,
            # and a writer that went on would hold up the app's shutdown for ever.
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if task is not None and not task.cancelled():
            with contextlib.suppress(BaseException):
                task.result()
        with contextlib.suppress(Exception):
            await self.sink.remove_table(pages_prefix(self.namespace) + self.registry.worker)

    async def _run(self) -> None:
        table_written = -float("inf")
        self.last_drain = time.monotonic()  # a new token's inbox is empty
        while not self._stopping:
            # A changed table waits for its turn (TABLE_SECONDS): look again soon rather than at a doorbell.
            busy = self.registry.changed or self.registry.outbox or self.registry.vanished
            idle = FLUSH_SECONDS if busy else PAGES_REFRESH_SECONDS
            now = time.monotonic()
            idle = min(idle, max(0.0, self.last_drain + self.drain_period(now) - now))
            with contextlib.suppress(TimeoutError):
                await within(self._doorbell.wait(), idle)
            self._doorbell.clear()
            self.registry.forget_stale_reloads(time.time())
            self.registry.close_vanished(time.monotonic())
            now = time.monotonic()
            since = now - table_written
            write_table = since >= PAGES_REFRESH_SECONDS or (self.registry.changed and since >= TABLE_SECONDS)
            try:
                await self.exchange(now)
            except Exception as exc:  # its own rights (see the README): the reports of its own pages go on
                self._exchange_failed(exc, now)
            try:
                await self.flush(write_table=write_table)
            except Exception as exc:  # Redis away: the next change or refresh writes it all again
                from .redis_clients import is_refusal

                refused = is_refusal(exc)
                if refused or not self._failing:
                    logger.debug("distreload: could not write the page reports (%s)", exc)
                self._failing = True
                self.registry.changed = True
                for current in self.registry.rounds.values():
                    current.dirty = True
                if refused:  # an ACL without the rights (see the README): pages reload all the same
                    await asyncio.sleep(REFUSED_RETRY_SECONDS)
            else:
                self._failing = False
                if write_table:
                    table_written = now
            await asyncio.sleep(FLUSH_SECONDS)

    def _exchange_failed(self, exc: Exception, now: float) -> None:
        from .redis_clients import is_refusal

        if is_refusal(exc):
            self.inbox_refused_until = now + REFUSED_RETRY_SECONDS
            logger.debug("distreload: Redis refused the reports passed between workers (%s)", exc)

    def drain_period(self, now: float) -> float:
        return FLUSH_SECONDS if self.registry.awaits_reports(now) else PAGES_REFRESH_SECONDS

    async def exchange(self, now: float) -> None:
        """Pass on the reports for other workers' streams; take this worker's, when their turn came."""
        registry = self.registry
        batches = registry.take_outbox()
        if now < self.inbox_refused_until:  # an ACL without the inbox's rights: nothing goes through
            return
        if batches:
            try:
                await self.sink.forward(
                    {
                        inbox_key(self.namespace, owner): [text for _, text in b]
                        for owner, b in batches.items()
                    }
                )
            except BaseException:  # not sent: sent with the next flush (cancelled: lost with the worker)
                registry.put_back(batches)
                raise
            self.forwards += 1
        if now < self.last_drain + self.drain_period(now):
            return
        self.last_drain = now
        self.drains += 1
        entries = await self.sink.drain(inbox_key(self.namespace, registry.token))
        bad = registry.take_forwarded(entries)
        if bad:
            self.bad_forwarded += bad
            logger.debug("distreload: skipped %d unreadable reports passed on by other workers", bad)

    async def flush(self, *, write_table: bool = True) -> None:
        registry = self.registry
        for version, summary in registry.dirty_rounds():
            self.writes += 1
            await self.sink.write_round(
                round_key(self.namespace, version),
                registry.worker,
                json.dumps(summary, separators=(",", ":")),
            )
        if write_table:
            registry.changed = False
            self.writes += 1
            await self.sink.write_table(
                pages_prefix(self.namespace) + registry.worker,
                json.dumps(registry.table(), separators=(",", ":")),
                int(PAGES_REFRESH_SECONDS * 3),
            )

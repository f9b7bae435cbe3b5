"""The page registry: reports validated, pages counted per reload, summaries added up, writes bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from distreload import pages
from distreload.delivery import WaitSummary, add_up
from distreload.pages import (
    MAX_REPORT_BYTES,
    RELOADING_SECONDS,
    VANISHED_SECONDS,
    BadReport,
    MemorySink,
    PageFlusher,
    PageRegistry,
    PageReport,
    PageSink,
    RedisSink,
    owner_of,
    parse_report,
)
from distreload.protocol import ClusterVersion, Reload, inbox_key, round_key

EPOCH = "a" * 16
V1, V2 = ClusterVersion(EPOCH, 1), ClusterVersion(EPOCH, 2)


def report(page: str, path: str = "/", version: ClusterVersion | None = V1, **fields: Any) -> PageReport:
    stream = fields.pop("stream", "00112233")  # no worker's token: a report stays where it lands
    return PageReport(page=page, path=path, version=version, stream=stream, **fields)


def registry_with(*pages: PageReport) -> PageRegistry:
    registry = PageRegistry("host:1", "host")
    for page in pages:
        assert registry.report(page)
    return registry


# --- reports --------------------------------------------------------------------------------------------


def test_a_report_is_read_as_the_client_sends_it() -> None:
    body = json.dumps(
        {
            "page": "0123456789abcdef",
            "path": "/screens/lobby",
            "version": f"{EPOCH}-3",
            "how": "morphed",
            "state": "overlay",
            "reason": "the server answered 500\x00",
            "stream": "deadbeef00112233",
            "trying": f"{EPOCH}-4",
        }
    ).encode()
    read = parse_report(body)
    assert read == PageReport(
        "0123456789abcdef",
        "/screens/lobby",
        ClusterVersion(EPOCH, 3),
        "morphed",
        "overlay",
        "the server answered 500 ",
        "deadbeef00112233",
        trying=ClusterVersion(EPOCH, 4),
    )
    assert parse_report(read.to_json()) == read
    assert parse_report(b'{"page": "0123456789abcdef", "leave": true}').leave


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"page": "short", "path": "/"}',
        b'{"page": "0123456789abcdef", "path": "//elsewhere.example/"}',
        b'{"page": "0123456789abcdef", "path": "/", "state": "sleeping"}',
        b'{"page": "0123456789abcdef", "path": "/", "how": "magic"}',
        b'{"page": "0123456789abcdef", "path": "/", "version": "tomorrow"}',
        b'{"page": "0123456789abcdef", "path": "/", "reason": 5}',
        b'{"page": "0123456789abcdef", "path": "/", "stream": "not hex!"}',
        b'{"page": "0123456789abcdef", "path": "/", "state": "overlay", "trying": "later"}',
        b"[" * 100_000,
        b'{"page": "0123456789abcdef", "path": "/", "reason": "' + b"x" * MAX_REPORT_BYTES + b'"}',
    ],
)
def test_anything_the_client_would_not_send_is_refused(body: bytes) -> None:
    with pytest.raises(BadReport):
        parse_report(body)


def test_a_report_names_the_reload_that_came_through_the_stream_it_left() -> None:
    moved = report("0123456789abcdef", "/a", V2, stream="deadbeef00112233", was="cafebabe00112233", came=V2)
    assert parse_report(moved.to_json()) == moved
    without_was = parse_report(
        b'{"page": "0123456789abcdef", "path": "/", "came": "' + f"{EPOCH}-2".encode() + b'"}'
    )
    assert without_was.came is None  # it names no stream it left: nothing came through one
    with pytest.raises(BadReport, match="came"):
        parse_report(b'{"page": "0123456789abcdef", "path": "/", "was": "cafebabe00112233", "came": "x"}')


def test_a_full_registry_refuses_new_pages_and_keeps_counting_the_ones_it_has() -> None:
    registry = PageRegistry("host:1", "host", max_pages=2)
    assert registry.report(report("page-aaaa"))
    assert registry.report(report("page-bbbb"))
    assert not registry.report(report("flood-0001"))
    assert set(registry.pages) == {"page-aaaa", "page-bbbb"}
    assert registry.report(report("page-aaaa", version=V2))  # a page already counted still reports
    assert registry.pages["page-aaaa"].version == V2


# --- rounds ---------------------------------------------------------------------------------------------


def test_each_page_open_at_the_reload_applies_fails_pauses_or_leaves() -> None:
    registry = registry_with(
        report("applies-1", "/a"),
        report("fails-001", "/b"),
        report("paused-01", "/c", state="paused"),
        report("closes-01", "/d"),
        report("other-001", "/elsewhere"),
    )
    registry.reload_arrived(Reload(V2, match="/?"))
    registry.report(report("late-0001", "/a"))  # opened after the reload: not waited for
    assert "late-0001" not in registry.rounds[str(V2)].pending

    registry.report(report("applies-1", "/a", V2, how="reloaded"))
    registry.report(report("fails-001", "/b", V1, state="overlay", reason="the server answered 500"))
    registry.report(PageReport("closes-01", leave=True))
    summary = add_up(str(V2), [json.dumps(s) for _, s in registry.dirty_rounds()])

    assert (summary.applied, summary.expected, summary.excluded) == (1, 2, 1)
    assert summary.failed == [{"path": "/b", "reason": "the server answered 500", "worker": "host:1"}]
    assert [p["path"] for p in summary.paused] == ["/c"]
    assert [p["path"] for p in summary.closed] == ["/d"]
    assert summary.outcome == "failed" and summary.done

    # The overlay went away and the page applied after all: it counts as applied.
    registry.report(report("fails-001", "/b", V2, how="reloaded"))
    summary = add_up(str(V2), [json.dumps(s) for _, s in registry.dirty_rounds()])
    assert (summary.applied, summary.failed_count, summary.outcome) == (2, 0, "applied")


def test_an_overlay_fails_the_reloads_it_was_shown_for_not_a_later_one() -> None:
    v3 = ClusterVersion(EPOCH, 3)
    registry = registry_with(report("failing-1", "/a"), report("older-01", "/b"))
    registry.reload_arrived(Reload(V2))
    registry.report(
        report("failing-1", "/a", V1, state="overlay", reason="the server answered 500", trying=V2)
    )
    registry.reload_arrived(Reload(v3))
    # Its report for V2 comes again after V3 arrived (passed on late): V3 is still to be tried.
    registry.report(
        report("failing-1", "/a", V1, state="overlay", reason="the server answered 500", trying=V2)
    )
    # A client that does not say which reload its overlay is for fails every round it is pending in.
    registry.report(report("older-01", "/b", V1, state="overlay", reason="no answer from the server"))
    rounds = {key: add_up(key, [json.dumps(s)]) for key, s in registry.dirty_rounds()}
    assert (rounds[str(V2)].failed_count, rounds[str(V2)].pending_count) == (2, 0)
    assert rounds[str(v3)].failed == [
        {"path": "/b", "reason": "no answer from the server", "worker": "host:1"}
    ]
    assert [page["path"] for page in rounds[str(v3)].pending] == ["/a"]
    # Its check for V3 fails too: now it fails V3, with the reason.
    registry.report(
        report("failing-1", "/a", V1, state="overlay", reason="the server answered 502", trying=v3)
    )
    summary = add_up(str(v3), [json.dumps(registry.rounds[str(v3)].summary("host:1", "host"))])
    assert (summary.failed_count, summary.pending_count, summary.outcome) == (2, 0, "failed")
    assert {"path": "/a", "reason": "the server answered 502", "worker": "host:1"} in summary.failed
    # Its failure for V4 reached this worker (passed on) before V4 itself did: failed from the start.
    v4 = ClusterVersion(EPOCH, 4)
    registry.report(
        report("failing-1", "/a", V1, state="overlay", reason="the server answered 503", trying=v4)
    )
    registry.reload_arrived(Reload(v4))
    assert registry.rounds[str(v4)].failed == {"failing-1": ("/a", "the server answered 503")}


def test_a_page_left_out_by_a_match_counts_as_left_out_only_for_that_reload() -> None:
    v3 = ClusterVersion(EPOCH, 3)
    registry = registry_with(report("page-0001", "/bar"), report("page-0002", "/lobby"))
    registry.reload_arrived(Reload(V2))
    # The client says it was left out (its match check disagreed with the worker's): not awaited.
    registry.report(report("page-0001", "/bar", V2, state="excluded"))
    registry.report(report("page-0002", "/lobby", V2, how="reloaded"))
    summary = add_up(str(V2), [json.dumps(s) for _, s in registry.dirty_rounds()])
    assert (summary.expected, summary.applied, summary.excluded, summary.outcome) == (1, 1, 1, "applied")
    # The next reload matches it; a report of the earlier exclusion (passed on late) changes nothing.
    registry.reload_arrived(Reload(v3))
    registry.report(report("page-0001", "/bar", V2, state="excluded"))
    current = registry.rounds[str(v3)]
    assert (current.expected, current.excluded, "page-0001" in current.pending) == (2, 0, True)
    registry.report(report("page-0001", "/bar", v3, how="reloaded"))
    assert "page-0001" not in current.pending and len(current.applied_ms) == 1


def test_a_page_waiting_out_a_spread_is_pending_and_says_so() -> None:
    registry = registry_with(report("spread-01", "/a"))
    registry.reload_arrived(Reload(V2, spread=30))
    registry.report(report("spread-01", "/a", V1, state="waiting"))
    [(_, raw)] = registry.dirty_rounds()
    summary = add_up(str(V2), [json.dumps(raw)])
    assert summary.pending == [{"path": "/a", "state": "waiting", "worker": "host:1"}]
    assert not summary.done
    assert "waiting out the spread" in "\n".join(summary.describe())


def test_the_pages_of_a_closed_stream_leave_unless_they_reload() -> None:
    registry = registry_with(
        report("gone-0001", "/a", stream="aaaaaaaa"),
        report("reloads-1", "/b", stream="aaaaaaaa", state="reloading"),
        report("stays-001", "/c", stream="bbbbbbbb"),
    )
    registry.reload_arrived(Reload(V2))
    registry.stream_closed("aaaaaaaa")
    assert set(registry.pages) == {"reloads-1", "stays-001"}
    current = registry.rounds[str(V2)]
    registry.close_vanished(time.monotonic())
    assert current.closed == {}  # its last report may still be on its way through another worker
    registry.close_vanished(time.monotonic() + VANISHED_SECONDS)
    assert list(current.closed) == ["gone-0001"]
    # The tab comes back through another stream (another tab now leads): open after all.
    registry.report(report("gone-0001", "/a", V2, stream="cccccccc"))
    assert current.closed == {} and len(current.applied_ms) == 1


def test_a_page_that_went_to_reload_and_never_came_back_is_forgotten_but_still_awaited() -> None:
    registry = registry_with(report("reloads-1", "/a"), report("live-0001", "/b"))
    registry.reload_arrived(Reload(V2))
    registry.report(report("reloads-1", "/a", V1, state="reloading"))
    registry.forget_stale_reloads(time.time() + RELOADING_SECONDS / 2)
    assert set(registry.pages) == {"reloads-1", "live-0001"}
    registry.forget_stale_reloads(time.time() + RELOADING_SECONDS + 1)
    assert set(registry.pages) == {"live-0001"}
    assert "reloads-1" in registry.rounds[str(V2)].pending


# --- writing ----------------------------------------------------------------------------------------------


class CountingSink(PageSink):
    def __init__(self) -> None:
        self.rounds: list[tuple[str, str]] = []
        self.tables = 0

    async def write_round(self, key: str, worker: str, summary: str) -> None:
        self.rounds.append((key, summary))

    async def write_table(self, key: str, table: str, ttl: int) -> None:
        self.tables += 1

    async def remove_table(self, key: str) -> None:
        self.tables = 0


def test_a_flush_writes_one_summary_per_changed_round_however_many_pages_reported() -> None:
    registry = registry_with(*(report(f"page-{i:05}", "/a") for i in range(2000)))
    sink = CountingSink()
    flusher = PageFlusher(registry, sink, "ns")
    asyncio.run(flusher.flush())
    registry.reload_arrived(Reload(V2))
    for i in range(2000):
        registry.report(report(f"page-{i:05}", "/a", V2))
    asyncio.run(flusher.flush())
    asyncio.run(flusher.flush(write_table=False))  # the table's turn has not come: the round only
    assert len(sink.rounds) == 1 and sink.tables == 2
    key, raw = sink.rounds[0]
    assert key == round_key("ns", str(V2))
    assert json.loads(raw)["applied"] == 2000
    assert len(raw) < 2000  # the times travel as a few dozen (time, count) pairs


def test_the_memory_sink_keeps_only_the_latest_rounds() -> None:
    sink = MemorySink()
    for number in range(100):
        asyncio.run(sink.write_round(f"memory-test-{number}", "w", "{}"))
    assert len(MemorySink.rounds) <= 16 and "memory-test-99" in MemorySink.rounds


class SwallowingSink(MemorySink):
    """A sink whose write swallows the first cancel it meets, as a library call can."""

    def __init__(self) -> None:
        self.swallowed = 0

    async def write_round(self, key: str, worker: str, summary: str) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1


def test_stopping_the_writer_ends_even_when_a_write_swallows_the_cancel() -> None:
    async def run() -> None:
        registry = registry_with(report("page-1", "/a"))
        sink = SwallowingSink()
        flusher = PageFlusher(registry, sink, "ns")
        flusher.start()
        registry.reload_arrived(Reload(V2))  # rings the writer's doorbell: it writes the new round
        for _ in range(200):
            await asyncio.sleep(0.01)
            if flusher.writes:
                break
        assert flusher.writes, "the writer never started writing"
        await asyncio.sleep(0.05)  # inside the write now
        stopping = asyncio.get_running_loop().create_task(flusher.stop())
        done, _ = await asyncio.wait({stopping}, timeout=10)  # waits, never cancels
        assert done == {stopping}, "stop() is still waiting on a writer that swallowed its cancel"
        assert sink.swallowed == 1

    asyncio.run(run())


# --- workers sharing one port: reports passed on to the stream's worker -----------------------------------


class InboxSink(CountingSink):
    """The inboxes of several workers, in memory, as Redis keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.inboxes: dict[str, list[str]] = {}

    async def forward(self, batches: dict[str, list[str]]) -> None:
        for key, entries in batches.items():
            self.inboxes.setdefault(key, []).extend(entries)

    async def drain(self, key: str) -> list[str]:
        return self.inboxes.pop(key, [])


def open_stream(registry: PageRegistry) -> str:
    stream = registry.new_stream_id()
    registry.stream_opened(stream)
    return stream


class Port:
    """Two workers behind one port: any report may reach either one."""

    def __init__(self) -> None:
        self.sink = InboxSink()
        self.workers = [PageRegistry("host:1", "host"), PageRegistry("host:2", "host")]
        self.flushers = [PageFlusher(worker, self.sink, "ns") for worker in self.workers]
        self.streams = [open_stream(worker) for worker in self.workers]

    def exchange(self) -> None:
        """Every worker passes on what it holds for the others, then every worker drains its inbox."""

        async def run() -> None:
            for flusher in self.flushers:
                flusher.last_drain = -float("inf")
                await flusher.exchange(time.monotonic())
            for flusher in self.flushers:
                flusher.last_drain = -float("inf")
                await flusher.exchange(time.monotonic())

        asyncio.run(run())

    def reload(self, reload: Reload) -> WaitSummary:
        for worker in self.workers:
            worker.reload_arrived(reload)
        return self.summary(str(reload.version))

    def summary(self, version: str) -> WaitSummary:
        raws = [json.dumps(w.rounds[version].summary(w.worker, w.host)) for w in self.workers]
        return add_up(version, raws)


def test_a_stream_id_names_its_worker_and_passes_as_a_stream_id() -> None:
    registry = PageRegistry("host:1", "host")
    stream = registry.new_stream_id()
    assert owner_of(stream) == registry.token and stream != registry.new_stream_id()
    assert registry.token != PageRegistry("host:1", "host").token
    assert parse_report(report("page-0001", stream=stream).to_json()).stream == stream
    assert owner_of("deadbeef00112233") is None  # an older worker's id: its reports stay where they land


def test_a_forked_worker_has_a_token_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = PageRegistry("host:1", "host")  # built before the fork, as with gunicorn --preload
    before = registry.token
    monkeypatch.setattr(pages.os, "getpid", lambda: -1)
    assert registry.token != before and owner_of(registry.new_stream_id()) == registry.token


def test_a_report_for_another_workers_stream_is_listed_by_that_worker_only() -> None:
    port = Port()
    first, second = port.workers
    assert first.report(report("page-0001", "/a", stream=port.streams[1]))
    assert len(first) == 0 and first.outbox
    port.exchange()
    assert not first.outbox and len(first) == 0
    assert second.pages["page-0001"].path == "/a" and second.pages["page-0001"].stream == port.streams[1]


def test_a_page_whose_reports_alternate_between_workers_is_counted_once() -> None:
    port = Port()
    for number in range(6):
        port.workers[number % 2].report(report("page-0001", f"/a{number}", stream=port.streams[0]))
        port.exchange()
    assert [len(worker) for worker in port.workers] == [1, 0]
    assert port.workers[0].pages["page-0001"].path == "/a5"  # the latest report won
    port.workers[1].report(report("page-0001", "/a5", V2, how="morphed", stream=port.streams[0]))
    summary = port.reload(Reload(V2))
    assert (summary.expected, summary.applied) == (1, 0)
    port.exchange()
    summary = port.summary(str(V2))
    assert (summary.expected, summary.applied, summary.outcome) == (1, 1, "applied")


def test_a_reloaded_page_on_another_workers_stream_settles_the_round_where_it_was() -> None:
    port = Port()
    first, second = port.workers
    first.report(report("page-0001", "/a", stream=port.streams[0]))
    second.report(report("page-0002", "/b", stream=port.streams[0]))
    port.exchange()
    assert port.reload(Reload(V2)).expected == 2
    # Both reload: their new documents get a stream of the second worker and name the first's.
    for page, path in (("page-0001", "/a"), ("page-0002", "/b")):
        first.report(report(page, path, V1, state="reloading", stream=port.streams[0]))
    first.stream_closed(port.streams[0])
    assert len(first) == 2  # reloading pages wait for their new document
    moved = {"stream": port.streams[1], "was": port.streams[0], "came": V2}  # V2 came through the first's
    first.report(report("page-0001", "/a", V2, how="reloaded", **moved))
    second.report(report("page-0002", "/b", V2, how="reloaded", **moved))
    port.exchange()
    summary = port.summary(str(V2))
    assert (summary.expected, summary.applied, summary.outcome) == (2, 2, "applied")
    assert len(first) == 0 and set(second.pages) == {"page-0001", "page-0002"}  # listed once, by the new one
    # The next reload is the second worker's round alone.
    v3 = ClusterVersion(EPOCH, 3)
    assert port.reload(Reload(v3)).expected == 2
    assert (first.rounds[str(v3)].expected, second.rounds[str(v3)].expected) == (0, 2)


def test_a_page_closed_after_changing_stream_is_closed_in_the_round_it_was_open_for() -> None:
    port = Port()
    first, second = port.workers
    first.report(report("page-0001", "/a", stream=port.streams[0]))
    port.reload(Reload(V2))
    # Its stream's holder left: it listens through the second worker's now, and closes before applying.
    second.report(report("page-0001", "/a", V1, stream=port.streams[1], was=port.streams[0], came=V2))
    second.report(PageReport("page-0001", leave=True, stream=port.streams[1], was=port.streams[0], came=V2))
    port.exchange()
    summary = port.summary(str(V2))
    assert [p["path"] for p in summary.closed] == ["/a"] and summary.done
    assert len(first) == len(second) == 0


def test_a_stream_closed_before_its_page_named_it_reopens_when_the_page_does() -> None:
    port = Port()
    first, second = port.workers
    first.report(report("page-0001", "/a", stream=port.streams[0]))
    port.reload(Reload(V2))
    first.stream_closed(port.streams[0])
    first.close_vanished(time.monotonic() + VANISHED_SECONDS)  # it said nothing for that long
    assert port.summary(str(V2)).closed_count == 1
    second.report(report("page-0001", "/a", V2, stream=port.streams[1], was=port.streams[0], came=V2))
    port.exchange()
    summary = port.summary(str(V2))
    assert (summary.closed_count, summary.applied, summary.expected) == (0, 1, 1)


def test_a_report_passed_on_after_its_stream_closed_counts_but_lists_no_page() -> None:
    port = Port()
    first, second = port.workers
    first.report(report("page-0001", "/a", stream=port.streams[0]))
    port.reload(Reload(V2))
    # Its "reloading" lands on the second worker; its new document's report on the first, directly.
    second.report(report("page-0001", "/a", V1, state="reloading", stream=port.streams[0]))
    first.stream_closed(port.streams[0])
    newer = open_stream(second)
    first.report(report("page-0001", "/a", V2, how="reloaded", stream=newer, was=port.streams[0], came=V2))
    port.exchange()  # the late "reloading" reaches the first worker after the page moved
    assert len(first) == 0 and second.pages["page-0001"].stream == newer
    summary = port.summary(str(V2))
    assert (summary.applied, summary.expected) == (1, 1)


def test_a_report_passed_on_late_through_a_stream_the_page_left_lists_it_nowhere_again() -> None:
    port = Port()
    first, second = port.workers
    first.report(report("page-0001", "/a", stream=port.streams[0]))
    port.reload(Reload(V2))
    # Its "reloading" lands on the second worker; its new document's report on the first, and the old
    # stream's close has not reached the first worker yet.
    second.report(report("page-0001", "/a", V1, state="reloading", stream=port.streams[0]))
    first.report(
        report("page-0001", "/a", V2, how="reloaded", stream=port.streams[1], was=port.streams[0], came=V2)
    )
    port.exchange()
    first.stream_closed(port.streams[0])
    assert len(first) == 0 and second.pages["page-0001"].state == "live"
    assert port.summary(str(V2)).applied == 1
    # Back to the first worker; a report through the second's stream, still open, comes after that.
    newer = open_stream(first)
    first.report(report("page-0001", "/a", V2, stream=newer, was=port.streams[1]))
    port.exchange()
    first.report(report("page-0001", "/a", V2, state="reloading", stream=port.streams[1]))
    port.exchange()
    assert len(second) == 0 and first.pages["page-0001"].stream == newer


def test_a_page_whose_stream_closed_is_not_closed_while_its_report_is_on_its_way() -> None:
    port = Port()
    first, second = port.workers
    first.report(report("page-0001", "/a", stream=port.streams[0]))
    port.reload(Reload(V2))
    # It shared a stream whose holder reloaded; its own "reloading" went through the other worker.
    second.report(report("page-0001", "/a", V1, state="reloading", stream=port.streams[0]))
    first.stream_closed(port.streams[0])
    port.exchange()
    first.close_vanished(time.monotonic() + VANISHED_SECONDS)
    summary = port.summary(str(V2))
    assert (summary.closed_count, summary.pending_count) == (0, 1)  # still awaited, not closed


def test_a_page_first_heard_of_after_the_reload_that_went_out_through_its_stream_is_counted() -> None:
    port = Port()
    first, second = port.workers
    # Its document listens through the second worker's stream; its first report, which reached the first
    # worker, is still on its way when the reload arrives.
    first.report(report("page-0001", "/a", V1, stream=port.streams[1]))
    assert port.reload(Reload(V2)).expected == 0
    port.exchange()
    summary = port.summary(str(V2))
    assert (summary.expected, summary.applied, summary.pending_count) == (1, 0, 1)
    # A tab opened after the reload (its stream is newer) is not waited for.
    second.report(report("page-0002", "/b", V2, stream=open_stream(second)))
    second.report(report("page-0001", "/a", V2, how="reloaded", stream=port.streams[1]))
    summary = port.summary(str(V2))
    assert (summary.expected, summary.applied, summary.outcome) == (1, 1, "applied")


@pytest.mark.parametrize("heard_first_by", ["old", "new"])
def test_a_page_between_two_streams_when_a_reload_arrives_is_counted_once_by_the_one_it_listens_to(
    heard_first_by: str,
) -> None:
    """The page reloaded (its stream on the first worker closed) and its new document listens through the
    second worker's; the next reload comes before every worker heard of the move."""
    port = Port()
    first, second = port.workers
    first.report(report("page-0001", "/a", stream=port.streams[0]))
    first.report(report("page-0001", "/a", V1, state="reloading", stream=port.streams[0]))
    first.stream_closed(port.streams[0])
    moved = report("page-0001", "/a", V1, how="reloaded", stream=port.streams[1], was=port.streams[0])
    port.workers[0 if heard_first_by == "old" else 1].report(moved)
    assert port.reload(Reload(V2)).expected == (0 if heard_first_by == "old" else 1)
    port.exchange()
    summary = port.summary(str(V2))
    assert (summary.expected, summary.pending_count) == (1, 1)
    assert len(first) == 0 and set(second.pages) == {"page-0001"}
    first.report(report("page-0001", "/a", V2, how="reloaded", stream=port.streams[1], was=port.streams[1]))
    port.exchange()
    summary = port.summary(str(V2))
    assert (summary.expected, summary.applied, summary.outcome) == (1, 1, "applied")


@pytest.mark.parametrize("came_through_old_stream", [True, False])
def test_a_page_reloading_when_a_reload_arrives_is_counted_once_it_reports_again(
    came_through_old_stream: bool,
) -> None:
    """Mid-reload (for the reload before) when V2 arrives: if V2's event still reached it through its old
    stream, that worker counts it; if not, it gets V2 through its next stream and that worker does."""
    port = Port()
    first, second = port.workers
    old = open_stream(first)
    first.report(report("page-0001", "/a", V1, state="reloading", stream=old))
    assert port.reload(Reload(V2)).expected == 0
    first.stream_closed(old)
    newer = open_stream(second)
    came = {"came": V2} if came_through_old_stream else {}
    first.report(report("page-0001", "/a", V2, how="reloaded", stream=newer, was=old, **came))
    port.exchange()
    summary = port.summary(str(V2))
    assert (summary.expected, summary.applied, summary.outcome) == (1, 1, "applied")
    counted_by = [worker.rounds[str(V2)].expected for worker in port.workers]
    assert counted_by == ([1, 0] if came_through_old_stream else [0, 1])
    assert len(first) == 0 and set(second.pages) == {"page-0001"}


@pytest.mark.parametrize("reports_reach", ["its worker", "the other worker"])
def test_a_page_that_caught_up_on_connect_and_reloaded_on_the_same_worker_is_counted(
    reports_reach: str,
) -> None:
    """A tab resumed after a paused reload: its new document connects after V2 reached the worker, gets V2
    on connect, and reloads before it reported anything else; its next document's stream is on the same
    worker, so no other worker is told of the move and this one counts it."""
    port = Port()
    first, _ = port.workers
    landing = port.workers[0 if reports_reach == "its worker" else 1]
    assert port.reload(Reload(V2)).expected == 0
    caught_up = open_stream(first)
    landing.report(report("page-0001", "/a", V1, how="reloaded", state="reloading", stream=caught_up))
    port.exchange()
    first.stream_closed(caught_up)
    newer = open_stream(first)
    landing.report(report("page-0001", "/a", V2, how="reloaded", stream=newer, was=caught_up, came=V2))
    port.exchange()
    summary = port.summary(str(V2))
    assert (summary.expected, summary.applied, summary.outcome) == (1, 1, "applied")
    assert [worker.rounds[str(V2)].expected for worker in port.workers] == [1, 0]
    assert set(first.pages) == {"page-0001"} and first.pages["page-0001"].stream == newer


class FailingOnceSink(InboxSink):
    """Redis away for one flush: passing reports on fails once."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def forward(self, batches: dict[str, list[str]]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("no connection to Redis now")
        await super().forward(batches)


def test_reports_that_could_not_be_passed_on_go_with_the_next_flush_behind_nothing_newer() -> None:
    port = Port()
    port.sink = FailingOnceSink()
    port.flushers = [PageFlusher(worker, port.sink, "ns") for worker in port.workers]
    first, second = port.workers
    first.report(report("page-0001", "/old", stream=port.streams[1]))
    first.report(report("page-0002", "/b", stream=port.streams[1]))
    with pytest.raises(ConnectionError):
        asyncio.run(port.flushers[0].exchange(time.monotonic()))
    first.report(report("page-0001", "/new", stream=port.streams[1]))  # newer than the one put back
    assert first.forwarded == 0 and len(first.outbox[second.token]) == 2
    port.exchange()
    assert {page: listed.path for page, listed in second.pages.items()} == {
        "page-0001": "/new",
        "page-0002": "/b",
    }
    assert not first.outbox and first.forwarded == 2


def test_reports_passed_on_are_bounded_newest_first_and_garbage_is_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pages, "MAX_OUTBOX", 4)
    monkeypatch.setattr(pages, "MAX_FORWARDED", 2)
    port = Port()
    first, second = port.workers
    for number in range(6):
        first.report(report(f"page-{number:04}", "/a", stream=port.streams[1]))
    first.report(report("page-0000", "/latest", stream=port.streams[1]))  # replaces its unsent report
    assert first.forwards_dropped == 2
    assert [len(batch) for batch in first.take_outbox().values()] == [2]  # the rest go with the next flush
    first.report(report("page-0000", "/latest", stream=port.streams[1]))
    inbox = inbox_key("ns", second.token)
    port.sink.inboxes[inbox] = [
        "not json",
        "[" * 10_000,
        '{"page": "x"}',
        json.dumps({"page": "page-9999", "path": "//elsewhere/"}),
        report("page-8888", "/ok").to_json(),
    ]
    caplog.set_level(logging.DEBUG, logger="distreload.pages")
    port.exchange()
    assert set(second.pages) == {"page-0000", "page-0003", "page-8888"}  # -0001 and -0002 were taken above
    assert second.pages["page-0000"].path == "/latest"
    assert port.flushers[1].bad_forwarded == 4
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1


def test_an_idle_worker_drains_its_inbox_seldom_and_a_waiting_one_often() -> None:
    registry = PageRegistry("host:1", "host")
    flusher = PageFlusher(registry, InboxSink(), "ns")
    now = time.monotonic()
    later = now + pages.PAGES_REFRESH_SECONDS + 1
    assert flusher.drain_period(now) == pages.PAGES_REFRESH_SECONDS
    registry.stream_opened(registry.new_stream_id())  # its tabs' first reports may land elsewhere
    assert flusher.drain_period(now) == pages.FLUSH_SECONDS
    assert flusher.drain_period(later) == pages.PAGES_REFRESH_SECONDS

    async def drains(start: float) -> int:
        """Drains while the writer wakes every FLUSH_SECONDS for PAGES_REFRESH_SECONDS."""
        flusher.drains = 0
        flusher.last_drain = start
        for step in range(1, int(pages.PAGES_REFRESH_SECONDS / pages.FLUSH_SECONDS)):
            await flusher.exchange(start + step * pages.FLUSH_SECONDS)
        return flusher.drains

    assert asyncio.run(drains(later)) == 0  # idle: once in PAGES_REFRESH_SECONDS at most
    registry.report(report("page-0001", stream=open_stream(registry)))
    registry.reload_arrived(Reload(V2))
    assert flusher.drain_period(later) == pages.FLUSH_SECONDS  # a round waits for a page
    assert asyncio.run(drains(later)) == 9
    assert flusher.drain_period(now + pages.ROUND_TTL_SECONDS + 1) == pages.PAGES_REFRESH_SECONDS
    registry.report(report("page-0001", version=V2))
    assert flusher.drain_period(later) == pages.PAGES_REFRESH_SECONDS


def test_without_redis_reports_for_another_workers_stream_are_dropped() -> None:
    registry = PageRegistry("host:1", "host")
    registry.report(report("page-0001", stream=PageRegistry("host:2", "host").new_stream_id()))
    flusher = PageFlusher(registry, MemorySink(), "ns")
    asyncio.run(flusher.exchange(time.monotonic()))
    assert not registry.outbox and len(registry) == 0


def test_redis_keeps_an_inbox_bounded_expiring_and_drains_it_whole(
    shared_redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis.asyncio

    monkeypatch.setattr(pages, "MAX_INBOX", 5)

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(shared_redis_url)
        try:
            sink = RedisSink(lambda: client)
            key = inbox_key(namespace, "0badcafe")
            await sink.forward({key: [f"entry-{n}" for n in range(4)]})
            await sink.forward({key: [f"entry-{n}" for n in range(4, 8)]})
            assert 0 < await client.ttl(key) <= pages.INBOX_TTL_SECONDS
            assert await sink.drain(key) == [f"entry-{n}".encode() for n in range(3, 8)]
            assert await sink.drain(key) == [] and not await client.exists(key)
        finally:
            await client.aclose()

    asyncio.run(run())


class NoInboxRightsSink(InboxSink):
    """Redis under an ACL that grants the page reports' keys but not the inboxes'."""

    def __init__(self) -> None:
        super().__init__()
        self.drains = 0

    async def drain(self, key: str) -> list[str]:
        from redis.exceptions import NoPermissionError

        self.drains += 1
        raise NoPermissionError("this user has no permissions to access the 'inbox' key")


def test_a_worker_without_the_inbox_rights_still_writes_its_own_pages_reports() -> None:
    async def run() -> None:
        registry = PageRegistry("host:1", "host")
        registry.report(report("page-0001", stream=open_stream(registry)))  # the inbox is read soon
        sink = NoInboxRightsSink()
        flusher = PageFlusher(registry, sink, "ns")
        flusher.start()
        registry.reload_arrived(Reload(V2))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if sink.drains:
                break
        registry.report(report("page-0001", version=V2))  # after the refusal
        for _ in range(500):
            await asyncio.sleep(0.01)
            if any(json.loads(raw)["applied"] for _, raw in sink.rounds):
                break
        await flusher.stop()
        assert sink.drains == 1, "refused, the inbox is not read again before REFUSED_RETRY_SECONDS"
        assert any(json.loads(raw)["applied"] == 1 for _, raw in sink.rounds)

    asyncio.run(run())

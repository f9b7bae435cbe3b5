"""The page registry: reports validated, pages counted per reload, summaries added up, writes bounded."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from distreload.pages import (
    MAX_REPORT_BYTES,
    RELOADING_SECONDS,
    BadReport,
    MemorySink,
    PageFlusher,
    PageRegistry,
    PageReport,
    PageSink,
    WaitSummary,
    add_up,
    group_by_path,
    parse_report,
    round_key,
)
from distreload.protocol import ClusterVersion, Reload

EPOCH = "a" * 16
V1, V2 = ClusterVersion(EPOCH, 1), ClusterVersion(EPOCH, 2)


def report(page: str, path: str = "/", version: ClusterVersion | None = V1, **fields: str) -> PageReport:
    stream = fields.pop("stream", "00112233")
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
    )
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
        b"[" * 100_000,
        b'{"page": "0123456789abcdef", "path": "/", "reason": "' + b"x" * MAX_REPORT_BYTES + b'"}',
    ],
)
def test_anything_the_client_would_not_send_is_refused(body: bytes) -> None:
    with pytest.raises(BadReport):
        parse_report(body)


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


def test_the_page_table_groups_pages_by_path() -> None:
    registry = registry_with(
        report("page-aaaa", "/a", V1),
        report("page-bbbb", "/a", V2, how="reloaded"),
        report("page-cccc", "/b", V1, state="overlay", reason="no answer from the server"),
    )
    other = PageRegistry("other:2", "other")
    other.report(report("page-dddd", "/a", V2, state="paused"))
    merged = group_by_path([registry.table(), other.table(), {"paths": {"/x": "garbage"}}])
    assert merged == {
        "/a": {
            "versions": {str(V1): 1, str(V2): 2},
            "states": {"live": 2, "paused": 1},
            "how": {"loaded": 2, "reloaded": 1},
        },
        "/b": {
            "versions": {str(V1): 1},
            "states": {"overlay: no answer from the server": 1},
            "how": {"loaded": 1},
        },
    }


# --- adding up --------------------------------------------------------------------------------------------


def test_summaries_of_several_workers_add_up_and_garbage_is_skipped() -> None:
    first = registry_with(*(report(f"first-{i:04}", "/a") for i in range(100)))
    second = registry_with(*(report(f"second-{i:03}", "/b") for i in range(50)))
    for registry in (first, second):
        registry.reload_arrived(Reload(V2))
        for page in list(registry.pages.values()):
            registry.report(report(page.page, page.path, V2))
    raw = [json.dumps(s) for r in (first, second) for _, s in r.dirty_rounds()]
    summary = add_up(str(V2), [*raw, "not json", json.dumps({"worker": "x"})])
    assert (summary.applied, summary.expected, summary.workers) == (150, 150, 2)
    assert summary.percentile(0.5) is not None and summary.percentile(0.99) is not None
    again = WaitSummary.from_dict(json.loads(json.dumps(summary.to_dict())))
    assert (again.applied, again.expected, again.outcome) == (150, 150, "applied")


def test_a_worker_that_wrote_nothing_makes_the_wait_time_out() -> None:
    summary = add_up(str(V2), [])
    summary.workers_expected = 1
    assert summary.outcome == "timed out"
    assert any("wrote no report" in line for line in summary.describe())


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

"""What --wait, status --pages and the fleet page read: the workers' summaries added up, page tables merged,
and the wait itself."""

from __future__ import annotations

import asyncio
import json

from distreload.config import MEMORY_URL, Target
from distreload.delivery import WaitSummary, add_up, group_by_path, wait_for_pages
from distreload.pages import MemorySink, PageRegistry
from distreload.protocol import Reload, round_key

from .test_pages import V1, V2, registry_with, report


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


def test_a_wait_ends_once_every_worker_wrote_and_every_page_applied_or_when_the_time_is_up() -> None:
    target = Target(MEMORY_URL, "delivery-test")
    registry = registry_with(report("page-aaaa", "/a", V1), report("page-bbbb", "/b", V1))
    registry.reload_arrived(Reload(V2))
    key = round_key(target.namespace, str(V2))

    def write_summaries() -> None:
        for round_name, summary in registry.dirty_rounds():
            asyncio.run(
                MemorySink().write_round(
                    round_key(target.namespace, round_name), registry.worker, json.dumps(summary)
                )
            )

    try:
        write_summaries()
        pending = wait_for_pages(target, str(V2), seconds=0, workers=1)
        assert pending.timed_out and (pending.applied, pending.pending_count) == (0, 2)
        for page in ("page-aaaa", "page-bbbb"):
            registry.report(report(page, "/", V2))
        write_summaries()
        done = wait_for_pages(target, str(V2), seconds=5, workers=1)
        assert not done.timed_out and done.outcome == "applied" and done.applied == 2
    finally:
        MemorySink.rounds.pop(key, None)

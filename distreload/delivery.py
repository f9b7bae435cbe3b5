"""What ``distreload publish --wait``, ``status --pages`` and the fleet page read: every worker's summary of
one reload, added up, and the page tables the workers write (see :mod:`distreload.pages` for the writing).

A wait polls the reload's hash (one field per worker) until every worker live at publish time has written
its summary and every page open then applied the reload or failed, or the time is up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .config import Target
from .pages import MAX_REASON, MemorySink
from .protocol import pages_prefix, round_key


@dataclass
class WaitSummary:
    """Every worker's outcome of one reload, added up."""

    version: str
    expected: int = 0
    applied: int = 0
    times_ms: list[tuple[int, int]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    pending: list[dict[str, str]] = field(default_factory=list)
    paused: list[dict[str, str]] = field(default_factory=list)
    closed: list[dict[str, str]] = field(default_factory=list)
    failed_count: int = 0
    pending_count: int = 0
    paused_count: int = 0
    closed_count: int = 0
    excluded: int = 0
    workers: int = 0
    workers_expected: int = 0  # the live workers at publish time
    timed_out: bool = False
    elapsed: float = 0.0

    @property
    def done(self) -> bool:
        return self.pending_count == 0

    def percentile(self, fraction: float) -> int | None:
        total = sum(count for _, count in self.times_ms)
        if not total:
            return None
        rank = max(1, round(fraction * total + 0.4999))
        seen = 0
        for ms, count in self.times_ms:
            seen += count
            if seen >= rank:
                return ms
        return self.times_ms[-1][0]

    @property
    def outcome(self) -> str:
        """ "applied" (every page), "failed" (a page failed) or "timed out" (a page did not answer)."""
        if self.failed_count:
            return "failed"
        if self.pending_count or self.workers < self.workers_expected:
            return "timed out"
        return "applied"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "outcome": self.outcome,
            "expected": self.expected,
            "applied": self.applied,
            "p50_ms": self.percentile(0.5),
            "p99_ms": self.percentile(0.99),
            "failed": self.failed,
            "unanswered": self.pending,
            "paused": self.paused,
            "closed": self.closed,
            "failed_count": self.failed_count,
            "unanswered_count": self.pending_count,
            "paused_count": self.paused_count,
            "closed_count": self.closed_count,
            "excluded": self.excluded,
            "workers": self.workers,
            "workers_expected": self.workers_expected,
            "elapsed": round(self.elapsed, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WaitSummary:
        """A summary as :meth:`to_dict` gave it (the publish endpoint's answer); the times are read back
        as the two percentiles."""

        def count(name: str) -> int:
            value = data.get(name, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        def listed(name: str) -> list[dict[str, str]]:
            value = data.get(name, [])
            if not isinstance(value, list):
                return []
            return [{str(k): str(v) for k, v in page.items()} for page in value if isinstance(page, dict)]

        times = [data.get("p50_ms"), data.get("p99_ms")]
        return cls(
            version=str(data.get("version", "")),
            expected=count("expected"),
            applied=count("applied"),
            times_ms=[(ms, 1) for ms in times if isinstance(ms, int)],
            failed=listed("failed"),
            pending=listed("unanswered"),
            paused=listed("paused"),
            closed=listed("closed"),
            failed_count=count("failed_count"),
            pending_count=count("unanswered_count"),
            paused_count=count("paused_count"),
            closed_count=count("closed_count"),
            excluded=count("excluded"),
            workers=count("workers"),
            workers_expected=count("workers_expected"),
            elapsed=float(data["elapsed"]) if isinstance(data.get("elapsed"), int | float) else 0.0,
        )

    def progress(self) -> str:
        text = f"applied {self.applied} of {self.expected}"
        for count, word in (
            (self.failed_count, "failed"),
            (self.pending_count, "pending"),
            (self.paused_count, "paused"),
            (self.closed_count, "closed"),
        ):
            if count:
                text += f", {count} {word}"
        return text + f" ({self.elapsed:.1f} s)"

    def describe(self) -> list[str]:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        lines = [f"applied {self.applied} of {self.expected} pages"]
        if p50 is not None:
            lines[0] += f" (time to applied: p50 {p50} ms, p99 {p99} ms)"
        for page in self.failed:
            lines.append(f"  failed: {page['path']} on {page['worker']}: {page['reason']}")
        for page in self.pending:
            why = "waiting out the spread" if page.get("state") == "waiting" else "no answer"
            lines.append(f"  unanswered: {page['path']} on {page['worker']}: {why}")
        for page in self.paused:
            lines.append(f"  paused: {page['path']} on {page['worker']} (left out of the count)")
        for page in self.closed:
            lines.append(f"  closed before applying: {page['path']} on {page['worker']}")
        listed = len(self.failed) + len(self.pending) + len(self.paused) + len(self.closed)
        unlisted = self.failed_count + self.pending_count + self.paused_count + self.closed_count - listed
        if unlisted > 0:
            lines.append(f"  ... and {unlisted} more")
        if self.workers < self.workers_expected:
            silent = self.workers_expected - self.workers
            lines.append(f"  {silent} live worker{'s' * (silent != 1)} wrote no report (stopped, or older)")
        if self.excluded:
            lines.append(f"  {self.excluded} page{'s' * (self.excluded != 1)} excluded by the match")
        return lines


def add_up(version: str, summaries: Iterable[Any]) -> WaitSummary:
    """Every worker's summary of ``version`` (as JSON text), added up; unreadable ones are skipped."""
    total = WaitSummary(version)
    times: dict[int, int] = {}
    for raw in summaries:
        try:
            summary = json.loads(raw)
            worker = str(summary["worker"])[:300]
            total.expected += int(summary["expected"]) - int(summary.get("paused_count", 0))
            total.applied += int(summary["applied"])
            for ms, count in summary["times"]:
                times[int(ms)] = times.get(int(ms), 0) + int(count)
            for name in ("failed", "pending", "paused", "closed"):
                listed = getattr(total, name)
                for page in summary[name]:
                    listed.append({**{k: str(v)[:MAX_REASON] for k, v in page.items()}, "worker": worker})
                counted = getattr(total, f"{name}_count") + int(summary[f"{name}_count"])
                setattr(total, f"{name}_count", counted)
            total.expected -= int(summary.get("closed_count", 0))
            total.excluded += int(summary["excluded"])
            total.workers += 1
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue
    total.times_ms = sorted(times.items())
    return total


class PagesUnavailable(Exception):
    """Redis could not be reached or read; the message is one line naming it."""


def read_round(target: Target, version: str, client: Any = None) -> WaitSummary:
    """What every worker wrote about ``version`` so far (blocking I/O)."""
    key = round_key(target.namespace, version)
    if target.is_memory:
        return add_up(version, MemorySink.rounds.get(key, {}).values())
    assert client is not None
    return add_up(version, client.hgetall(key).values())


def wait_for_pages(
    target: Target,
    version: str,
    *,
    seconds: float,
    workers: int,
    on_progress: Callable[[WaitSummary], None] | None = None,
    poll: float = 0.2,
) -> WaitSummary:
    """Read the summaries of ``version`` until every page open at publish time applied it or failed (once
    ``workers`` workers, the live ones at publish time, have written theirs), or ``seconds`` are up."""
    from .protocol import one_line

    client = None
    closer: Callable[[], None] = _nothing
    if not target.is_memory:
        from .redis_clients import open_sync

        try:
            opened = open_sync(target)
        except Exception as exc:
            raise PagesUnavailable(f"cannot reach Redis at {target.display_url()}: {one_line(exc)}") from None
        client, closer = opened.client, opened.close
    started = time.monotonic()
    deadline = started + seconds
    try:
        while True:
            try:
                summary = read_round(target, version, client)
            except Exception as exc:
                raise PagesUnavailable(
                    f"cannot read the page reports from Redis at {target.display_url()}: {one_line(exc)}"
                ) from None
            now = time.monotonic()
            summary.elapsed = now - started
            summary.workers_expected = workers
            if on_progress is not None:
                on_progress(summary)
            if summary.done and summary.workers >= workers:
                return summary
            if now >= deadline:
                summary.timed_out = True
                return summary
            time.sleep(min(poll, max(0.0, deadline - now)))
    finally:
        closer()


def _nothing() -> None:
    return None


async def wait_for_pages_async(target: Target, version: str, *, seconds: float, workers: int) -> WaitSummary:
    """:func:`wait_for_pages` on a thread, for the publish endpoint and ``send_reload_signal_async``."""
    return await asyncio.to_thread(wait_for_pages, target, version, seconds=seconds, workers=workers)


def live_workers(target: Target) -> int:
    """How many workers are live now: the summaries ``--wait`` waits for (memory: this process's one)."""
    if target.is_memory:
        return 1
    from .presence import PresenceUnavailable, read_presence

    try:
        return len(read_presence(target).workers)
    except PresenceUnavailable as exc:
        raise PagesUnavailable(str(exc)) from None


def read_page_tables(target: Target) -> list[dict[str, Any]]:
    """Every live worker's page table (blocking I/O); raise PagesUnavailable."""
    from .protocol import one_line, state_key

    prefix = pages_prefix(target.namespace)
    if target.is_memory:
        now = time.monotonic()
        tables_kept = MemorySink.tables.items()
        raws = [table for key, (table, until) in tables_kept if key.startswith(prefix) and until > now]
    else:
        from .redis_clients import CLUSTER, open_sync

        try:
            opened = open_sync(target)
        except Exception as exc:
            raise PagesUnavailable(f"cannot reach Redis at {target.display_url()}: {one_line(exc)}") from None
        client = opened.client
        try:
            where = {}
            if opened.kind == CLUSTER:
                where["target_nodes"] = client.get_node_from_key(state_key(target.namespace))
            keys = sorted(client.scan_iter(match=f"{prefix}*", count=500, **where))
            raws = [value for value in (client.mget(keys) if keys else []) if value is not None]
        except Exception as exc:
            raise PagesUnavailable(
                f"cannot read the page tables from Redis at {target.display_url()}: {one_line(exc)}"
            ) from None
        finally:
            opened.close()
    tables = []
    for raw in raws:
        try:
            table = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(table, dict) and isinstance(table.get("paths"), dict):
            tables.append(table)
    return tables


def group_by_path(tables: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    """The workers' page tables merged: per path, counts per version, state and way of getting there."""
    merged: dict[str, dict[str, dict[str, int]]] = {}
    for table in tables:
        for path, entry in table["paths"].items():
            if not isinstance(entry, dict):
                continue
            into = merged.setdefault(str(path), {"versions": {}, "states": {}, "how": {}})
            for group in ("versions", "states", "how"):
                counts = entry.get(group)
                if not isinstance(counts, dict):
                    continue
                for name, count in counts.items():
                    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                        into[group][str(name)] = into[group].get(str(name), 0) + count
    return dict(sorted(merged.items()))

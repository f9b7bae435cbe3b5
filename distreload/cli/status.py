"""``distreload status``: the live hosts, workers and browser streams, from the presence records in Redis."""

from __future__ import annotations

import argparse
import json
import time

from .common import (
    CommandError,
    Parser,
    add_command,
    add_redis_options,
    note,
    printable,
    redis_target,
    with_tls_hint,
)

NAME = "status"


def add_parser(commands: argparse._SubParsersAction[Parser]) -> Parser:
    parser = add_command(
        commands,
        NAME,
        "show live hosts, workers and browsers",
        "Show every worker process that is alive right now: its host, pid, how many browser streams it\n"
        "holds, the cluster version it is at, its build and how long it has run. Workers rewrite their\n"
        "presence in Redis within a second of a browser connecting or leaving, and every 5 s anyway,\n"
        "with a 15 s expiry, so a killed worker disappears by itself.",
        "examples:\n"
        "  distreload status --redis-url redis://127.0.0.1:6379/0 --namespace shop\n"
        "  distreload status --json | jq '.workers[].pid'\n"
        "  distreload status --pages                  open pages by path, version and state\n\n"
        "A worker reports its VERSION again as soon as a reload reaches it. A presence record that no\n"
        "worker wrote is left out, with one line on stderr saying which.",
    )
    add_redis_options(parser)
    parser.add_argument(
        "--pages",
        action="store_true",
        help="show the open pages instead, grouped by path: how many show each version, and in which "
        "state (live, waiting out a spread, paused, excluded by a match, overlay: why)",
    )
    parser.add_argument("--json", action="store_true", help="print the table as one JSON object")
    parser.set_defaults(run=run)
    return parser


def run_pages(args: argparse.Namespace) -> int:
    from ..delivery import PagesUnavailable, group_by_path, read_page_tables

    target = redis_target(args)
    try:
        tables = read_page_tables(target)
    except PagesUnavailable as exc:
        raise CommandError(with_tls_hint(target, str(exc))) from None
    paths = group_by_path(tables)
    total = sum(sum(entry["versions"].values()) for entry in paths.values())
    if args.json:
        workers = len(tables)
        print(json.dumps({"namespace": target.namespace, "pages": total, "workers": workers, "paths": paths}))
        return 0
    if not paths:
        print(f"no open pages in namespace {target.namespace!r} at {target.display_url()}")
        return 0

    def counts(group: dict[str, int]) -> str:
        return ", ".join(f"{printable(name)} {count}" for name, count in sorted(group.items()))

    rows = [("PATH", "PAGES", "VERSIONS", "STATES")]
    for path, entry in paths.items():
        count = sum(entry["versions"].values())
        rows.append((printable(path), str(count), counts(entry["versions"]), counts(entry["states"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    workers = len(tables)
    print(
        f"\n{total} page{'s' * (total != 1)} on {len(paths)} path{'s' * (len(paths) != 1)}, "
        f"reported by {workers} worker{'s' * (workers != 1)} (namespace {target.namespace!r})"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pages:
        return run_pages(args)
    from ..presence import PresenceUnavailable, read_presence

    target = redis_target(args)
    try:
        cluster = read_presence(target)
    except PresenceUnavailable as exc:
        raise CommandError(with_tls_hint(target, str(exc))) from None
    for key, why in cluster.skipped:
        note(printable(f"distreload status: skipped the unreadable presence record {key!r}: {why}"))
    workers, version = cluster.workers, cluster.version
    now = time.time()
    hosts = sorted({w.host for w in workers})
    streams = sum(w.streams for w in workers)
    if args.json:
        # JSON escapes control characters itself: the text stays as Redis holds it.
        print(
            json.dumps(
                {
                    "namespace": target.namespace,
                    "version": version,
                    "hosts": hosts,
                    "streams": streams,
                    "workers": [
                        {
                            "host": w.host,
                            "pid": w.pid,
                            "streams": w.streams,
                            "version": w.version,
                            "build": w.build,
                            "started": w.started,
                            "age": round(max(0.0, now - w.started), 1),
                        }
                        for w in workers
                    ],
                    "skipped": len(cluster.skipped),
                }
            )
        )
        return 0
    shown_version = printable(version or "none yet")
    if not workers:
        print(
            f"no live workers in namespace {target.namespace!r} at {target.display_url()} "
            f"(cluster version {shown_version})"
        )
        return 0
    rows = [("HOST", "PID", "BROWSERS", "VERSION", "BUILD", "AGE")]
    for w in workers:
        rows.append(
            (
                printable(w.host),
                str(w.pid),
                str(w.streams),
                printable(w.version),
                printable(w.build or "-"),
                age(now - w.started),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(
        f"\n{len(hosts)} host{'s' * (len(hosts) != 1)}, {len(workers)} worker{'s' * (len(workers) != 1)}, "
        f"{streams} browser stream{'s' * (streams != 1)}; cluster version {shown_version} "
        f"(namespace {target.namespace!r})"
    )
    return 0


def age(seconds: float) -> str:
    seconds = max(0, int(min(seconds, 1e12)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"

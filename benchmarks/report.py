"""Turn the raw figures into ``results.json``, ``results.md`` (tables, targets) and ``fanout.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import BARE, DISTRELOAD, DISTRELOAD_DROPIN, FASTAPI_RELOADER, FLOOR, INJECTOR_FLOOR

CHUNK = 64 * 1024
PAGE_20K = "/page-20k"
# Redis commands that write, per worker per second while a reload is reported, whatever the number of pages:
# by design at most a round summary twice a second (HSET and EXPIRE), the page table once (SET with EX), the
# presence record on the new version, and when reports are passed on one RPUSH and LTRIM per other worker.
PAGE_WRITES_TARGET = 10.0


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _point(points: list[dict[str, Any]], clients: int, workers: int) -> dict[str, Any] | None:
    for point in points:
        if point["clients"] == clients and point["workers"] == workers:
            return point
    return None


def _floor_note(
    floor_points: list[dict[str, Any]], point: dict[str, Any], reference: dict[str, Any] | None = None
) -> str:
    """The fan-out floor's figure at ``point`` (a bare app's loop of sends, through the same Redis): what
    uvicorn, the kernel and the reading client take there whatever the app does."""
    floor = _point(floor_points, point["clients"], point["workers"])
    if floor is None:
        return ""
    said = f"; floor (bare ASGI app, one loop of sends) p99 {floor['p99_ms']:.1f} ms"
    if reference is not None:
        said += f", ratio {floor['p99_ms'] / reference['p99_ms']:.3f}"
    return said + f"; distreload / floor {point['p99_ms'] / floor['p99_ms']:.2f}"


def _injector_floor_note(floor: Any, ours: float) -> str:
    """The injector floor's ratio (apps.InjectorFloor: the least any middleware placing a tag does) beside
    distreload's: how much of the cost is placing a tag at all."""
    if not isinstance(floor, int | float) or not floor:
        return ""
    return f"injector floor {floor:.3f}; distreload / floor {ours / floor:.3f}"


_SERVED_BY = {
    "standard": "uvicorn served with its standard extras (httptools, uvloop).",
    "plain": "uvicorn served as `pip install uvicorn` gives it: h11 and asyncio's own loop "
    "(`DISTRELOAD_BENCH_UVICORN=plain`).",
}

# The fan-out points the targets name, as (workers, streams): run.py measures the floor at these too.
FANOUT_TARGET_POINT = (4, 8000)
FANOUT_RATIO_POINT = (1, 2000)
FANOUT_LARGEST_POINT = (4, 16000)
FANOUT_P99_TARGET_MS = 150  # at FANOUT_TARGET_POINT, through Redis
FANOUT_RATIO_TARGET = 0.25  # at FANOUT_RATIO_POINT, against fastapi-reloader in the same run
FANOUT_LARGEST_P99_TARGET_MS = 200  # at FANOUT_LARGEST_POINT, through Redis
IDLE_RSS_OVER_FLOOR_KB = 1  # per open stream, over what uvicorn holds for a bare ASGI stream


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the performance issue against this run's figures."""
    targets: list[dict[str, Any]] = []

    def add(
        name: str, value: Any, goal: str, met: bool | None, reference: Any = None, note: str = ""
    ) -> None:
        targets.append(
            {
                "name": name,
                "value": value,
                "target": goal,
                "met": met,
                "fastapi_reloader": reference,
                "note": note,
            }
        )

    overhead = results.get("overhead", {})
    places = (
        ("instructions", "in process, instructions per request (callgrind)"),
        ("in_process", "in process, CPU time"),
        ("http", "HTTP, wrk, 1 uvicorn worker"),
    )
    for place, label in places:
        table = overhead.get(place)
        if not isinstance(table, dict) or DISTRELOAD not in table:
            continue
        for variant, api in (
            (DISTRELOAD, "DistReload(app)"),
            (DISTRELOAD_DROPIN, "patch_for_auto_reloading"),
        ):
            if variant not in table:
                continue
            for path, goal, kind in (
                ("/json", 0.95, "JSON"),
                ("/page", 0.90, "HTML 2 KB"),
                (PAGE_20K, 0.90, "HTML 20 KB"),
            ):
                if path not in table[variant]:
                    continue  # results from before the 20 KB page was measured
                ratio = table[variant][path]["ratio"]
                reference = table.get(FASTAPI_RELOADER, {}).get(path, {}).get("ratio")
                floor = table.get(INJECTOR_FLOOR, {}).get(path, {}).get("ratio")
                add(
                    f"Request overhead, {kind}, {label}, {api} (throughput with / bare)",
                    ratio,
                    f">= {goal:.2f}",
                    ratio >= goal,
                    reference,
                    note=_injector_floor_note(floor, ratio),
                )

    streaming = results.get("streaming", {})
    in_process = streaming.get("in_process")
    if isinstance(in_process, dict):

        def growth(variant: str) -> int | None:
            peaks = in_process["peak_bytes"].get(variant)
            if not peaks:
                return None
            sizes = sorted(peaks, key=float)
            return int(peaks[sizes[-1]] - peaks[sizes[0]])

        sizes = sorted(in_process["peak_bytes"][DISTRELOAD], key=float)
        ours, theirs = growth(DISTRELOAD) or 0, growth(FASTAPI_RELOADER)
        add(
            f"Streaming: peak memory growth from a {sizes[0]} MiB to a {sizes[-1]} MiB page (tracemalloc)",
            f"{ours / 1024:.1f} KiB",
            "< one 64 KiB chunk",
            ours < CHUNK,
            f"{theirs / 1024:.1f} KiB" if theirs is not None else None,
        )
    http = streaming.get("http")
    if isinstance(http, dict):
        ratios = http["time_ratio"][DISTRELOAD]
        size = "10" if "10" in ratios else sorted(ratios, key=float)[-1]
        wall = http.get("wall_ratio", {}).get(DISTRELOAD, {}).get(size)
        notes = [f"download wall time ratio {wall}"] if wall is not None else []
        floor_note = _injector_floor_note(http["time_ratio"].get(INJECTOR_FLOOR, {}).get(size), ratios[size])
        add(
            f"Streaming: server CPU time for a {size} MiB page over HTTP, with / bare",
            ratios[size],
            "<= 1.05",
            ratios[size] <= 1.05,
            http["time_ratio"].get(FASTAPI_RELOADER, {}).get(size),
            note="; ".join([*notes, floor_note] if floor_note else notes),
        )
        rss = http["peak_rss_bytes"][DISTRELOAD]
        sizes = sorted((k for k in rss if k != "start"), key=float)
        growth = rss[sizes[-1]] - rss["start"]
        add(
            f"Streaming: server peak RSS growth up to a {sizes[-1]} MiB page (VmHWM)",
            f"{growth / 1024:.0f} KiB",
            "< 1 MiB (no buffering)",
            growth < 2**20,
        )

    fanout = results.get("fanout", {})
    points = fanout.get("distreload", [])
    reference_points = fanout.get("fastapi_reloader", [])
    floor_points = fanout.get("floor", [])
    if points:
        most_workers = max(p["workers"] for p in points)
        curve = [p for p in points if p["workers"] == most_workers]
        target_point = _point(curve, FANOUT_TARGET_POINT[1], most_workers) or max(
            curve, key=lambda p: p["clients"]
        )
        add(
            f"Fan-out: {target_point['clients']} streams over {most_workers} workers via Redis, p99",
            f"{target_point['p99_ms']:.1f} ms",
            f"<= {FANOUT_P99_TARGET_MS} ms, all delivered",
            target_point["p99_ms"] <= FANOUT_P99_TARGET_MS and target_point["all_delivered"],
            note=f"delivered {target_point['delivered_min']}/{target_point['clients']}"
            + _floor_note(floor_points, target_point),
        )
        largest = max(curve, key=lambda p: p["clients"])
        if largest is not target_point:
            add(
                f"Fan-out: {largest['clients']} streams over {most_workers} workers via Redis, p99",
                f"{largest['p99_ms']:.1f} ms",
                f"<= {FANOUT_LARGEST_P99_TARGET_MS} ms, all delivered",
                largest["p99_ms"] <= FANOUT_LARGEST_P99_TARGET_MS and largest["all_delivered"],
                note=f"delivered {largest['delivered_min']}/{largest['clients']}"
                + _floor_note(floor_points, largest),
            )
        one_worker = [p for p in points if p["workers"] == 1]
        if one_worker and reference_points:
            ratio_clients = FANOUT_RATIO_POINT[1]
            clients = (
                ratio_clients
                if _point(one_worker, ratio_clients, 1)
                else max(p["clients"] for p in one_worker)
            )
            ours, theirs = _point(points, clients, 1), _point(reference_points, clients, 1)
            if ours and theirs:
                ratio = ours["p99_ms"] / theirs["p99_ms"]
                add(
                    f"Fan-out: {clients} streams on 1 worker, p99 distreload (via Redis) / fastapi-reloader "
                    "(in process)",
                    round(ratio, 3),
                    f"<= {FANOUT_RATIO_TARGET:.2f}",
                    ratio <= FANOUT_RATIO_TARGET and ours["all_delivered"],
                    f"{theirs['p99_ms']:.1f} ms",
                    note=f"distreload p99 {ours['p99_ms']:.1f} ms" + _floor_note(floor_points, ours, theirs),
                )

    idle = results.get("idle", {})
    if DISTRELOAD in idle:
        ours = idle[DISTRELOAD]
        theirs = idle.get(FASTAPI_RELOADER, {})
        add(
            f"Idle: {ours['streams']} open streams on 1 worker, CPU % of a core",
            ours["cpu_percent"],
            "<= 1 %",
            ours["cpu_percent"] <= 1.0,
            theirs.get("cpu_percent"),
            note=f"{ours['cpu_percent_no_streams']} % with no stream open",
        )
        per_stream = ours["rss_per_stream_bytes"] / 1000
        floor = idle.get(FLOOR)
        # What uvicorn itself holds per connection is not distreload's to save: the target is over it.
        floor_kb = floor["rss_per_stream_bytes"] / 1000 if floor else None
        add(
            "Idle: RSS per open stream",
            f"{per_stream:.1f} KB",
            f"<= uvicorn's floor + {IDLE_RSS_OVER_FLOOR_KB:g} KB",
            per_stream <= floor_kb + IDLE_RSS_OVER_FLOOR_KB if floor_kb is not None else None,
            f"{theirs['rss_per_stream_bytes'] / 1000:.1f} KB" if theirs else None,
            note=f"uvicorn's own floor (bare ASGI stream): {floor_kb:.1f} KB" if floor_kb is not None else "",
        )

    cli = results.get("cli")
    if isinstance(cli, dict):
        add(
            "CLI: `distreload publish` wall time (median), one Redis",
            f"{cli['median_ms']:.0f} ms",
            "<= 350 ms",
            cli["median_ms"] <= 350,
            note=f"python -c pass: {cli['python_startup_median_ms']:.0f} ms",
        )
        for topology, figures in (cli.get("topologies") or {}).items():
            if isinstance(figures, dict) and "median_ms" in figures:
                add(
                    f"CLI: `distreload publish` wall time (median), {topology}",
                    f"{figures['median_ms']:.0f} ms",
                    "<= 350 ms",
                    figures["median_ms"] <= 350,
                )

    for mode, label in (
        ("direct", "each to its stream's worker"),
        ("forwarded", "passed on between workers"),
    ):
        figures = results.get("pages", {}).get(mode)
        if not isinstance(figures, dict):
            continue
        scale = f"{figures['pages']} pages over {figures['workers']} workers, reports {label}"
        add(
            f"Page reports ({scale}): pages counted as applied",
            f"{figures['applied']}/{figures['expected']}",
            "every page, once",
            figures["applied"] == figures["expected"] == figures["pages"],
        )
        add(
            f"Page reports ({scale}): Redis writes per worker per second during the reload",
            figures["redis_writes_per_worker_per_s"],
            f"<= {PAGE_WRITES_TARGET:g}, whatever the page count",
            figures["redis_writes_per_worker_per_s"] <= PAGE_WRITES_TARGET,
            note=f"{figures['redis_writes_per_worker']} writes per worker in {figures['window_s']} s; idle: "
            f"{figures['idle_redis_writes_per_worker_per_s']} per worker per second",
        )
        add(
            f"Page reports ({scale}): `--wait` answered after the last page applied",
            f"{figures['wait_returned_after_last_page_s']:.2f} s",
            "<= 2 s",
            figures["wait_returned_after_last_page_s"] <= 2.0,
        )
    return targets


def write_json(results: dict[str, Any], directory: Path) -> Path:
    path = directory / "results.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    return path


def write_plot(results: dict[str, Any], directory: Path) -> Path | None:
    fanout = results.get("fanout", {})
    points = fanout.get("distreload", [])
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    colours = {1: "#1f77b4", 2: "#2ca02c", 4: "#d62728", 8: "#9467bd"}
    for axis, key, title in ((axes[0], "p50_ms", "median (p50)"), (axes[1], "p99_ms", "p99")):
        for workers in sorted({p["workers"] for p in points}):
            series = sorted((p for p in points if p["workers"] == workers), key=lambda p: p["clients"])
            axis.plot(
                [p["clients"] for p in series],
                [p[key] for p in series],
                marker="o",
                color=colours.get(workers),
                label=f"distreload, {workers} worker{'s' if workers > 1 else ''} (via Redis)",
            )
        reference = sorted(fanout.get("fastapi_reloader", []), key=lambda p: p["clients"])
        if reference:
            axis.plot(
                [p["clients"] for p in reference],
                [p[key] for p in reference],
                marker="s",
                linestyle="--",
                color="#7f7f7f",
                label="fastapi-reloader 1.3.4, 1 worker (in process)",
            )
        if key == "p99_ms":
            axis.axhline(
                FANOUT_P99_TARGET_MS,
                color="#d62728",
                linewidth=0.8,
                linestyle=":",
                label=f"target: {FANOUT_P99_TARGET_MS} ms ({FANOUT_TARGET_POINT[1]} streams, "
                f"{FANOUT_TARGET_POINT[0]} workers)",
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("open streams (clients)")
        axis.set_title(f"Fan-out latency, {title}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("trigger to event on every stream (ms)")
    axes[1].legend(fontsize=8, loc="upper left")
    figure.suptitle(
        f"Reload fan-out on {results['machine']['cores']} cores (uvicorn workers, one machine)", fontsize=10
    )
    figure.tight_layout()
    path = directory / "fanout.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _overhead_paths(table: dict[str, Any]) -> list[tuple[str, str]]:
    """The routes a table holds, with their column labels (results from before the 20 KB page lack it)."""
    paths = [("/json", "JSON"), ("/page", "HTML 2 KB"), (PAGE_20K, "HTML 20 KB")]
    return [(path, label) for path, label in paths if all(path in row for row in table.values())]


def _overhead_table(table: dict[str, Any], over_http: bool) -> list[str]:
    paths = _overhead_paths(table)
    if over_http:
        lines = [
            "| variant | "
            + " | ".join(
                f"{label} req/s (wrk) | ratio | {label} req per server CPU-s | ratio" for _, label in paths
            )
            + " |",
            "|---|" + "---:|---:|---:|---:|" * len(paths),
        ]
    else:
        lines = [
            "| variant | " + " | ".join(f"{label} calls per CPU-s | ratio" for _, label in paths) + " |",
            "|---|" + "---:|---:|" * len(paths),
        ]
    for variant in (BARE, DISTRELOAD, DISTRELOAD_DROPIN, INJECTOR_FLOOR, FASTAPI_RELOADER):
        if variant not in table:
            continue
        cells = []
        for path, _ in paths:
            row = table[variant][path]
            if over_http:
                cells += [
                    f"{row['rps']:.0f}",
                    f"{row['wall_ratio']:.3f}",
                    f"{row['per_cpu_second']:.0f}",
                    f"{row['ratio']:.3f}",
                ]
            else:
                cells += [f"{row['rps']:.0f}", f"{row['ratio']:.3f}"]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def _describe_source(source: dict[str, Any] | None) -> str:
    if not source:
        return "source not recorded"
    text = f"distreload at commit {source.get('commit', '?')}"
    if source.get("uncommitted_changes_in_distreload"):
        text += f" with uncommitted changes (files {source['distreload_files_sha256']})"
    if source.get("changed_during_run"):
        text += ", **changed during the run**"
    if source.get("note"):
        text += f" ({source['note']})"
    return text


def write_markdown(results: dict[str, Any], directory: Path) -> Path:
    machine = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    runs = results.get("runs") or [
        {
            "command": results["command"],
            "benchmarks": ["all"],
            "finished": results["finished"],
            "duration_s": results["duration_s"],
            "load_average_start": results["load_average_start"],
            "load_average_end": results["load_average_end"],
        }
    ]
    lines = ["# distreload benchmarks", "", f"Produced by ({results['mode']} sizes):", ""]
    lines += [
        f"- `{run['command']}` ({', '.join(run['benchmarks'])}): finished {run['finished']} after "
        f"{run['duration_s']:.0f} s; load average {run['load_average_start']} at the start, "
        f"{run['load_average_end']} at the end; {_describe_source(run.get('source'))}."
        for run in runs
    ]
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Linux "
        f"{machine['kernel']}, Python {machine['python']}, Redis {machine['redis_server'] or 'n/a'}; "
        f"{packages}. {_SERVED_BY[machine.get('uvicorn_flavour', 'standard')]} Other work on the machine "
        "moves single figures: ratios come from interleaved runs in "
        "one process, and costs are counted in CPU time where a target allows it (see benchmarks/README.md).",
        "",
        "## Targets",
        "",
        "| measurement | distreload | target | met | fastapi-reloader 1.3.4 | note |",
        "|---|---:|---|:---:|---:|---|",
    ]
    for target in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[target["met"]]
        lines.append(
            f"| {target['name']} | {_fmt(target['value'], 3)} | {target['target']} | {met} | "
            f"{_fmt(target['fastapi_reloader'], 3)} | {target['note']} |"
        )
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"| {name} | skipped | | n/a | | {reason} |")

    overhead = results.get("overhead", {})
    if overhead:
        lines += [
            "",
            "## Request overhead",
            "",
            "The same FastAPI app (a JSON route, a 2 KB and a 20 KB HTML page) bare, wrapped by "
            "`DistReload(app, enabled=True)` (memory backend), by distreload's drop-in "
            "`patch_for_auto_reloading(app)`, "
            "and by fastapi-reloader's `patch_for_auto_reloading(app)`. Ratio = throughput / bare "
            "throughput, from the best of interleaved rounds (the least disturbed by other work).",
        ]
        if isinstance(overhead.get("instructions"), dict):
            table = overhead["instructions"]
            lines += [
                "",
                "In process, instructions per request (valgrind's callgrind; the same every run, where "
                "timings of a few microseconds move by 10-20 % on a shared machine):",
                "",
                "| variant | "
                + " | ".join(f"{label} instructions | ratio" for _, label in _overhead_paths(table))
                + " |",
                "|---|" + "---:|---:|" * len(_overhead_paths(table)),
                *(
                    f"| {variant} | "
                    + " | ".join(
                        f"{row[path]['instructions']} | {row[path]['ratio']:.3f}"
                        for path, _ in _overhead_paths(table)
                    )
                    + " |"
                    for variant, row in table.items()
                ),
            ]
        if isinstance(overhead.get("in_process"), dict):
            settings = overhead.get("in_process_settings", {})
            lines += [
                "",
                f"In process (ASGI app called directly; {settings.get('rounds')} rounds of "
                f"{settings.get('calls')} calls, counted per CPU-second of the process):",
                "",
                *_overhead_table(overhead["in_process"], False),
            ]
        if isinstance(overhead.get("http"), dict):
            settings = overhead.get("http_settings", {})
            lines += [
                "",
                f"Over HTTP (1 uvicorn worker, `wrk -t1 -c{settings.get('connections')} "
                f"-d{settings.get('duration')}s`, {settings.get('runs')} runs each):",
                "",
                *_overhead_table(overhead["http"], True),
            ]

    streaming = results.get("streaming", {})
    if streaming:
        lines += [
            "",
            "## Streaming a big HTML page",
            "",
            "A page streamed in 64 KiB chunks (`StreamingResponse`). Time ratio = time / bare time.",
        ]
        for place, title in (
            ("in_process", "In process (tracemalloc peak of one response)"),
            ("http", "Over HTTP (1 uvicorn worker, raw socket client; server VmHWM)"),
        ):
            data = streaming.get(place)
            if not isinstance(data, dict):
                continue
            sizes = sorted(data["seconds"][BARE], key=float)
            unit_text = "wall ms (ratio); server CPU ms (ratio)" if place == "http" else "CPU ms (ratio)"
            header = "| variant | " + " | ".join(f"{s} MiB: {unit_text}" for s in sizes)
            memory_key = "peak_bytes" if place == "in_process" else "peak_rss_bytes"
            header += " | " + " | ".join(f"peak {s} MiB" for s in sizes) + " |"
            lines += ["", f"{title}:", "", header, "|---" * (1 + 2 * len(sizes)) + "|"]
            for variant in data["seconds"]:
                if place == "http":
                    cells = [
                        f"{data['seconds'][variant][s] * 1000:.1f} ({data['wall_ratio'][variant][s]:.2f}); "
                        f"CPU {data['server_cpu_seconds'][variant][s] * 1000:.1f} "
                        f"({data['time_ratio'][variant][s]:.2f})"
                        for s in sizes
                    ]
                else:
                    cells = [
                        f"{data['seconds'][variant][s] * 1000:.1f} ({data['time_ratio'][variant][s]:.2f})"
                        for s in sizes
                    ]
                memory = data[memory_key][variant]
                unit = 1024 if place == "in_process" else 2**20
                suffix = "KiB" if place == "in_process" else "MiB"
                cells += [f"{memory[s] / unit:.1f} {suffix}" for s in sizes]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")

    fanout = results.get("fanout", {})
    if fanout:
        lines += [
            "",
            "## Fan-out latency",
            "",
            "From just before the trigger request is written (a POST to a route that calls "
            "`send_reload_signal_async()`; fastapi-reloader: its `send_reload_signal()`) to the reload "
            "bytes arriving on each stream, read by one epoll loop over raw sockets. distreload goes "
            "through the Redis at 127.0.0.1:6379 (own namespace) to every worker; fastapi-reloader reaches "
            "only its own worker. uvicorn-floor: a bare ASGI app on the same Redis whose reload is one "
            "loop awaiting uvicorn's `send` for each stream (`apps.FloorApp`), at the target points: the "
            "least any app can take there. Medians over the repeats of each point.",
            "",
            "![fan-out latency](fanout.png)",
            "",
            "| variant | workers | streams | p50 ms | p90 ms | p99 ms | max ms | trigger answered ms | "
            "delivered |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in ("distreload", "floor", "fastapi_reloader"):
            for p in fanout.get(key, []):
                lines.append(
                    f"| {p['variant']} | {p['workers']} | {p['clients']} | {p['p50_ms']:.1f} | "
                    f"{p['p90_ms']:.1f} | {p['p99_ms']:.1f} | {p['max_ms']:.1f} | "
                    f"{p['trigger_response_ms']:.1f} | {p['delivered_min']}/{p['clients']} |"
                )

    idle = results.get("idle", {})
    if idle:
        lines += [
            "",
            "## Idle cost",
            "",
            "| variant | streams | window s | CPU % of a core | CPU % with no stream | RSS per stream |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for data in idle.values():
            lines.append(
                f"| {data['variant']} | {data['streams']} | {data['seconds']:g} | {data['cpu_percent']:.2f} "
                f"| {data['cpu_percent_no_streams']:.2f} | {data['rss_per_stream_bytes'] / 1000:.1f} KB |"
            )

    cli = results.get("cli")
    if isinstance(cli, dict):
        lines += [
            "",
            "## CLI",
            "",
            f"`{cli['command']}`, {cli['runs']} runs: median {cli['median_ms']:.0f} ms, "
            f"max {cli['max_ms']:.0f} ms. For scale: `python -c pass` "
            f"{cli['python_startup_median_ms']:.0f} ms; "
            "importing `distreload.cli`, `distreload.publisher` and `distreload.resp` "
            f"{cli['imports_median_ms']:.0f} ms.",
        ]
        topologies = {k: v for k, v in (cli.get("topologies") or {}).items() if isinstance(v, dict)}
        if topologies:
            lines += ["", "| topology | median | max |", "|---|---:|---:|"]
            lines += [
                f"| {name} | {figures['median_ms']:.0f} ms | {figures['max_ms']:.0f} ms |"
                for name, figures in topologies.items()
                if "median_ms" in figures
            ]
    page_runs = {k: v for k, v in results.get("pages", {}).items() if isinstance(v, dict)}
    if page_runs:
        lines += [
            "",
            "## Page reports and `publish --wait`",
            "",
            "`benchmarks/pages.py`: simulated pages report to uvicorn workers on a redis-server of the"
            " benchmark's own; one reload is published and waited for as `distreload publish --wait` does;"
            " every page then reports it applied. Writes are Redis's own command counters (SET, HSET, EXPIRE,"
            " DEL, and the inbox's RPUSH, LTRIM when reports are passed on between workers).",
            "",
            "| reports | pages | applied | writes per worker | per worker per s | idle per worker per s "
            "| inbox commands per worker per s | `--wait` after the last page |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, figures in page_runs.items():
            lines.append(
                f"| {mode} | {figures['pages']} | {figures['applied']}/{figures['expected']} "
                f"| {figures['redis_writes_per_worker']} | {figures['redis_writes_per_worker_per_s']} "
                f"| {figures['idle_redis_writes_per_worker_per_s']} "
                f"| {figures.get('inbox_commands_per_worker_per_s', 0)} "
                f"| {figures['wait_returned_after_last_page_s']:.2f} s |"
            )
    lines.append("")
    path = directory / "results.md"
    path.write_text("\n".join(lines))
    return path

"""Run the distreload benchmarks: ``python benchmarks/run.py`` (full, about 23 minutes on 2 cores) or
``python benchmarks/run.py --smoke`` (every benchmark at tiny sizes, about 5 minutes, no timing targets).

A full run writes benchmarks/results/{results.json,results.md,fanout.png}; a smoke run writes to a
temporary directory (or ``--out``) and fails only when a benchmark breaks or gives figures that make no sense.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cli_publish, fanout, idle, overhead, pages, report, streaming  # noqa: E402
from benchmarks.common import (  # noqa: E402
    BARE,
    DISTRELOAD,
    DISTRELOAD_DROPIN,
    FASTAPI_RELOADER,
    FLOOR,
    IN_CI,
    INJECTOR_FLOOR,
    REDIS_URL,
    Skipped,
    fastapi_reloader_available,
    log,
    machine_description,
    raise_open_file_limit,
    redis_reachable,
    source_state,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("overhead", "streaming", "fanout", "idle", "cli", "pages")


@dataclass(frozen=True)
class Sizes:
    calls: int
    rounds: int
    wrk: overhead.WrkSettings
    page_sizes: tuple[float, ...]
    page_runs: int
    page_server_sets: int  # fresh servers for the streamed page over HTTP (see streaming.over_http)
    worker_counts: tuple[int, ...]
    client_counts: tuple[int, ...]
    largest: tuple[int, int]  # (workers, streams): one more point past the curve, on the most workers
    repeats: int
    idle_streams: int
    idle_seconds: float
    idle_baseline_seconds: float
    cli_runs: int
    pages: tuple[int, int]  # (pages, workers) reporting one reload, in benchmarks/pages.py
    # (workers, streams) to measure instead of the whole fan-out curve (--fanout-points)
    fanout_points: tuple[tuple[int, int], ...] = ()


FULL = Sizes(
    calls=1000,
    rounds=15,
    wrk=overhead.WrkSettings(duration=3, runs=7),
    page_sizes=(1, 10, 50),
    page_runs=10,
    page_server_sets=7,
    worker_counts=(1, 2, 4),
    client_counts=(100, 500, 1000, 2000, 4000, 8000),
    largest=report.FANOUT_LARGEST_POINT,
    repeats=3,
    idle_streams=2000,
    idle_seconds=30,
    idle_baseline_seconds=10,
    cli_runs=20,
    pages=(16_000, 4),
)
SMOKE = Sizes(
    calls=200,
    rounds=2,
    wrk=overhead.WrkSettings(duration=1, runs=1),
    page_sizes=(0.25, 0.5, 1),
    page_runs=1,
    page_server_sets=1,
    worker_counts=(1, 2),
    client_counts=(20, 50),
    largest=(2, 100),
    repeats=1,
    idle_streams=50,
    idle_seconds=1,
    idle_baseline_seconds=0.5,
    cli_runs=2,
    pages=(200, 2),
)


def _variants(*wanted: str) -> list[str]:
    return [v for v in wanted if v != FASTAPI_RELOADER or fastapi_reloader_available()]


def _run_overhead(sizes: Sizes, smoke: bool, log_dir: Path, results: dict[str, Any]) -> None:
    variants = _variants(BARE, DISTRELOAD, DISTRELOAD_DROPIN, INJECTOR_FLOOR, FASTAPI_RELOADER)
    section: dict[str, Any] = {
        "in_process": overhead.in_process(variants, calls=sizes.calls, rounds=sizes.rounds),
        "in_process_settings": {"calls": sizes.calls, "rounds": sizes.rounds},
    }
    results["overhead"] = section  # kept even if the HTTP half fails
    try:
        # Each count runs the interpreter under valgrind (about 12 s of start-up): the smoke run counts
        # only what the targets compare.
        counted = _variants(BARE, DISTRELOAD) if smoke else variants
        few, many = (20, 120) if smoke else (200, 1200)
        section["instructions"] = overhead.instructions(counted, few=few, many=many)
    except Skipped as exc:
        results["skipped"]["Request overhead in instructions"] = str(exc)
        log(f"skipped: request overhead in instructions: {exc}")
    http_variants = _variants(BARE, DISTRELOAD, FASTAPI_RELOADER) if smoke else variants
    try:
        section["http"] = overhead.over_http(http_variants, sizes.wrk, log_dir)
        section["http_settings"] = {
            "duration": sizes.wrk.duration,
            "runs": sizes.wrk.runs,
            "connections": sizes.wrk.connections,
        }
    except Skipped as exc:
        results["skipped"]["Request overhead over HTTP"] = str(exc)
        log(f"skipped: request overhead over HTTP: {exc}")


def _run_streaming(sizes: Sizes, smoke: bool, log_dir: Path, results: dict[str, Any]) -> None:
    variants = _variants(BARE, DISTRELOAD, INJECTOR_FLOOR, FASTAPI_RELOADER)
    results["streaming"] = {
        "in_process": streaming.in_process(variants, sizes=sizes.page_sizes, runs=sizes.page_runs),
        "http": streaming.over_http(
            variants,
            sizes=sizes.page_sizes,
            runs=sizes.page_runs,
            server_sets=sizes.page_server_sets,
            log_dir=log_dir,
        ),
    }


def _need_redis(results: dict[str, Any], what: str) -> bool:
    if redis_reachable():
        return True
    message = f"no Redis answers at {REDIS_URL} (set DISTRELOAD_BENCH_REDIS_URL)"
    if IN_CI:
        raise RuntimeError(f"{what}: {message}; required under CI=true")
    results["skipped"][what] = message
    log(f"skipped: {what}: {message}")
    return False


def _run_fanout(sizes: Sizes, smoke: bool, log_dir: Path, results: dict[str, Any]) -> None:
    if not _need_redis(results, "Fan-out latency"):
        return
    if sizes.fanout_points:
        # Chosen points only; fastapi-reloader reaches one worker's streams, so it runs the 1-worker ones.
        distreload_points = []
        for workers in sorted({workers for workers, _ in sizes.fanout_points}):
            counts = sorted(clients for w, clients in sizes.fanout_points if w == workers)
            distreload_points += fanout.curve(DISTRELOAD, (workers,), counts, sizes.repeats, log_dir)
        section = {"distreload": distreload_points}
        reference_counts = sorted(clients for workers, clients in sizes.fanout_points if workers == 1)
    else:
        section = {
            "distreload": fanout.curve(
                DISTRELOAD, sizes.worker_counts, sizes.client_counts, sizes.repeats, log_dir
            )
            + fanout.curve(DISTRELOAD, (sizes.largest[0],), (sizes.largest[1],), sizes.repeats, log_dir)
        }
        reference_counts = list(sizes.client_counts)
    # The floor at the points the targets name (or the chosen ones): what is left for any app to spend.
    floor_points = sizes.fanout_points or (
        report.FANOUT_RATIO_POINT,
        report.FANOUT_TARGET_POINT,
        sizes.largest,
    )
    if smoke:
        floor_points = ((1, sizes.client_counts[-1]), sizes.largest)
    section["floor"] = []
    for workers in sorted({workers for workers, _ in floor_points}):
        counts = sorted({clients for w, clients in floor_points if w == workers})
        section["floor"] += fanout.curve(
            FLOOR, (workers,), counts, sizes.repeats, log_dir, through_redis=True
        )
    if fastapi_reloader_available():
        if reference_counts:
            section["fastapi_reloader"] = fanout.curve(
                FASTAPI_RELOADER, (1,), reference_counts, sizes.repeats, log_dir
            )
    else:
        results["skipped"]["Fan-out, fastapi-reloader comparison"] = "fastapi-reloader is not installed"
        log("skipped: fastapi-reloader is not installed (pip install -e '.[dev]'); no fan-out comparison")
    results["fanout"] = section


def _run_idle(sizes: Sizes, smoke: bool, log_dir: Path, results: dict[str, Any]) -> None:
    if not _need_redis(results, "Idle cost"):
        return
    results["idle"] = {
        variant: idle.measure(
            variant,
            streams=sizes.idle_streams,
            seconds=sizes.idle_seconds,
            baseline_seconds=sizes.idle_baseline_seconds,
            log_dir=log_dir,
        )
        for variant in _variants(DISTRELOAD, FASTAPI_RELOADER, FLOOR)
    }


def _run_cli(sizes: Sizes, smoke: bool, log_dir: Path, results: dict[str, Any]) -> None:
    if not _need_redis(results, "CLI publish"):
        return
    results["cli"] = cli_publish.measure(sizes.cli_runs)


def _run_pages(sizes: Sizes, smoke: bool, log_dir: Path, results: dict[str, Any]) -> None:
    # Starts its own redis-server, so that Redis's command counters see these workers' writes only.
    count, workers = sizes.pages
    results["pages"] = {
        "direct": pages.run(count, workers),
        # As when workers share one port: every report is passed on to its stream's worker.
        "forwarded": pages.run(count, workers, forwarded=True),
    }


RUNNERS: dict[str, Callable[[Sizes, bool, Path, dict[str, Any]], None]] = {
    "overhead": _run_overhead,
    "streaming": _run_streaming,
    "fanout": _run_fanout,
    "idle": _run_idle,
    "cli": _run_cli,
    "pages": _run_pages,
}


def check_sane(results: dict[str, Any], directory: Path) -> list[str]:
    """What a smoke run checks: every benchmark produced figures that can be true. No timing targets."""
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    def finite_positive(value: Any) -> bool:
        return isinstance(value, int | float) and math.isfinite(value) and value > 0

    for place in ("in_process", "http"):
        for variant, by_path in results.get("overhead", {}).get(place, {}).items():
            for path, row in by_path.items():
                expect(
                    finite_positive(row["rps"]) and 0 < row["ratio"] < 5,
                    f"overhead {place} {variant} {path}: {row}",
                )
    for place, data in results.get("streaming", {}).items():
        for variant, by_size in data["seconds"].items():
            expect(
                all(finite_positive(v) for v in by_size.values()), f"streaming {place} {variant}: {by_size}"
            )
    checks = results.get("streaming", {}).get("in_process", {}).get("checks", {})
    if DISTRELOAD in checks:
        expect(checks[DISTRELOAD]["tag_before_body_end"], "streaming: distreload's tag is not before </body>")
        expect(checks[BARE]["bytes"] < checks[DISTRELOAD]["bytes"], "streaming: no bytes added by injection")
    if INJECTOR_FLOOR in checks:  # a yardstick that left the tag out would make distreload look dear
        expect(checks[INJECTOR_FLOOR]["tag_before_body_end"], "streaming: the injector floor placed no tag")
    http = results.get("streaming", {}).get("http", {})
    if http:
        expect(http["tag_seen"].get(DISTRELOAD) is True, "streaming over HTTP: no tag in the page")
    for key, points in results.get("fanout", {}).items():
        for point in points:
            expect(point["all_delivered"], f"fan-out {key}: not all delivered: {point}")
            expect(0 < point["p50_ms"] <= point["p99_ms"] < 30_000, f"fan-out {key}: latencies: {point}")
    for variant, data in results.get("idle", {}).items():
        expect(data["streams_open_at_end"] == data["streams"], f"idle {variant}: streams closed: {data}")
        expect(data["cpu_percent"] >= 0 and data["rss_with_streams_bytes"] > 0, f"idle {variant}: {data}")
    cli = results.get("cli")
    if cli:
        expect(finite_positive(cli["median_ms"]), f"cli: {cli}")
    for mode, figures in results.get("pages", {}).items():
        expect(
            figures["applied"] == figures["expected"] == figures["pages"] and figures["outcome"] == "applied",
            f"pages {mode}: not every page counted once as applied: {figures}",
        )
    if results.get("fanout", {}).get("distreload"):
        png = directory / "fanout.png"
        expect(png.exists() and png.stat().st_size > 1000, "fanout.png was not drawn")
    expect((directory / "results.md").stat().st_size > 200, "results.md is empty")
    return problems


def _fanout_points(text: str) -> tuple[tuple[int, int], ...]:
    points = []
    for item in text.split(","):
        workers, separator, streams = item.strip().partition("x")
        if not separator or not workers.isdigit() or not streams.isdigit():
            raise argparse.ArgumentTypeError(f"expected WORKERSxSTREAMS, got {item!r}")
        points.append((int(workers), int(streams)))
    return tuple(points)


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, sanity checks only, temporary output"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write results (default: benchmarks/results for a full "
        "run, a temporary directory for --smoke)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of {','.join(BENCHMARKS)}; with an existing "
        "results.json in the output folder the other sections are kept",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite results.md and fanout.png from the results.json in the output folder",
    )
    parser.add_argument(
        "--fanout-points",
        type=_fanout_points,
        help="fan-out at these points only, WORKERSxSTREAMS comma-separated (e.g. 1x2000,4x16000); "
        "fastapi-reloader runs the 1-worker points",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        out = args.out or RESULTS_DIR
        results = json.loads((out / "results.json").read_text())
        results["targets"] = report.evaluate_targets(results)
        report.write_json(results, out)
        report.write_plot(results, out)
        report.write_markdown(results, out)
        print(f"results: {out}")
        return 0
    selected = BENCHMARKS if not args.only else tuple(name.strip() for name in args.only.split(","))
    unknown = [name for name in selected if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    sizes = SMOKE if args.smoke else FULL
    if args.fanout_points:
        sizes = dataclasses.replace(sizes, fanout_points=args.fanout_points)
    limit = raise_open_file_limit()
    needed = max(*sizes.client_counts, sizes.largest[1], *(c for _, c in sizes.fanout_points)) * 2 + 200
    if limit < needed:
        log(f"warning: open file limit {limit} is below the {needed} the biggest fan-out point needs")
    if not fastapi_reloader_available():
        log("fastapi-reloader is not installed: its comparisons are skipped (pip install -e '.[dev]')")

    temporary = tempfile.TemporaryDirectory(prefix="distreload-bench-")
    with temporary:
        out = args.out or (Path(temporary.name) / "results" if args.smoke else RESULTS_DIR)
        out.mkdir(parents=True, exist_ok=True)
        log_dir = Path(temporary.name) / "logs"
        log_dir.mkdir()
        results: dict[str, Any] = {"skipped": {}}
        previous = out / "results.json"
        if args.only and previous.exists():
            results = json.loads(previous.read_text())
            results["skipped"] = {}
        source_before = source_state()
        command = "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
        started = time.time()
        results.update(
            {
                "command": command,
                "mode": "smoke" if args.smoke else "full",
                "machine": machine_description(),
                "load_average_start": _load_average(),
            }
        )
        failures: list[str] = []
        for name in selected:
            try:
                RUNNERS[name](sizes, args.smoke, log_dir, results)
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"{name}: {exc.__class__.__name__}: {exc}")
                for server_log in sorted(log_dir.glob("*.log")):
                    tail = server_log.read_text(errors="replace").strip().splitlines()[-15:]
                    if tail:
                        print(f"--- {server_log.name}\n" + "\n".join(tail), file=sys.stderr)
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        results["duration_s"] = round(time.time() - started, 1)
        results["load_average_end"] = _load_average()
        source = source_state()
        if source["distreload_files_sha256"] != source_before["distreload_files_sha256"]:
            source["changed_during_run"] = True
            log("warning: distreload's files changed during the run; its figures mix two versions")
        # Which invocation produced which sections (a run with --only keeps the sections it did not redo).
        runs = [run for run in results.get("runs", []) if set(run["benchmarks"]) - set(selected)]
        for run in runs:
            run["benchmarks"] = [name for name in run["benchmarks"] if name not in selected]
        runs.append(
            {
                "command": command,
                "benchmarks": list(selected),
                "source": source,
                "finished": results["finished"],
                "duration_s": results["duration_s"],
                "load_average_start": results["load_average_start"],
                "load_average_end": results["load_average_end"],
            }
        )
        results["runs"] = runs
        results["targets"] = report.evaluate_targets(results)
        report.write_json(results, out)
        report.write_plot(results, out)
        report.write_markdown(results, out)
        for target in results["targets"]:
            verdict = {True: "met", False: "NOT MET", None: "n/a"}[target["met"]]
            reference = target["fastapi_reloader"]
            print(
                f"{verdict:8s} {target['name']}: {target['value']} (target {target['target']}"
                + (f"; fastapi-reloader {reference}" if reference is not None else "")
                + ")"
            )
        if args.smoke:
            failures += check_sane(results, out)
        print(
            f"results: {out}" + (" (temporary, removed on exit)" if args.out is None and args.smoke else "")
        )
    if failures:
        print("benchmarks FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

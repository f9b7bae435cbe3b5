"""Streaming HTML: a big page sent in 64 KiB chunks. Injection must not buffer it (peak memory flat in the
page size) and must not slow it down (time against the bare app).

In process, tracemalloc gives the peak memory of one response (the page's chunks are one shared buffer, so
anything that grows with the page is held by the middleware); over HTTP one uvicorn worker sends the page
to a raw socket client, and the server's peak RSS (``VmHWM``) is read after each size.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.apps import build_app
from benchmarks.common import BARE, DISTRELOAD, cpu_seconds, log, median, uvicorn_server
from benchmarks.overhead import Collector, call_once

MIB = 2**20
TAG_MARKER = b"data-distreload"


async def _one_page(app: Any, megabytes: float, *, keep_tail: bool = False) -> Collector:
    collector = Collector(keep_body=keep_tail)
    await call_once(app, "/big", collector, query=f"mb={megabytes}".encode())
    if collector.status != 200:
        raise RuntimeError(f"/big answered {collector.status}")
    return collector


async def _in_process(variants: Sequence[str], sizes: Sequence[float], runs: int) -> dict[str, Any]:
    apps = {variant: build_app(variant) for variant in variants}
    checks: dict[str, dict[str, Any]] = {}
    for variant, app in apps.items():  # warm up, and check the page came through whole with the tag
        page = await _one_page(app, sizes[0], keep_tail=True)
        body = bytes(page.body)
        checks[variant] = {
            "ends_with_html": body.rstrip().endswith(b"</html>"),
            "tag_before_body_end": body.find(TAG_MARKER) != -1
            and body.find(TAG_MARKER) < body.rfind(b"</body>"),
            "bytes": len(body),
        }
    timings: dict[str, dict[str, list[float]]] = {v: {str(s): [] for s in sizes} for v in variants}
    for _ in range(runs):
        for size in sizes:
            for variant, app in apps.items():
                started = time.process_time()  # CPU time: other work on the machine stays out
                await _one_page(app, size)
                timings[variant][str(size)].append(time.process_time() - started)
    peaks: dict[str, dict[str, int]] = {v: {} for v in variants}
    for size in sizes:
        for variant, app in apps.items():
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                baseline = tracemalloc.get_traced_memory()[0]
                await _one_page(app, size)
                peaks[variant][str(size)] = tracemalloc.get_traced_memory()[1] - baseline
            finally:
                tracemalloc.stop()
    return {
        "checks": checks,
        "seconds": _medians(timings),
        "samples": timings,
        "peak_bytes": peaks,
        "time_ratio": _time_ratios(timings),
    }


def _medians(timings: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {
        v: {s: round(median(values), 5) for s, values in by_size.items()} for v, by_size in timings.items()
    }


def _time_ratios(timings: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Time with the middleware over time of the bare app (1.0 = no cost; 1.05 = 5 % slower)."""
    return {
        v: {s: round(median(values) / median(timings[BARE][s]), 3) for s, values in by_size.items()}
        for v, by_size in timings.items()
    }


def in_process(variants: Sequence[str], *, sizes: Sequence[float], runs: int) -> dict[str, Any]:
    log(
        f"streaming in process: {', '.join(variants)}; pages of {', '.join(f'{s:g}' for s in sizes)} MiB, "
        f"{runs} runs"
    )
    return asyncio.run(_in_process(variants, sizes, runs))


def download(port: int, megabytes: float) -> tuple[float, int, bool]:
    """GET /big over one connection and read it to the end; (seconds, bytes, tag seen near the end)."""
    request = f"GET /big?mb={megabytes} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    received = 0
    tail = b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
        started = time.perf_counter()
        sock.sendall(request)
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
            tail = (tail + chunk)[-256 * 1024 :]
        elapsed = time.perf_counter() - started
    if not tail.endswith(b"0\r\n\r\n"):
        raise RuntimeError("the page did not end with the last chunk")
    return elapsed, received, TAG_MARKER in tail


def _set_medians(by_set: dict[str, dict[str, list[list[float]]]]) -> dict[str, dict[str, list[float]]]:
    return {
        v: {s: [median(pages) for pages in sets] for s, sets in by_size.items()}
        for v, by_size in by_set.items()
    }


def _every_page(by_set: dict[str, dict[str, list[list[float]]]]) -> dict[str, dict[str, list[float]]]:
    return {
        v: {s: [x for pages in sets for x in pages] for s, sets in by_size.items()}
        for v, by_size in by_set.items()
    }


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def over_http(
    variants: Sequence[str], *, sizes: Sequence[float], runs: int, server_sets: int, log_dir: Path
) -> dict[str, Any]:
    """Each variant's server CPU time per page, from ``server_sets`` fresh sets of servers (one uvicorn
    worker per variant) serving ``runs`` pages of each size each, interleaved. A server process keeps its
    own luck for its whole life (where its memory and its core fall): one process's median page moved by
    +-5 % between fresh processes of the same code, more than the target's margin, so the figure is the
    median of the sets' medians. Peak RSS is the first set's (growth within one process is the question)."""
    log(
        f"streaming over HTTP: {', '.join(variants)}; pages of {', '.join(f'{s:g}' for s in sizes)} MiB, "
        f"{server_sets} sets of fresh servers x {runs} runs, 1 uvicorn worker"
    )
    # Per variant and size, one list of pages per set of servers: the figures are derived from these.
    cpu_by_set: dict[str, dict[str, list[list[float]]]] = {v: {str(s): [] for s in sizes} for v in variants}
    time_by_set: dict[str, dict[str, list[list[float]]]] = {v: {str(s): [] for s in sizes} for v in variants}
    peak_rss: dict[str, dict[str, int]] = {v: {} for v in variants}
    tag_seen: dict[str, bool] = {}
    for server_set in range(server_sets):
        with contextlib.ExitStack() as stack:
            servers = {v: stack.enter_context(uvicorn_server(v, 1, log_dir)) for v in variants}
            for variant, server in servers.items():
                _, _, seen = download(server.port, sizes[0])  # warm up
                tag_seen[variant] = tag_seen.get(variant, True) and seen
                if server_set == 0:
                    peak_rss[variant]["start"] = _peak_rss(server.process.pid)
            for size in sorted(sizes):  # growing sizes: VmHWM only rises if a bigger page costs more memory
                for variant in variants:
                    cpu_by_set[variant][str(size)].append([])
                    time_by_set[variant][str(size)].append([])
                for _ in range(runs):
                    for variant, server in servers.items():
                        cpu_before = cpu_seconds(server.process.pid)
                        seconds, _, _ = download(server.port, size)
                        cpu_by_set[variant][str(size)][-1].append(
                            cpu_seconds(server.process.pid) - cpu_before
                        )
                        time_by_set[variant][str(size)][-1].append(seconds)
                if server_set == 0:
                    for variant, server in servers.items():
                        peak_rss[variant][str(size)] = _peak_rss(server.process.pid)
    if DISTRELOAD in tag_seen and not tag_seen[DISTRELOAD]:
        raise RuntimeError("distreload did not inject its tag into the streamed page")
    set_cpu, set_timings = _set_medians(cpu_by_set), _set_medians(time_by_set)
    # The target is judged on the server's CPU time per page (wall time moves with other work on the
    # machine); both are kept.
    return {
        "seconds": _medians(set_timings),
        "samples": _every_page(time_by_set),
        "wall_ratio": _time_ratios(set_timings),
        "server_cpu_seconds": _medians(set_cpu),
        "cpu_samples": _every_page(cpu_by_set),
        "set_cpu_medians": set_cpu,
        "time_ratio": _time_ratios(set_cpu),
        "peak_rss_bytes": peak_rss,
        "tag_seen": tag_seen,
    }

"""Request overhead: throughput with distreload (or fastapi-reloader) over throughput of the bare app.

In process, the ASGI app is called directly (no server, no sockets: the harshest view of a middleware's
cost); over HTTP, one uvicorn worker serves and ``wrk`` loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.apps import build_app
from benchmarks.common import BARE, Skipped, cpu_seconds, log, median, uvicorn_server

ROUTES = ("/json", "/page", "/page-20k")  # JSON, a 2 KB and a 20 KB HTML page


def http_scope(path: str, query: bytes = b"") -> dict[str, Any]:
    """The scope uvicorn would build for a plain browser GET."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
        "state": {},
    }


class Collector:
    """A ``send`` that keeps the status and counts body bytes (optionally keeping the body)."""

    def __init__(self, keep_body: bool = False) -> None:
        self.status = 0
        self.size = 0
        self.keep_body = keep_body
        self.body = bytearray()

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            self.size += len(body)
            if self.keep_body:
                self.body += body


def make_receive() -> Any:
    sent = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()  # the client never disconnects
        return {"type": "http.disconnect"}

    return receive


async def call_once(app: Any, path: str, collector: Collector | None = None, query: bytes = b"") -> Collector:
    collector = collector or Collector()
    await app(http_scope(path, query), make_receive(), collector.send)
    return collector


async def _time_calls(app: Any, path: str, count: int) -> float:
    """Calls per CPU-second of this process for ``count`` sequential calls (CPU time, not wall time: other
    work on the machine does not enter the figure)."""
    scope = http_scope(path)
    sink = Collector()
    started = time.process_time()
    for _ in range(count):
        await app(dict(scope), make_receive(), sink.send)
    return count / (time.process_time() - started)


async def _in_process(variants: Sequence[str], calls: int, rounds: int) -> dict[str, dict[str, Any]]:
    apps = {variant: build_app(variant) for variant in variants}
    for variant, app in apps.items():  # warm up: first-request work (distreload's start-up), caches
        for path in ROUTES:
            response = await call_once(app, path)
            if response.status != 200:
                raise RuntimeError(f"{variant} {path} answered {response.status}")
            await _time_calls(app, path, max(50, calls // 10))
    samples: dict[str, dict[str, list[float]]] = {v: {p: [] for p in ROUTES} for v in variants}
    for _ in range(rounds):  # interleaved, so drift (frequency, other load) hits every variant alike
        for path in ROUTES:
            for variant, app in apps.items():
                samples[variant][path].append(await _time_calls(app, path, calls))
    return _summarise(samples, best=True)


def _summarise(
    samples: dict[str, dict[str, list[float]]], *, best: bool = False
) -> dict[str, dict[str, Any]]:
    """Ratios of medians, or with ``best`` of the best rounds (timeit's advice for short calls: other work
    on the machine only ever slows a round down, so the fastest is the least disturbed)."""
    pick = max if best else median
    result: dict[str, dict[str, Any]] = {}
    for variant, by_path in samples.items():
        result[variant] = {}
        for path, values in by_path.items():
            bare = samples[BARE][path]
            result[variant][path] = {
                "rps": round(pick(values), 1),
                "samples": [round(v, 1) for v in values],
                "ratio": round(pick(values) / pick(bare), 3),
                "median_ratio": round(median(values) / median(bare), 3),
            }
    return result


def in_process(variants: Sequence[str], *, calls: int, rounds: int) -> dict[str, dict[str, Any]]:
    log(f"overhead in process: {', '.join(variants)}; {rounds} rounds of {calls} calls per route")
    return asyncio.run(_in_process(variants, calls, rounds))


@dataclass
class WrkSettings:
    duration: float
    runs: int
    connections: int = 32
    threads: int = 1


_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors: (.*)")


_REQUESTS = re.compile(r"(\d+) requests in")


def _wrk(port: int, path: str, settings: WrkSettings, server_pid: int | None = None) -> tuple[float, float]:
    """(requests per wall second as wrk saw them, requests per CPU-second of the server process)."""
    command = [
        "wrk",
        "-t",
        str(settings.threads),
        "-c",
        str(settings.connections),
        "-d",
        f"{max(1, round(settings.duration))}s",
        f"http://127.0.0.1:{port}{path}",
    ]
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=settings.duration + 30, check=True
    ).stdout
    cpu_used = cpu_seconds(server_pid) - cpu_before if server_pid else 0.0
    errors = _ERRORS.search(output)
    if errors:
        raise RuntimeError(f"wrk saw errors on {path}: {errors.group(0)}")
    rate, requests = _RPS.search(output), _REQUESTS.search(output)
    if rate is None or requests is None:
        raise RuntimeError(f"wrk printed no request counts:\n{output}")
    per_cpu_second = int(requests.group(1)) / cpu_used if cpu_used > 0 else math.nan
    return float(rate.group(1)), per_cpu_second


def over_http(variants: Sequence[str], settings: WrkSettings, log_dir: Path) -> dict[str, dict[str, Any]]:
    if shutil.which("wrk") is None:
        raise Skipped("wrk is not installed (Debian: apt-get install wrk)")
    log(
        f"overhead over HTTP: {', '.join(variants)}; wrk {settings.runs} x {settings.duration} s, "
        f"{settings.connections} connections, 1 uvicorn worker"
    )
    wall: dict[str, dict[str, list[float]]] = {v: {p: [] for p in ROUTES} for v in variants}
    per_cpu: dict[str, dict[str, list[float]]] = {v: {p: [] for p in ROUTES} for v in variants}
    # One server per variant, all up at once, runs interleaved: drift hits every variant alike.
    with contextlib.ExitStack() as stack:
        servers = {v: stack.enter_context(uvicorn_server(v, 1, log_dir)) for v in variants}
        for server in servers.values():  # warm up
            for path in ROUTES:
                _wrk(server.port, path, WrkSettings(duration=1, runs=1))
        for _ in range(settings.runs):
            for path in ROUTES:
                for variant, server in servers.items():
                    rate, rate_per_cpu = _wrk(server.port, path, settings, server.process.pid)
                    wall[variant][path].append(rate)
                    per_cpu[variant][path].append(rate_per_cpu)
    # The ratio is taken on requests per CPU-second of the server, best runs against best runs: wrk's
    # wall-clock rate moves with whatever else runs on the machine; both are kept.
    result = _summarise(per_cpu, best=True)
    by_wall = _summarise(wall, best=True)
    for variant, by_path in result.items():
        for path, row in by_path.items():
            row["per_cpu_second"] = row.pop("rps")
            row["cpu_samples"] = row.pop("samples")
            row["rps"] = by_wall[variant][path]["rps"]
            row["samples"] = by_wall[variant][path]["samples"]
            row["wall_ratio"] = by_wall[variant][path]["ratio"]
    return result


# --- Instructions per request (callgrind) -------------------------------------------------------------------
# Timing a few microseconds per call on a shared virtual machine moves by 10-20 % from run to run; the count
# of instructions a request executes does not (valgrind's callgrind counts them, whatever else the machine
# does). Each variant runs the same script twice, with FEW and MANY requests: the difference divided by the
# extra requests is what one request costs, start-up and warm-up cancelled out.

_INSTRUCTION_SCRIPT = """
import asyncio, os, sys
sys.path.insert(0, {root!r})
os.environ["DISTRELOAD_ENABLED"] = "1"
from benchmarks.apps import build_app
from benchmarks.overhead import call_once
async def main():
    app = build_app({variant!r})
    for _ in range(50 + {count}):
        await call_once(app, {path!r})
asyncio.run(main())
"""
_COLLECTED = re.compile(r"Collected : (\d+)")


def _instructions(variant: str, path: str, count: int) -> int:
    from benchmarks.common import ROOT

    script = _INSTRUCTION_SCRIPT.format(root=str(ROOT), variant=variant, path=path, count=count)
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run: the same count
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed for {variant} {path}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def instructions(variants: Sequence[str], *, few: int, many: int) -> dict[str, dict[str, Any]]:
    """Instructions per request for each variant and route, and the ratio bare / variant (the throughput
    ratio a CPU-bound process would show)."""
    if shutil.which("valgrind") is None:
        raise Skipped("valgrind is not installed (Debian: apt-get install valgrind)")
    log(f"overhead in instructions: {', '.join(variants)}; callgrind, {many} - {few} requests per route")
    per_request: dict[str, dict[str, float]] = {}
    for variant in variants:
        per_request[variant] = {
            path: (_instructions(variant, path, many) - _instructions(variant, path, few)) / (many - few)
            for path in ROUTES
        }
    return {
        variant: {
            path: {
                "instructions": round(cost),
                "ratio": round(per_request[BARE][path] / cost, 3),
            }
            for path, cost in by_path.items()
        }
        for variant, by_path in per_request.items()
    }

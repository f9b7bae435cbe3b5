"""Idle cost: what open streams cost a worker while nothing happens (CPU % of a core, RSS per stream).

The client keeps reading (heartbeats) like a browser tab. CPU is the worker's user+system time over the
window; the same figure with no stream open is reported beside it (the listener's own pings and presence).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import cpu_seconds, log, wait_until_quiet
from benchmarks.fanout import PROTOCOLS, fanout_server
from benchmarks.swarm import Swarm


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _cpu_percent_over(pid: int, swarm: Swarm | None, seconds: float) -> float:
    before_cpu, before_wall = cpu_seconds(pid), time.monotonic()
    if swarm is None:
        time.sleep(seconds)
    else:
        swarm.drain(seconds)
    return (cpu_seconds(pid) - before_cpu) / (time.monotonic() - before_wall) * 100


def measure(
    variant: str, *, streams: int, seconds: float, baseline_seconds: float, log_dir: Path
) -> dict[str, Any]:
    log(f"idle: {variant}, {streams} streams on 1 worker for {seconds:g} s (baseline {baseline_seconds:g} s)")
    with fanout_server(variant, 1, log_dir) as server:
        pid = server.process.pid
        with Swarm(server.port, PROTOCOLS[variant]) as warm_up:  # first-use allocations are not per stream
            warm_up.open(20)
        wait_until_quiet([pid])
        time.sleep(1.0)
        rss_before = _rss(pid)
        baseline_cpu = _cpu_percent_over(pid, None, baseline_seconds)
        with Swarm(server.port, PROTOCOLS[variant]) as swarm:
            swarm.open(streams)
            wait_until_quiet([pid], timeout=10)
            time.sleep(1.0)
            cpu = _cpu_percent_over(pid, swarm, seconds)
            rss_with = _rss(pid)
            still_open = len(swarm.sockets)
    result = {
        "variant": variant,
        "streams": streams,
        "seconds": seconds,
        "cpu_percent": round(cpu, 2),
        "cpu_percent_no_streams": round(baseline_cpu, 2),
        "rss_before_bytes": rss_before,
        "rss_with_streams_bytes": rss_with,
        "rss_per_stream_bytes": round((rss_with - rss_before) / streams),
        "streams_open_at_end": still_open,
    }
    log(
        f"  {variant}: {result['cpu_percent']} % of a core ({result['cpu_percent_no_streams']} % with none), "
        f"{result['rss_per_stream_bytes'] / 1000:.1f} KB per stream"
    )
    return result

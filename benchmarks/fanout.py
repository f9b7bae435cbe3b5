"""Fan-out latency: from a reload triggered inside one worker to the event on every open stream.

distreload: the trigger route calls ``send_reload_signal_async()``; the reload goes through Redis (the
shared one at 127.0.0.1:6379, a namespace of its own) to every worker, and each worker writes it to its
streams. fastapi-reloader: the trigger route calls its ``send_reload_signal()``, which reaches only the
streams of the worker that runs it, so it is measured with one worker (its best case). The floor
(``apps.FloorApp``): a bare ASGI app on the same Redis whose reload is one loop awaiting uvicorn's ``send``
for each of its streams, the least any app can do on this server; measured at the target points, it tells
what uvicorn, the kernel and the reading client cost there whatever the app does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DISTRELOAD,
    FASTAPI_RELOADER,
    FLOOR,
    REDIS_URL,
    Server,
    forget_namespace,
    log,
    median,
    unique_namespace,
    uvicorn_server,
    wait_until_quiet,
)
from benchmarks.swarm import DISTRELOAD_STREAM, FASTAPI_RELOADER_STREAM, Swarm

PROTOCOLS = {
    DISTRELOAD: DISTRELOAD_STREAM,
    FASTAPI_RELOADER: FASTAPI_RELOADER_STREAM,
    FLOOR: DISTRELOAD_STREAM,
}


@contextlib.contextmanager
def fanout_server(
    variant: str, workers: int, log_dir: Path, *, through_redis: bool | None = None
) -> Iterator[Server]:
    """``variant`` served by ``workers`` uvicorn workers; ``through_redis`` (distreload's default): with
    the shared Redis, in a namespace of its own."""
    if through_redis is None:
        through_redis = variant == DISTRELOAD
    if through_redis:
        namespace = unique_namespace()
        try:
            with uvicorn_server(
                variant, workers, log_dir, redis_url=REDIS_URL, namespace=namespace
            ) as server:
                yield server
        finally:
            forget_namespace(namespace)
    else:
        with uvicorn_server(variant, workers, log_dir) as server:
            yield server


def measure(server: Server, clients: int, repeats: int) -> dict[str, Any]:
    """Open ``clients`` streams, fire one reload, close them; ``repeats`` times. The point's figures are the
    medians over the repeats; every repeat is kept."""
    runs = []
    for _ in range(repeats):
        with Swarm(server.port, PROTOCOLS[server.variant]) as swarm:
            swarm.open(clients)
            wait_until_quiet(server.pids, timeout=5)
            runs.append(swarm.fire().summary())
        wait_until_quiet(server.pids)
    point = {
        key: median([run[key] for run in runs])
        for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "trigger_response_ms")
    }
    point.update(
        {
            "clients": clients,
            "workers": server.workers,
            "variant": server.variant,
            "delivered_min": min(run["delivered"] for run in runs),
            "all_delivered": all(run["delivered"] == clients for run in runs),
            "runs": runs,
        }
    )
    log(
        f"  {server.variant} {server.workers} worker(s), {clients} streams: p50 {point['p50_ms']:.1f} ms, "
        f"p99 {point['p99_ms']:.1f} ms, delivered {point['delivered_min']}/{clients}, per worker "
        f"{list(runs[-1]['per_worker'].values())}"
    )
    return point


def curve(
    variant: str,
    worker_counts: Sequence[int],
    client_counts: Sequence[int],
    repeats: int,
    log_dir: Path,
    *,
    through_redis: bool | None = None,
) -> list[dict[str, Any]]:
    points = []
    for workers in worker_counts:
        log(f"fan-out: {variant}, {workers} worker(s), streams {', '.join(map(str, client_counts))}")
        with fanout_server(variant, workers, log_dir, through_redis=through_redis) as server:
            for clients in client_counts:
                points.append(measure(server, clients, repeats))
    return points

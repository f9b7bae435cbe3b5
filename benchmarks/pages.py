"""What ``publish --wait`` costs: 16 000 pages over 4 workers report one reload.

``python -m benchmarks.pages`` (``--pages N --workers W`` for other sizes; ``--out FILE`` for the JSON).

Four uvicorn processes (one worker each) serve a tiny app wrapped in DistReload on a redis-server this
benchmark starts on a free port (so that Redis's own command counters see distreload's writes only). The
pages are simulated: each is a tab's report (``POST <prefix>/page``, what client.js sends), written over a
few keep-alive connections per worker, pipelined. Then one reload is published and waited for exactly as
``distreload publish --wait`` does (``wait_for_pages``, polling Redis); as soon as every worker has the new
version, every page reports that it applied it (``--pace S``: spread over S seconds, as ``--spread``
would). Measured:

- Redis writes per worker per second while the reload is reported (SET, HSET, EXPIRE, DEL from
  ``INFO commandstats``, the presence records included), from the publish until the wait returned;
- how long after the last page's report the wait returned (the target: within 2 s), and what it said.

``--forwarded``: as when workers share one port, every page reports to another worker than the one whose
event stream it listens through (one real stream is opened on each worker; worker N's pages name worker
N+1's): each report is passed on through the stream's worker's inbox in Redis. The inbox's writes (RPUSH,
LTRIM, DEL) are counted among the writes; every inbox command (LLEN, MULTI, LRANGE, EXEC too) on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, free_port, log  # noqa: E402

PREFIX = "/---distreload---"
APP = "benchmarks.pages:app"
WRITE_COMMANDS = ("set", "hset", "expire", "del", "rpush", "ltrim")
INBOX_COMMANDS = ("rpush", "ltrim", "llen", "lrange", "multi", "exec")
CONNECTIONS_PER_WORKER = 8
PIPELINE = 50


def make_app() -> Any:
    from distreload import DistReload

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return DistReload(nothing, enabled=True)


if os.environ.get("DISTRELOAD_BENCH_PAGES_APP"):
    app = make_app()


def report_request(port: int, page: str, path: str, version: str, how: str, stream: str = "") -> bytes:
    report = {"page": page, "path": path, "version": version, "how": how, "state": "live"}
    if stream:
        report["stream"] = stream
    body = json.dumps(report).encode()
    head = (
        f"POST {PREFIX}/page HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def send_reports(port: int, requests: list[bytes]) -> float:
    """Every request over CONNECTIONS_PER_WORKER connections, PIPELINE at a time; the time the last answer
    came (monotonic)."""

    async def one_connection(share: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for start in range(0, len(share), PIPELINE):
            batch = share[start : start + PIPELINE]
            writer.write(b"".join(batch))
            await writer.drain()
            for _ in batch:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 204"):
                    raise RuntimeError(f"a report was refused: {head[:60]!r}")
        writer.close()
        await writer.wait_closed()

    shares = [requests[i::CONNECTIONS_PER_WORKER] for i in range(CONNECTIONS_PER_WORKER)]
    await asyncio.gather(*(one_connection(share) for share in shares if share))
    return time.monotonic()


def worker_version(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{PREFIX}", timeout=5) as response:
        return str(json.load(response)["version"])


def write_counts(client: Any, names: tuple[str, ...] = WRITE_COMMANDS) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)


def open_stream(port: int) -> tuple[socket.socket, str]:
    """An event stream held open on the worker at ``port``, and the id its hello gave."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(f"GET {PREFIX}/events HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode())
    received = b""
    while (found := re.search(rb'"stream": ?"([0-9a-f]+)"', received)) is None:
        chunk = connection.recv(65536)
        if not chunk:
            raise RuntimeError(f"the event stream closed before its hello: {received[-300:]!r}")
        received += chunk
    return connection, found.group(1).decode()


def run(pages: int, workers: int, pace: float = 0.0, forwarded: bool = False) -> dict[str, Any]:
    """``pace``: the pages apply over that many seconds (as with ``--spread``) rather than all at once;
    ``forwarded``: each page reports to another worker than its stream's."""
    import redis

    from distreload.config import Target
    from distreload.delivery import live_workers, wait_for_pages
    from distreload.pages import PAGES_REFRESH_SECONDS
    from distreload.protocol import reload_request
    from distreload.publisher import publish_blocking

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    directory = Path(tempfile.mkdtemp(prefix="distreload-pages-bench-"))
    redis_port = free_port()
    redis_process = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    namespace = "pagesbench"
    target = Target(redis_url, namespace)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DISTRELOAD_ENABLED": "1",
        "DISTRELOAD_REDIS_URL": redis_url,
        "DISTRELOAD_NAMESPACE": namespace,
        "DISTRELOAD_BENCH_PAGES_APP": "1",
    }
    ports = [free_port() for _ in range(workers)]
    servers = []
    streams: list[socket.socket] = []
    try:
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for port in ports:
            command = [sys.executable, "-m", "uvicorn", APP, "--port", str(port), "--no-access-log"]
            command += ["--log-level", "warning", "--backlog", "4096"]
            servers.append(subprocess.Popen(command, env=env, cwd=ROOT))
        for port in ports:
            deadline = time.monotonic() + 30
            while True:
                try:
                    version = worker_version(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        per_worker = pages // workers
        log(f"pages: {per_worker} simulated pages on each of {workers} workers")
        stream_of = [""] * workers  # worker w's pages name worker w+1's stream, when forwarded
        if forwarded:
            for w in range(workers):
                connection, stream_id = open_stream(ports[(w + 1) % workers])
                streams.append(connection)
                stream_of[w] = stream_id
            log("pages: each worker's pages listen through the next worker's stream")
        streams_opened = time.monotonic()

        def reports(version: str, how: str) -> list[list[bytes]]:
            return [
                [
                    report_request(port, f"w{w}page{i:06}", f"/screen/{i % 50}", version, how, stream_of[w])
                    for i in range(per_worker)
                ]
                for w, port in enumerate(ports)
            ]

        async def all_reports(batches: list[list[bytes]]) -> float:
            done = await asyncio.gather(*(send_reports(p, b) for p, b in zip(ports, batches, strict=True)))
            return max(done)

        started = time.monotonic()
        asyncio.run(all_reports(reports(version, "loaded")))
        opened_in = time.monotonic() - started
        while live_workers(target) < workers:
            time.sleep(0.1)
        time.sleep(1.0)  # the page tables written, the workers idle again
        if forwarded:  # and past the quick inbox reads that follow a stream's opening
            time.sleep(max(0.0, streams_opened + PAGES_REFRESH_SECONDS - time.monotonic()))
        idle_writes_before = write_counts(client)
        time.sleep(3.0)
        idle_writes = write_counts(client) - idle_writes_before

        writes_before = write_counts(client)
        inbox_before = write_counts(client, INBOX_COMMANDS)
        expected_workers = live_workers(target)
        published_at = time.monotonic()
        result = publish_blocking(target, reload_request("reload"))
        new_version = str(result.version)
        outcome: dict[str, Any] = {}

        def wait() -> None:
            outcome["summary"] = wait_for_pages(target, new_version, seconds=60, workers=expected_workers)
            outcome["returned"] = time.monotonic()

        waiter = threading.Thread(target=wait)
        waiter.start()
        for port in ports:
            while worker_version(port) != new_version:
                time.sleep(0.01)
        applied_batches = reports(new_version, "reloaded")
        if pace:
            slices = 20
            last_applied = 0.0
            for part in range(slices):
                sliced = [batch[part::slices] for batch in applied_batches]
                last_applied = asyncio.run(all_reports(sliced))
                time.sleep(pace / slices)
        else:
            last_applied = asyncio.run(all_reports(applied_batches))
        waiter.join(90)
        summary = outcome["summary"]
        window = outcome["returned"] - published_at
        writes = write_counts(client) - writes_before  # the publish script's own HSET included
        inbox_commands = write_counts(client, INBOX_COMMANDS) - inbox_before
        return {
            "pages": per_worker * workers,
            "pace_s": pace,
            "forwarded": forwarded,
            "workers": workers,
            "opened_in_s": round(opened_in, 2),
            "applied": summary.applied,
            "expected": summary.expected,
            "outcome": summary.outcome,
            "p50_ms": summary.percentile(0.5),
            "p99_ms": summary.percentile(0.99),
            "reports_took_s": round(last_applied - published_at, 2),
            "wait_returned_after_last_page_s": round(outcome["returned"] - last_applied, 3),
            "window_s": round(window, 2),
            "redis_writes": writes,
            "redis_writes_per_worker": round(writes / workers, 2),
            "redis_writes_per_worker_per_s": round(writes / workers / window, 2),
            "idle_redis_writes_per_worker_per_s": round(idle_writes / workers / 3.0, 2),
            "inbox_commands_per_worker_per_s": round(inbox_commands / workers / window, 2),
        }
    finally:
        for connection in streams:
            connection.close()
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        redis_process.terminate()
        redis_process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=16_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.0, help="the pages apply over SECONDS (a spread)")
    parser.add_argument(
        "--forwarded", action="store_true", help="pages report to another worker than their stream's"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    figures = run(args.pages, args.workers, args.pace, args.forwarded)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

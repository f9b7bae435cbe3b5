"""What every benchmark shares: statistics, server processes, Redis and machine facts."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("DISTRELOAD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# "plain": uvicorn as `pip install uvicorn` gives it (h11, asyncio) rather than with its standard extras
# (httptools, uvloop), which it picks on its own when they are installed.
UVICORN_FLAVOUR = os.environ.get("DISTRELOAD_BENCH_UVICORN", "standard")

# Every variant of the app under test; fastapi-reloader only when it is installed.
BARE = "bare"
DISTRELOAD = "distreload"
DISTRELOAD_DROPIN = "distreload-dropin"
FASTAPI_RELOADER = "fastapi-reloader"
# Not a reloader: the least an open stream can cost under uvicorn (a bare ASGI app that answers the event
# stream request and then waits for the disconnect), to tell the server's share from distreload's.
FLOOR = "uvicorn-floor"
# Not a reloader either: the least any middleware that places a script tag can do to the benchmark's pages
# (apps.InjectorFloor), to tell what placing a tag costs at all from what distreload does on top.
INJECTOR_FLOOR = "injector-floor"


class Skipped(Exception):
    """A benchmark (or one comparison in it) that cannot run here; the message says why."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fastapi_reloader_available() -> bool:
    try:
        import fastapi_reloader  # noqa: F401
    except ImportError:
        return False
    return True


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def raise_open_file_limit() -> int:
    """Soft limit up to the hard limit (servers started from here inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_namespace() -> str:
    return f"bench{uuid.uuid4().hex[:10]}"


def redis_reachable(url: str = REDIS_URL) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def forget_namespace(namespace: str, url: str = REDIS_URL) -> None:
    """Delete the keys one benchmark run created in the shared Redis (only its own namespace)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        keys = list(client.scan_iter(match=f"distreload:{{{namespace}}}:*", count=1000))
        if keys:
            client.delete(*keys)
    except Exception:
        pass
    finally:
        client.close()


def http_request(
    port: int, method: str, path: str, body: bytes = b"", timeout: float = 10.0
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection; returns (status, body). Enough for JSON routes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return status, payload


@dataclass
class Server:
    """A uvicorn process (with ``--workers`` > 1: a supervisor and its worker processes)."""

    port: int
    workers: int
    process: subprocess.Popen[bytes]
    log_path: Path
    variant: str
    pids: list[int] = field(default_factory=list)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def worker_processes(self) -> list[Any]:
        import psutil

        parent = psutil.Process(self.process.pid)
        if self.workers == 1:
            return [parent]
        return [
            child for child in parent.children(recursive=True) if "spawn_main" in " ".join(_cmdline(child))
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def _cmdline(process: Any) -> list[str]:
    try:
        return list(process.cmdline())
    except Exception:
        return []


@contextlib.contextmanager
def uvicorn_server(
    variant: str,
    workers: int,
    log_dir: Path,
    *,
    redis_url: str | None = None,
    namespace: str | None = None,
    app: str = "benchmarks.apps:app",
) -> Iterator[Server]:
    """Run ``uvicorn`` on the benchmark app with the settings a many-connection test needs."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backlog",
        "16384",
        "--timeout-keep-alive",
        "3600",
        "--timeout-graceful-shutdown",
        "3",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if workers > 1:
        command += ["--workers", str(workers)]
    if UVICORN_FLAVOUR == "plain":
        command += ["--http", "h11", "--loop", "asyncio"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "BENCH_VARIANT": variant,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DISTRELOAD_REDIS_URL", None)
    env.pop("DISTRELOAD_NAMESPACE", None)
    if redis_url:
        env["BENCH_REDIS_URL"] = redis_url
        env["BENCH_NAMESPACE"] = namespace or unique_namespace()
    log_path = log_dir / f"uvicorn-{variant}-{workers}w-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, env=env, cwd=str(ROOT), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(port=port, workers=workers, process=process, log_path=log_path, variant=variant)
    try:
        _wait_until_serving(server, workers)
        yield server
    finally:
        server.stop()


def _wait_until_serving(server: Server, workers: int, timeout: float = 60.0) -> None:
    """Wait until every worker answers ``/ready`` (each has imported the app and finished its start-up)."""
    deadline = time.monotonic() + timeout
    seen: set[bytes] = set()
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            status, body = http_request(server.port, "GET", "/ready", timeout=2)
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            seen.add(body)
            if len(seen) >= workers:
                server.pids = [p.pid for p in server.worker_processes()]
                return
        else:
            time.sleep(0.1)
    raise TimeoutError(f"uvicorn did not start {workers} worker(s) within {timeout} s:\n{server.log_tail()}")


def wait_until_quiet(pids: Sequence[int], *, threshold: float = 3.0, timeout: float = 20.0) -> None:
    """Wait until the servers have worked off closed connections (CPU % of a core below ``threshold``)."""
    import psutil

    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            processes.append(psutil.Process(pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(p.pid) for p in processes)
        time.sleep(0.25)
        after = sum(cpu_seconds(p.pid) for p in processes)
        if (after - before) / 0.25 * 100 < threshold:
            return


def _cpu_seconds(process: Any) -> float:
    try:
        times = process.cpu_times()
    except Exception:
        return 0.0
    return float(times.user + times.system)


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process, in nanosecond resolution where Linux's schedstat has it (the
    tick-based user+system times move in 10 ms steps, too coarse for one request or one page)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        import psutil

        return _cpu_seconds(psutil.Process(pid))
    return total / 1e9


def source_state() -> dict[str, Any]:
    """Which distreload was measured: its commit, whether distreload/ differs from it, a hash of its files."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "distreload").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    state: dict[str, Any] = {"distreload_files_sha256": digest.hexdigest()[:16]}
    with contextlib.suppress(Exception):
        state["commit"] = _git("rev-parse", "--short", "HEAD")
        state["uncommitted_changes_in_distreload"] = bool(_git("status", "--porcelain", "--", "distreload"))
    return state


def _git(*arguments: str) -> str:
    done = subprocess.run(
        ["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def machine_description() -> dict[str, Any]:
    import psutil

    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for name in (
        "distreload",
        "fastapi-reloader",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "redis",
    ):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    redis_version = ""
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        redis_version = str(client.info("server").get("redis_version", ""))
        client.close()
    wrk = shutil.which("wrk")
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvicorn_flavour": UVICORN_FLAVOUR,
        "packages": versions,
        "redis_server": redis_version,
        "wrk": wrk or "",
        "open_file_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }

"""Shared fixtures: real Redis servers, real ASGI server processes, raw SSE readers, Chromium.

Under ``CI=true`` a test that needs Redis or the browser fails when they are missing; elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED_REDIS_URL = os.environ.get("DISTRELOAD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("DISTRELOAD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# A test run started in the background of a script (`cmd &`) inherits Ctrl-C ignored, and so would every
# process the tests start: the tests that stop a server or `distreload watch` with SIGINT need it back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked ``anyio``, the plugin Starlette ships) run on asyncio only."""
    return "asyncio"


def missing(what: str) -> NoReturn:
    """Skip locally, fail under CI: CI must never pass by skipping the real thing."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true", pytrace=False)
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout} s")


def distreload_cli(
    *arguments: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``distreload`` as a user would, with no DISTRELOAD_* setting but the ones given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISTRELOAD_")}
    python_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "distreload", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, "PYTHONPATH": python_path, **(env or {})},
        cwd=str(ROOT),
    )


def cli_publish(
    redis_url: str, namespace: str, *extra: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``distreload publish --json`` as a deploy hook runs it; the finished process, failed or not."""
    return distreload_cli(
        "publish", "--redis-url", redis_url, "--namespace", namespace, "--json", *extra, timeout=timeout
    )


def cli_published(redis_url: str, namespace: str, *extra: str) -> dict[str, Any]:
    """``distreload publish --json`` that must succeed; its answer (version, receivers)."""
    done = cli_publish(redis_url, namespace, *extra)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def unique_namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def namespace() -> str:
    return unique_namespace()


@pytest.fixture(scope="session")
def shared_redis_url() -> str:
    """The machine's shared Redis (never flushed or stopped: tests use unique namespaces)."""
    import redis

    try:
        redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        missing(f"a Redis server at {SHARED_REDIS_URL} ({exc})")
    return SHARED_REDIS_URL


@dataclass
class RedisProcess:
    """A redis-server owned by one test: it may be stopped, restarted, frozen."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server on a free port (for tests that stop, restart or pause it)."""
    if shutil.which("redis-server") is None:
        missing("the redis-server binary")
    server = RedisProcess(port=free_port(), directory=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class ServerProcess:
    """An ASGI server process (see ``server_command``) serving a test app on a free port."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    server: str = "uvicorn"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> float:
        """Signal the server's main process and wait for it to exit; returns how long it took."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return time.monotonic() - started

    def leftovers(self, grace: float = 1.0) -> list[str]:
        """Processes of the server's session still alive ``grace`` seconds on (workers outliving their
        supervisor), as command lines."""
        import psutil

        deadline = time.monotonic() + grace
        while True:
            alive = []
            for process in psutil.process_iter(["pid", "status", "cmdline"]):
                with contextlib.suppress(psutil.Error, OSError):
                    if (
                        os.getsid(process.pid) == self.process.pid
                        and process.status() != psutil.STATUS_ZOMBIE
                    ):
                        alive.append(" ".join(process.info["cmdline"] or []))
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.05)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


ServerFactory = Callable[..., ServerProcess]

# The package each server needs (gunicorn runs distreload in uvicorn-worker's UvicornWorker).
SERVER_PACKAGES = {
    "uvicorn": "uvicorn",
    "gunicorn": "uvicorn_worker",
    "hypercorn": "hypercorn",
    "granian": "granian",
    "daphne": "daphne",
}


def server_command(server: str, app: str, port: int, workers: int) -> list[str]:
    """How ``server`` is asked to serve ``app`` on 127.0.0.1:``port`` with ``workers`` processes."""
    host_and_port = ["--host", "127.0.0.1", "--port", str(port)]
    if server == "uvicorn":
        return ["-m", "uvicorn", app, *host_and_port, "--workers", str(workers), "--no-access-log"]
    if server == "gunicorn":
        worker_class = ["-k", "uvicorn_worker.UvicornWorker", "-w", str(workers)]
        return ["-m", "gunicorn", app, *worker_class, "-b", f"127.0.0.1:{port}", "--graceful-timeout", "30"]
    if server == "hypercorn":
        return ["-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    if server == "granian":
        return ["-m", "granian", "--interface", "asgi", *host_and_port, "--workers", str(workers), app]
    if server == "daphne":
        if workers != 1:
            raise ValueError("daphne serves from one process: it has no workers option")
        return ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    raise ValueError(f"unknown server {server!r} (known: {', '.join(SERVER_PACKAGES)})")


class ServerLauncher:
    """Starts server processes (each in its own session, logging to its own file under ``directory``) and
    stops every one it started, killing what is left of each process group."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[ServerProcess] = []

    def start(
        self,
        app: str,
        *,
        workers: int = 1,
        server: str = "uvicorn",
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        port: int | None = None,
        cwd: Path | None = None,
        wait: bool = True,
    ) -> ServerProcess:
        package = SERVER_PACKAGES.get(server)
        if package is not None and importlib.util.find_spec(package) is None:
            missing(f"the {server} server (the {package} package)")
        port = port or free_port()
        command = [sys.executable, *server_command(server, app, port, workers), *(extra_args or [])]
        python_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        full_env = {
            **os.environ,
            "PYTHONPATH": python_path,
            "DISTRELOAD_ENABLED": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        log_path = self.directory / f"{server}-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(cwd or ROOT),
                start_new_session=True,
            )
        handle = ServerProcess(port=port, process=process, log_path=log_path, server=server)
        self.started.append(handle)
        if wait:
            try:
                wait_for_port(port, 30, process)
            except Exception:
                raise RuntimeError(f"{server} did not start:\n{handle.log()}") from None
        return handle

    def stop_all(self) -> None:
        for handle in self.started:
            handle.stop(signal.SIGTERM, 10)
            handle.kill_group()
        self.started.clear()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start an ASGI server (uvicorn, gunicorn with uvicorn workers, hypercorn, granian,
    daphne) on a test app; all are stopped, and their process groups killed, afterwards.

    ``start_server("tests.apps.cluster_app:app", workers=2, server="gunicorn", env={...})``
    """
    launcher = ServerLauncher(tmp_path)
    yield launcher.start
    launcher.stop_all()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        missing(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("playwright for Python")
    return CHROMIUM


@pytest.fixture
def open_sse() -> Iterator[Callable[..., object]]:
    """Open raw SSE readers (tests/sse.py); every one is closed at teardown."""
    from .sse import SSEReader

    readers: list[SSEReader] = []

    def open_reader(port: int, **options: object) -> SSEReader:
        reader = SSEReader(port, **options)  # type: ignore[arg-type]
        readers.append(reader)
        return reader

    yield open_reader
    for reader in readers:
        reader.close()


# --- Chromium through Playwright (tests/test_client.py) --------------------------------------------------


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[object]:
    """One headless Chromium per test module; each test opens its own contexts in it.

    Not per session: Playwright's sync API keeps an event loop running in the main thread until it stops,
    and the async tests of later modules need that thread's loop slot free.
    """
    from playwright.sync_api import sync_playwright

    try:
        playwright = sync_playwright().start()
    except Exception as exc:  # pragma: no cover - depends on the machine
        missing(f"Playwright's driver ({exc})")
    try:
        launched = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
    except Exception as exc:  # pragma: no cover - depends on the machine
        playwright.stop()
        missing(f"a Chromium that starts ({exc})")
    yield launched
    launched.close()
    playwright.stop()


@pytest.fixture
def new_context(browser: object) -> Iterator[Callable[..., object]]:
    """Open browser contexts (separate profiles: each has its own SharedWorker); closed at teardown."""
    contexts: list[object] = []

    def open_context(**options: object) -> object:
        context = browser.new_context(**options)  # type: ignore[attr-defined]
        contexts.append(context)
        return context

    yield open_context
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()  # type: ignore[attr-defined]

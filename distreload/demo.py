"""``distreload demo``: a small cluster on this machine, and the app it serves.

The command starts several app servers ("hosts", each a uvicorn process with several workers) on
consecutive ports. With no Redis given it runs fakeredis's Redis-protocol TCP server inside the command
itself, so the demo needs no Redis installed; every worker connects to it like to a real Redis.

The app (``distreload.demo:app``, also what ``compose.yaml`` serves) shows which host and worker served
the page, the live workers of the cluster, and two buttons: a full reload and a stylesheet-only swap.
"""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .process import ENV_HOST_NAME

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp

ENV_DEMO_LINKS = "DISTRELOAD_DEMO_LINKS"  # space-separated URLs of every host, for the page's links

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
PORT_FALLBACKS = 10  # ports tried after a taken --redis-port before any free one


class DemoError(RuntimeError):
    """The demo could not start (port taken, dependency missing, Redis unreachable)."""


# --- The demo app ----------------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>distreload demo · {host}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/style.css">
<link rel="icon" href="data:,">
</head>
<body>
<main>
  <h1>distreload demo</h1>
  <p class="served">Served by <b id="host">{host}</b>, worker <b id="pid">pid {pid}</b>
    at <b id="rendered">{rendered}</b>, cluster version <code id="version">{version}</code>.</p>
  <p>Open this page in several tabs, and the other hosts too: {links}.
    A reload published anywhere reaches every tab, whichever host and worker holds it.</p>
  <p class="buttons">
    <button id="reload" data-kind="reload">Reload every tab on every host</button>
    <button id="css" data-kind="css">Swap the stylesheet only</button>
  </p>
  <p><output id="result">The stylesheet swap changes the accent colour without reloading:
    the time above stays the same.</output></p>
  <h2>Live workers</h2>
  {workers}
  <p class="hint">Or from a shell: <code>distreload publish</code>,
    <code>distreload publish --morph</code>, <code>distreload publish --css /style.css</code>,
    <code>distreload status</code>
    (with this cluster's <code>--redis-url</code> and <code>--namespace</code>).</p>
</main>
<script>
document.querySelectorAll("button[data-kind]").forEach(function (button) {{
  button.addEventListener("click", function () {{
    var kind = button.getAttribute("data-kind");
    fetch("/demo/publish", {{method: "POST", headers: {{"content-type": "application/json"}},
                            body: JSON.stringify({{kind: kind}})}})
      .then(function (response) {{ return response.json(); }})
      .then(function (answer) {{
        document.getElementById("result").textContent = answer.error ||
          (kind + " " + answer.version + " reached " + answer.receivers + " worker processes");
      }});
  }});
}});
</script>
</body>
</html>
"""

STYLE = """:root {{ --accent: hsl({hue}, 70%, 42%); }}
body {{ font: 16px/1.5 system-ui, sans-serif; margin: 0; background: hsl({hue}, 60%, 97%); color: #222; }}
main {{ max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }}
h1 {{ color: var(--accent); }}
button {{ font: inherit; padding: .5rem 1rem; margin-right: .5rem; border: 0; border-radius: .4rem;
         background: var(--accent); color: white; cursor: pointer; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: .2rem .8rem .2rem 0; text-align: left; }}
code {{ background: #0001; padding: 0 .2rem; }}
"""


def _accent_hue(version_number: int) -> int:
    # Every publish moves the accent colour, so a stylesheet swap is visible at a glance.
    return (200 + version_number * 67) % 360


def create_app() -> ASGIApp:
    """The demo app, wrapped with distreload (on: the demo exists to show reloads)."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from .middleware import DistReload
    from .publisher import send_reload_signal_async

    async def index(request: Request) -> Response:
        version = broker.version
        host_name = broker.identity.host
        links = [url for url in os.environ.get(ENV_DEMO_LINKS, "").split() if url]
        link_html = ", ".join(f'<a href="{html.escape(url)}">{html.escape(url)}</a>' for url in links)
        page = PAGE.format(
            host=html.escape(host_name),
            pid=os.getpid(),
            rendered=time.strftime("%H:%M:%S"),
            version=html.escape(str(version)),
            links=link_html or "every host of your cluster",
            workers=await _workers_table(reloader),
        )
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    async def style(request: Request) -> Response:
        return Response(
            STYLE.format(hue=_accent_hue(broker.version.number)),
            media_type="text/css",
            headers={"cache-control": "no-store"},
        )

    async def publish(request: Request) -> Response:
        from .protocol import PublishError

        try:
            body = await request.json()
            kind = body.get("kind", "reload") if isinstance(body, dict) else "reload"
            paths = ["/style.css"] if kind == "css" else []
            result = await send_reload_signal_async(kind, paths)
        except (ValueError, PublishError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(
            {
                "version": str(result.version),
                "receivers": result.receivers,
                "host": broker.identity.host,
                "pid": os.getpid(),
            }
        )

    async def whoami(request: Request) -> Response:
        identity = broker.identity
        return JSONResponse({"host": identity.host, "pid": identity.pid, "version": str(broker.version)})

    inner = Starlette(
        routes=[
            Route("/", index),
            Route("/style.css", style),
            Route("/demo/publish", publish, methods=["POST"]),
            Route("/demo/whoami", whoami),
        ]
    )
    reloader = DistReload(inner, enabled=True)
    broker: Any = reloader.broker  # enabled=True: never None
    return reloader


async def _workers_table(reloader: Any) -> str:
    """The live workers, from the presence records every worker keeps in Redis (as `distreload status`)."""
    from .presence import PresenceUnavailable, presence_of, read_presence_async

    broker = reloader.broker
    if broker.target.is_memory:
        workers = [
            presence_of(broker.identity, streams=broker.stream_count(), version=broker.version, build="")
        ]
    else:
        try:
            workers = (await read_presence_async(broker.target)).workers
        except PresenceUnavailable:
            workers = []
    rows = "".join(
        f"<tr><td>{html.escape(w.host)}</td><td>{w.pid}</td><td>{w.streams}</td>"
        f"<td><code>{html.escape(w.version)}</code></td></tr>"
        for w in workers
    )
    return (
        '<table id="workers"><tr><th>host</th><th>pid</th><th>browser streams</th>'
        f"<th>version</th></tr>{rows}</table>"
    )


_app: ASGIApp | None = None


def __getattr__(name: str) -> Any:
    # ``distreload.demo:app`` is built on first use, so importing this module (as the CLI does to run the
    # demo) neither reads the environment nor creates a broker.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- The demo command ------------------------------------------------------------------------------------


@dataclass
class EmbeddedRedis:
    """fakeredis's Redis-protocol server on a loopback port, served from threads of this process."""

    server: Any
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"redis://{host}:{port}/0"

    @classmethod
    def start(cls, bind: str = "127.0.0.1", port: int = 0) -> EmbeddedRedis:
        """Serve on ``port``, else the next free one of the few after it, else any (``port`` 0: any)."""
        try:
            import lupa  # type: ignore[import-untyped]  # noqa: F401 - distreload publishes with Lua
            from fakeredis import TcpFakeServer
        except ImportError:
            raise DemoError(
                "the embedded Redis needs fakeredis with Lua: pip install 'distreload[demo]' "
                "(or pass --redis-url)"
            ) from None
        candidates = [*range(port, min(port + PORT_FALLBACKS, 65536)), 0] if port else [0]
        for candidate in candidates:
            try:
                server = TcpFakeServer((bind, candidate), server_type="redis")
                break
            except OSError:
                if candidate == 0:
                    raise
        else:  # pragma: no cover - the last candidate, 0, either binds or raises
            raise DemoError("no port for the embedded Redis")
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="distreload embedded redis",
            daemon=True,
        )
        thread.start()
        return cls(server, thread)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class DemoCluster:
    """The app servers of a running demo."""

    redis_url: str
    namespace: str
    urls: list[str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                _signal_server(process, stop=True)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_server(process, stop=False)
                process.wait(5)

    def exited(self) -> subprocess.Popen[bytes] | None:
        return next((p for p in self.processes if p.poll() is not None), None)


def _signal_server(process: subprocess.Popen[bytes], *, stop: bool) -> None:
    """Ask an app server and its workers to stop (``stop``), or end them. On POSIX the server leads its
    own process group; Windows has no process groups to signal, where terminate() ends the server and
    uvicorn's workers notice their parent is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sys.platform == "win32" or not hasattr(os, "killpg"):
            process.terminate() if stop else process.kill()
        else:
            os.killpg(process.pid, signal.SIGTERM if stop else signal.SIGKILL)


def _new_process_group() -> dict[str, Any]:
    """Popen arguments that keep a Ctrl-C in the terminal from reaching the server directly."""
    if sys.platform == "win32":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}


def _check_redis(url: str) -> None:
    from .redis_clients import sync_client

    try:
        sync_client(url).ping()
    except Exception as exc:
        raise DemoError(f"cannot reach Redis at {url}: {exc.__class__.__name__}: {exc}") from None


def _pick_ports(bind: str, first: int, count: int) -> list[int]:
    ports: list[int] = []
    for index in range(count):
        port = first + index if first else 0
        with socket.socket() as probe:
            try:
                probe.bind((bind, port))
            except OSError as exc:
                raise DemoError(
                    f"cannot listen on {bind}:{port} ({exc.strerror}): another server (or "
                    f"demo) uses it; pass --port with a free port, or --port 0"
                ) from None
            ports.append(int(probe.getsockname()[1]))
    return ports


def _wait_until_serving(cluster: DemoCluster, ports: list[int], bind: str, workers: int) -> None:
    from .protocol import channel_name
    from .redis_clients import sync_client

    deadline = time.monotonic() + STARTUP_TIMEOUT
    address = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    pending = list(ports)
    while pending:
        if (exited := cluster.exited()) is not None:
            raise DemoError(f"an app server exited with status {exited.returncode} while starting")
        if time.monotonic() > deadline:
            raise DemoError(f"the app servers did not start within {STARTUP_TIMEOUT:g} s")
        with contextlib.suppress(OSError), socket.create_connection((address, pending[0]), timeout=0.2):
            pending.pop(0)
            continue
        time.sleep(0.1)
    # Every worker subscribes before it serves; wait for all of them so the first publish reaches all.
    channel = channel_name(cluster.namespace)
    client = sync_client(cluster.redis_url)
    wanted = len(ports) * workers
    while time.monotonic() < deadline:
        subscribed = dict(client.pubsub_numsub(channel)).get(channel.encode(), 0)
        if subscribed >= wanted:
            return
        if (exited := cluster.exited()) is not None:
            raise DemoError(f"an app server exited with status {exited.returncode} while starting")
        # Workers subscribe on their first request (or their lifespan start): ask each host a few times.
        for port in ports:
            with contextlib.suppress(OSError):
                _touch(address, port)
        time.sleep(0.2)
    raise DemoError(f"only {subscribed} of {wanted} workers subscribed within {STARTUP_TIMEOUT:g} s")


def _touch(address: str, port: int) -> None:
    with socket.create_connection((address, port), timeout=1.0) as sock:
        sock.sendall(b"GET /demo/whoami HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        sock.settimeout(1.0)
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass


def _command_name() -> str:
    """How to run distreload from the user's shell: on PATH, else by the path of this virtualenv's script."""
    script = Path(sys.executable).parent / "distreload"
    on_path = shutil.which("distreload")
    if on_path is not None and script.exists() and Path(on_path).resolve() == script.resolve():
        return "distreload"
    if script.exists():
        with contextlib.suppress(ValueError):
            return str(script.relative_to(Path.cwd()))
        return str(script)
    return f"{sys.executable} -m distreload"


def instructions(cluster: DemoCluster, *, embedded: bool, workers: int) -> str:
    command = _command_name()
    target = f"--redis-url {cluster.redis_url} --namespace {cluster.namespace}"
    broker = "an embedded Redis-protocol server (fakeredis)" if embedded else "Redis"
    broker += f" at {cluster.redis_url}"
    hosts = len(cluster.urls)
    lines = [
        f"distreload demo: {hosts} host{'s' * (hosts != 1)} x {workers} worker{'s' * (workers != 1)}, "
        f"reloads travel through {broker}",
        "",
        "  open      " + "   ".join(cluster.urls) + "   (several tabs of each)",
        f"  reload    {command} publish {target}",
        f"  morph     {command} publish {target} --morph",
        f"  css only  {command} publish {target} --css /style.css",
        f"  status    {command} status {target}",
        f"  listen    {command} listen {target}",
        "",
        "Every tab reloads, whichever host and worker serves it. Ctrl-C stops the demo.",
    ]
    return "\n".join(lines)


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(
    *,
    redis_url: str | None = None,
    redis_port: int = 6390,
    namespace: str = "demo",
    bind: str = "127.0.0.1",
    port: int = 8000,
    hosts: int = 2,
    workers: int = 2,
    timeout: float | None = None,
) -> int:
    """Serve the demo until Ctrl-C, SIGTERM or ``timeout``; returns the exit status."""
    from .config import validate_namespace, validate_redis_url

    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise DemoError("the demo needs uvicorn: pip install 'distreload[demo]'") from None
    namespace = validate_namespace(namespace, "--namespace")
    ports = _pick_ports(bind, port, hosts)
    embedded = None if redis_url else EmbeddedRedis.start(bind, redis_port)
    url = validate_redis_url(redis_url, "--redis-url") if redis_url else embedded.url  # type: ignore[union-attr]
    shown = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    cluster = DemoCluster(url, namespace, [f"http://{shown}:{p}/" for p in ports])
    try:
        with _stop_on_sigterm():
            try:
                _check_redis(url)
                for index, host_port in enumerate(ports):
                    env = {
                        **os.environ,
                        "DISTRELOAD_ENABLED": "1",
                        "DISTRELOAD_REDIS_URL": url,
                        "DISTRELOAD_NAMESPACE": namespace,
                        # The name on its pages, in their worker table and in `distreload status`.
                        ENV_HOST_NAME: f"host-{index + 1}",
                        ENV_DEMO_LINKS: " ".join(cluster.urls),
                    }
                    command = [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "distreload.demo:app",
                        "--host",
                        bind,
                        "--port",
                        str(host_port),
                        "--workers",
                        str(workers),
                        "--no-access-log",
                        "--log-level",
                        "warning",
                        "--timeout-graceful-shutdown",
                        "5",
                    ]
                    # Own session: a Ctrl-C reaches this command, which stops the servers in order.
                    cluster.processes.append(subprocess.Popen(command, env=env, **_new_process_group()))
                _wait_until_serving(cluster, ports, bind, workers)
                print(instructions(cluster, embedded=embedded is not None, workers=workers), flush=True)
                deadline = time.monotonic() + timeout if timeout else None
                while deadline is None or time.monotonic() < deadline:
                    if (exited := cluster.exited()) is not None:
                        raise DemoError(f"an app server exited with status {exited.returncode}")
                    time.sleep(0.2)
            except (KeyboardInterrupt, _Stop):
                print("\ndistreload demo: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        cluster.stop()
        if embedded is not None:
            embedded.stop()

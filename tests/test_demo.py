"""``distreload demo``: a real local cluster on an embedded Redis-protocol server, and the demo app."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from distreload.cli.demo import DEFAULT_REDIS_PORT
from distreload.demo import PORT_FALLBACKS, EmbeddedRedis

from .conftest import ROOT
from .sse import SSEReader


@dataclass
class RunningDemo:
    process: subprocess.Popen[str]
    output: list[str]
    redis_url: str
    namespace: str
    urls: list[str]

    @property
    def ports(self) -> list[int]:
        return [int(url.rsplit(":", 1)[1].strip("/")) for url in self.urls]

    def stop(self) -> float:
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return time.monotonic() - started


def start_demo(
    command: list[str], *, timeout: float = 90.0, env: dict[str, str] | None = None
) -> RunningDemo:
    """Start the demo and read its instructions (the last line says how to stop it)."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the demo exited ({process.wait()}):\n{''.join(output)}")
        output.append(line)
        if "Ctrl-C stops the demo" in line:
            break
    text = "".join(output)
    redis_url = re.search(r"--redis-url (\S+)", text)
    urls = re.findall(r"http://127\.0\.0\.1:\d+/", text.split("open", 1)[1].split("\n", 1)[0])
    assert redis_url is not None and urls, text
    namespace = re.search(r"--namespace (\S+)", text)
    assert namespace is not None
    return RunningDemo(process, output, redis_url.group(1), namespace.group(1), urls)


@pytest.fixture
def demos() -> Iterator[Callable[..., RunningDemo]]:
    started: list[RunningDemo] = []

    def start(*args: str, **options: object) -> RunningDemo:
        demo = start_demo([sys.executable, "-m", "distreload", "demo", *args], **options)  # type: ignore[arg-type]
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.stop()
        if demo.process.stdout is not None:
            demo.process.stdout.close()


def get(url: str) -> tuple[str, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode(), dict(response.headers)


def post_json(url: str, body: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.load(response)
        return answer


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_runs_a_cluster_with_no_redis_installed(
    demos: Callable[..., RunningDemo], open_sse: Callable[..., SSEReader]
) -> None:
    demo = demos("--port", "0", "--hosts", "2", "--workers", "2", "--timeout", "120")
    text = "".join(demo.output)
    assert "2 hosts x 2 workers" in text and "embedded Redis-protocol server (fakeredis)" in text
    assert demo.namespace == "demo" and len(demo.urls) == 2
    # Every kind of publish is shown, and the embedded Redis is on the stable default port (or, when
    # something else holds that, one of the few after it), so the commands stay the same run after run.
    assert f"publish --redis-url {demo.redis_url} --namespace demo --morph" in text
    assert f"publish --redis-url {demo.redis_url} --namespace demo --css /style.css" in text
    embedded_port = int(demo.redis_url.rsplit(":", 1)[1].split("/")[0])
    assert DEFAULT_REDIS_PORT <= embedded_port < DEFAULT_REDIS_PORT + PORT_FALLBACKS

    for index, url in enumerate(demo.urls, start=1):
        page, _ = get(url)
        assert f'<b id="host">host-{index}</b>' in page
        assert page.count("data-distreload=") == 1  # the reload script went in
        assert '<link rel="icon" href="data:,">' in page  # no request for /favicon.ico, so no 404
        assert all(link in page for link in demo.urls)
    readers = [open_sse(port) for port in demo.ports for _ in range(3)]
    assert all(reader.wait_for("hello") for reader in readers)

    cli = [
        sys.executable,
        "-m",
        "distreload",
        "publish",
        "--redis-url",
        demo.redis_url,
        "--namespace",
        demo.namespace,
        "--json",
    ]
    published = subprocess.run(cli, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert published.returncode == 0, published.stderr
    result = json.loads(published.stdout)
    assert result["receivers"] == 4
    for reader in readers:
        assert [e.id for e in reader.wait_for("reload")] == [result["version"]]

    style_before, _ = get(demo.urls[0] + "style.css")
    answer = post_json(demo.urls[1] + "demo/publish", {"kind": "css"})
    assert answer["receivers"] == 4 and answer["host"] == "host-2"
    for reader in readers:
        css = reader.wait_for("reload", 2)[1].json()
        assert css == {
            "version": answer["version"],
            "kind": "css",
            "paths": ["/style.css"],
            "spread": 0.0,
            "match": "",
        }
    # The swap is visible: the accent colour moved (on whichever worker answers, once it has the version).
    deadline = time.monotonic() + 10
    while (style_after := get(demo.urls[0] + "style.css")[0]) == style_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert style_after != style_before

    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "distreload",
            "status",
            "--redis-url",
            demo.redis_url,
            "--namespace",
            demo.namespace,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    # One name per host, the same on the pages, in their worker table and in `distreload status`.
    status_json = json.loads(status.stdout)
    assert len(status_json["workers"]) == 4
    assert status_json["hosts"] == ["host-1", "host-2"]
    for url in demo.urls:
        table = get(url)[0].split('<table id="workers">', 1)[1].split("</table>", 1)[0]
        assert sorted(re.findall(r"<tr><td>([^<]+)</td>", table)) == ["host-1", "host-1", "host-2", "host-2"]

    took = demo.stop()
    assert demo.process.returncode == 0
    assert took < 15
    assert all(port_is_closed(port) for port in demo.ports)
    assert all(reader.closed.wait(5) for reader in readers)


@pytest.mark.redis
def test_demo_uses_a_given_redis(
    demos: Callable[..., RunningDemo], shared_redis_url: str, namespace: str
) -> None:
    demo = demos(
        "--port",
        "0",
        "--hosts",
        "1",
        "--workers",
        "2",
        "--redis-url",
        shared_redis_url,
        "--namespace",
        namespace,
        "--timeout",
        "120",
    )
    assert f"reloads travel through Redis at {shared_redis_url}" in "".join(demo.output)
    assert demo.redis_url == shared_redis_url and demo.namespace == namespace
    answer = post_json(demo.urls[0] + "demo/publish", {"kind": "reload"})
    assert answer["receivers"] == 2


def test_demo_on_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "distreload", "demo", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"distreload demo: cannot listen on 127.0.0.1:{port} ")
    assert done.stderr.count("\n") == 1


def test_demo_with_an_unreachable_redis_is_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distreload",
            "demo",
            "--port",
            "0",
            "--redis-url",
            f"redis://127.0.0.1:{port}/0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"distreload demo: cannot reach Redis at redis://127.0.0.1:{port}/0")
    assert done.stderr.count("\n") == 1


def test_demo_app_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISTRELOAD_REDIS_URL", "DISTRELOAD_NAMESPACE", "DISTRELOAD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISTRELOAD_HOST_NAME", "solo")
    # A namespace of its own: a broker made by an earlier test would carry that test's host name.
    monkeypatch.setenv("DISTRELOAD_NAMESPACE", f"demo-solo-{os.getpid()}")
    from distreload.demo import create_app

    app = create_app()

    async def scenario() -> tuple[str, str, httpx.Response, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            page = (await client.get("/")).text
            style = (await client.get("/style.css")).text
            published = await client.post("/demo/publish", json={"kind": "css"})
            return page, style, published, (await client.get("/style.css")).text

    # In a thread of its own: a session's Playwright keeps an event loop running in the main thread.
    with ThreadPoolExecutor(1) as pool:
        page, style_before, published, style_after = pool.submit(lambda: asyncio.run(scenario())).result()
    assert '<b id="host">solo</b>' in page and f"pid {os.getpid()}" in page
    assert f"<td>{os.getpid()}</td>" in page  # the live-workers table lists this one process
    assert page.count("data-distreload=") == 1
    assert published.status_code == 200 and published.json()["receivers"] == 1
    assert style_before != style_after


def test_importing_the_demo_module_builds_nothing() -> None:
    code = "import sys, distreload.demo as d; print(d._app is None, 'starlette' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "True False", done.stderr


@pytest.mark.browser
def test_demo_page_buttons_swap_the_stylesheet_in_place_and_reload_every_tab(
    demos: Callable[..., RunningDemo], new_context: Callable[..., Any]
) -> None:
    demo = demos("--port", "0", "--hosts", "2", "--workers", "1", "--timeout", "120")
    tabs = []
    for url in demo.urls:
        page = new_context().new_page()
        navigations: list[str] = []
        page.on(
            "framenavigated",
            lambda frame, page=page, seen=navigations: (
                seen.append(frame.url) if frame == page.main_frame else None
            ),
        )
        page.goto(url)
        page.wait_for_function("window.__distreload && window.__distreload.connected", timeout=20_000)
        tabs.append((page, navigations))

    def accent(page: Any) -> str:
        return str(page.eval_on_selector("h1", "element => getComputedStyle(element).color"))

    first, first_navigations = tabs[0]
    before = [accent(page) for page, _ in tabs]
    first.click("#css")
    for page, _ in tabs:  # both hosts' tabs pick up the new colour without reloading
        page.wait_for_function(
            f"getComputedStyle(document.querySelector('h1')).color !== {before[0]!r}", timeout=10_000
        )
    assert all(len(navigations) == 1 for _, navigations in tabs)
    assert accent(first) != before[0]

    first.click("#reload")
    for page, navigations in tabs:
        deadline = time.monotonic() + 10
        while len(navigations) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert len(navigations) == 2, navigations
    assert first_navigations[-1] == demo.urls[0]


def test_the_embedded_redis_takes_the_next_port_when_its_own_is_taken() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        embedded = EmbeddedRedis.start("127.0.0.1", taken)
        try:
            port = int(embedded.url.rsplit(":", 1)[1].split("/")[0])
            assert port != taken
            assert taken < port <= taken + PORT_FALLBACKS or port_was_any_free_one(taken, port)
        finally:
            embedded.stop()


def port_was_any_free_one(taken: int, port: int) -> bool:
    """When the ports after the taken one are all in use as well, any free port does."""
    return all(not port_is_closed(candidate) for candidate in range(taken + 1, taken + PORT_FALLBACKS))


@pytest.mark.parametrize("stop", [True, False])
def test_servers_are_stopped_without_process_groups_where_there_are_none(
    stop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no os.killpg: the demo ends its servers with terminate() (stop) or kill() there."""
    from distreload import demo

    server = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], **demo._new_process_group()
    )
    try:
        monkeypatch.setattr(sys, "platform", "win32")
        monkeypatch.delattr(os, "killpg")
        demo._signal_server(server, stop=stop)
        assert server.wait(10) == -(signal.SIGTERM if stop else signal.SIGKILL)
    finally:
        monkeypatch.undo()
        server.kill()
        server.wait()

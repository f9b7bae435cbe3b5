"""The browser client in a real Chromium: many tabs, several workers and hosts, offline and asleep tabs,
code-change restarts, stylesheet swaps, a proxy under a path prefix, a strict CSP.

Reloads are counted from the browser's side: every main-frame navigation of a tab is recorded, so "exactly
once" means exactly one navigation per publish, and each navigation must land on a real page.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import ServerFactory, free_port, wait_for_port

CONNECTED = "window.__distreload && window.__distreload.connected && !window.__distreload.reloading"
APPS = Path(__file__).resolve().parent / "apps"


@dataclass
class Tab:
    """One browser tab and everything it did: navigations (a reload is one) and console lines."""

    page: Any
    navigations: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("framenavigated", self._navigated)
        self.page.on("console", lambda message: self.console.append(message.text))

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations.append(frame.url)

    @property
    def reloads(self) -> int:
        return len(self.navigations) - 1

    def status(self) -> dict[str, Any]:
        self.page.wait_for_function(CONNECTED, timeout=20_000)
        for _ in range(20):
            with contextlib.suppress(Exception):  # a navigation may replace the document under us
                return dict(self.page.evaluate("({...window.__distreload})"))
            self.page.wait_for_timeout(100)
        raise AssertionError(f"no distreload status in {self.page.url}")

    def text(self, selector: str) -> str:
        return str(self.page.inner_text(selector, timeout=10_000))

    def assert_on_a_real_page(self, url: str) -> None:
        """Every navigation went to the page itself, never to a browser error page."""
        assert self.navigations and all(visited == url for visited in self.navigations), self.navigations
        assert self.page.url == url
        assert self.page.title().startswith(("distreload", "restart")), self.page.content()[:300]


def open_tab(context: Any, url: str) -> Tab:
    tab = Tab(context.new_page())
    tab.page.goto(url)
    tab.status()
    return tab


def wait_until(condition: Callable[[], bool], timeout: float, pump: Tab, what: str) -> float:
    """Poll ``condition`` while letting the browser deliver its events; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        pump.page.wait_for_timeout(100)
    return time.monotonic() - started


def settle(tab: Tab, seconds: float) -> None:
    """Give a wrong second reload the time to happen (events are delivered while Playwright waits)."""
    tab.page.wait_for_timeout(seconds * 1000)


def post(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.load(response))


def reload_counts(tabs: list[Tab]) -> list[int]:
    return [tab.reloads for tab in tabs]


# --- many tabs -----------------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
def test_a_dozen_tabs_share_one_stream_and_each_reloads_exactly_once(
        start_server: ServerFactory, new_context: Callable[..., Any]) -> None:
    server = start_server("tests.apps.client_app:app")
    context = new_context()
    urls = [f"{server.base_url}/page/{index}" for index in range(12)]
    tabs = [open_tab(context, url) for url in urls]
    assert {tab.status()["mode"] for tab in tabs} == {"shared"}
    assert get_json(server.base_url + "/---distreload---")["streams"] == 1

    version = post(server.base_url + "/publish")["version"]
    wait_until(lambda: reload_counts(tabs) == [1] * 12, 20, tabs[0], "every tab to reload")
    settle(tabs[0], 2)
    assert reload_counts(tabs) == [1] * 12
    for tab, url in zip(tabs, urls, strict=True):
        tab.assert_on_a_real_page(url)
        assert tab.status()["version"] == version
    assert get_json(server.base_url + "/---distreload---")["streams"] == 1


# --- several workers, two hosts, one Redis ---------------------------------------------------------------

def wait_for_subscribers(redis_url: str, namespace: str, count: int, timeout: float = 30.0) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    channel = f"distreload:{namespace}:reload"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if dict(client.pubsub_numsub(channel))[channel.encode()] >= count:
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise AssertionError(f"fewer than {count} workers subscribed to {channel}")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.redis
def test_pages_on_two_hosts_of_two_gunicorn_workers_each_reload_exactly_once(
        start_server: ServerFactory, new_context: Callable[..., Any], shared_redis_url: str,
        namespace: str) -> None:
    env = {"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    hosts = [start_server("tests.apps.cluster_app:app", server="gunicorn", workers=2, env=env)
             for _ in range(2)]
    wait_for_subscribers(shared_redis_url, namespace, 4)

    # Each context is a separate browser profile with its own SharedWorker per host, so its stream lands
    # on whichever worker accepts it: open contexts until the streams cover all four workers.
    tabs: list[Tab] = []
    urls: list[str] = []
    stream_workers: set[str] = set()
    for index in range(16):
        context = new_context()
        for host in hosts:
            url = f"{host.base_url}/page/{index}"
            tab = open_tab(context, url)
            tabs.append(tab)
            urls.append(url)
            stream_workers.add(tab.status()["worker"])
        if len(stream_workers) == 4 and len(tabs) >= 8:
            break
    assert len(stream_workers) == 4, f"streams reached only {stream_workers}"

    done = subprocess.run([sys.executable, "-m", "distreload", "publish", "--redis-url", shared_redis_url,
                           "--namespace", namespace, "--json"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    published = json.loads(done.stdout)
    assert published["receivers"] == 4
    took = wait_until(lambda: reload_counts(tabs) == [1] * len(tabs), 20, tabs[0], "every page to reload")
    settle(tabs[0], 2)
    assert reload_counts(tabs) == [1] * len(tabs)
    for tab, url in zip(tabs, urls, strict=True):
        tab.assert_on_a_real_page(url)
        assert tab.status()["version"] == published["version"]
    print(f"\n{len(tabs)} pages on 2 hosts x 2 workers reloaded {took:.2f} s after `distreload publish`")

    # The same from inside one worker, through the synchronous send_reload_signal().
    answer = post(hosts[0].base_url + "/trigger-sync")
    assert answer["receivers"] == 4
    took = wait_until(lambda: reload_counts(tabs) == [2] * len(tabs), 20, tabs[0], "a second reload")
    settle(tabs[0], 2)
    assert reload_counts(tabs) == [2] * len(tabs)
    for tab, url in zip(tabs, urls, strict=True):
        tab.assert_on_a_real_page(url)
        assert tab.status()["version"] == answer["version"]
    print(f"... and {took:.2f} s after send_reload_signal() in worker {answer['pid']}")


# --- offline, asleep -------------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("shared_worker", [True, False], ids=["shared-worker", "per-tab"])
def test_a_tab_offline_during_a_publish_reloads_once_when_back_and_a_blip_reloads_nothing(
        start_server: ServerFactory, new_context: Callable[..., Any], shared_worker: bool) -> None:
    server = start_server("tests.apps.client_app:app",
                          env={"CLIENT_APP_OPTIONS": json.dumps({"shared_worker": shared_worker})})
    context = new_context()
    urls = [f"{server.base_url}/page/{name}" for name in ("a", "b")]
    tabs = [open_tab(context, url) for url in urls]
    assert {tab.status()["mode"] for tab in tabs} == {"shared" if shared_worker else "page"}

    # A blip with nothing published: reconnecting alone reloads nothing.
    context.set_offline(True)
    settle(tabs[0], 2)
    context.set_offline(False)
    settle(tabs[0], 3)
    assert reload_counts(tabs) == [0, 0]
    for tab in tabs:
        tab.status()

    # Offline while a reload goes out: nothing happens until the tab is back, then exactly one reload
    # (never onto the browser's "no internet" page).
    context.set_offline(True)
    version = post(server.base_url + "/publish")["version"]
    settle(tabs[0], 3)
    assert reload_counts(tabs) == [0, 0]
    context.set_offline(False)
    took = wait_until(lambda: reload_counts(tabs) == [1, 1], 15, tabs[0], "the reload after going online")
    settle(tabs[0], 2)
    assert reload_counts(tabs) == [1, 1]
    for tab, url in zip(tabs, urls, strict=True):
        tab.assert_on_a_real_page(url)
        assert tab.status()["version"] == version
    print(f"\nreloaded {took:.2f} s after going back online")


# --- code-change restarts --------------------------------------------------------------------------------

def project_with_restart_app(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(APPS / "restart_app.py", project / "restart_app.py")
    return project


def change_code(project: Path, new_code: str) -> None:
    source = project / "restart_app.py"
    text = source.read_text()
    assert 'CODE = "first"' in text
    source.write_text(text.replace('CODE = "first"', f'CODE = "{new_code}"'))


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("server_kind", ["uvicorn", "gunicorn"])
def test_a_code_change_restarts_promptly_and_reloads_every_page_once_onto_the_new_code(
        start_server: ServerFactory, new_context: Callable[..., Any], tmp_path: Path,
        server_kind: str) -> None:
    project = project_with_restart_app(tmp_path)
    workers = 2 if server_kind == "gunicorn" else 1
    server = start_server("restart_app:app", server=server_kind, workers=workers, extra_args=["--reload"],
                          cwd=project)
    contexts = [new_context(), new_context()]
    urls = [f"{server.base_url}/page/{index}" for index in range(4)]
    tabs = [open_tab(contexts[index % 2], url) for index, url in enumerate(urls)]
    assert all(tab.text("#code") == "first" for tab in tabs)
    builds = {tab.status()["build"] for tab in tabs}
    assert len(builds) == 1

    time.sleep(1.1)  # a file time stamp the reloaders can tell from the one they started with
    change_code(project, "second")
    took = wait_until(lambda: reload_counts(tabs) == [1] * len(tabs), 30, tabs[0],
                      "every page to reload after the code change")
    settle(tabs[0], 3)
    assert reload_counts(tabs) == [1] * len(tabs), server.log()
    for tab, url in zip(tabs, urls, strict=True):
        tab.assert_on_a_real_page(url)
        assert tab.text("#code") == "second"
        assert tab.status()["build"] not in builds
    print(f"\n{server_kind} --reload: {len(tabs)} open pages showed the new code {took:.2f} s after the edit")


# --- stylesheets -----------------------------------------------------------------------------------------

def computed_colour(tab: Tab, selector: str) -> str:
    return str(tab.page.eval_on_selector(selector, "element => getComputedStyle(element).color"))


@pytest.mark.browser
@pytest.mark.slow
def test_a_css_reload_swaps_stylesheets_in_place_keeping_scroll_and_form_state(
        start_server: ServerFactory, new_context: Callable[..., Any]) -> None:
    server = start_server("tests.apps.client_app:app")
    context = new_context()
    url = f"{server.base_url}/page/css"
    tab = open_tab(context, url)
    tab.page.fill("#field", "typed, not submitted")
    tab.page.evaluate("window.scrollTo(0, 1500)")
    assert computed_colour(tab, "#title") == computed_colour(tab, "#other") == "rgb(0, 0, 0)"

    post(server.base_url + "/colour/site/255/0/0")
    post(server.base_url + "/colour/other/0/128/0")
    post(server.base_url + "/publish?kind=css&path=/static/site.css")
    wait_until(lambda: computed_colour(tab, "#title") == "rgb(255, 0, 0)", 10, tab, "the new site.css")
    assert computed_colour(tab, "#other") == "rgb(0, 0, 0)"  # not named in the paths: untouched

    post(server.base_url + "/publish?kind=css")  # no paths: every stylesheet of the page
    wait_until(lambda: computed_colour(tab, "#other") == "rgb(0, 128, 0)", 10, tab, "the new other.css")
    settle(tab, 1)
    assert tab.reloads == 0
    assert tab.page.evaluate("window.scrollY") == 1500
    assert tab.page.input_value("#field") == "typed, not submitted"
    assert tab.page.eval_on_selector_all('link[rel="stylesheet"]', "links => links.length") == 2

    post(server.base_url + "/publish")  # anything else is a full reload
    wait_until(lambda: tab.reloads == 1, 10, tab, "a full reload")


# --- behind a proxy under a path prefix; backoff while the server is away ----------------------------------

class PrefixProxy:
    """A reverse proxy serving the upstream under ``/app``, as ``location /app/ { proxy_pass
    http://upstream/; }`` would: one request per connection, streams passed through as they come."""

    def __init__(self, upstream_port: int, prefix: str = "/app") -> None:
        self.upstream_port = upstream_port
        self.prefix = prefix
        self.requests: list[tuple[float, str]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        sock.close()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            head, body = head.split(b"\r\n\r\n", 1)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
            with self._lock:
                self.requests.append((time.monotonic(), f"{method} {target}"))
            if not target.startswith(self.prefix + "/"):
                client.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            kept = [line for line in header_lines if not line.lower().startswith("connection:")]
            length = next((int(line.split(":", 1)[1]) for line in kept
                           if line.lower().startswith("content-length:")), 0)
            while len(body) < length:
                body += client.recv(65536)
            forwarded = "\r\n".join([f"{method} {target[len(self.prefix):]} {version}", *kept,
                                     "Connection: close", "", ""]).encode("latin-1") + body
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            self._track(upstream)
            upstream.settimeout(None)
            upstream.sendall(forwarded)
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    return
                client.sendall(chunk)
        except OSError:
            return
        finally:
            if upstream is not None:
                self._forget(upstream)
            self._forget(client)

    def requests_since(self, moment: float, containing: str) -> list[str]:
        with self._lock:
            return [line for at, line in self.requests if at >= moment and containing in line]

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


@pytest.fixture
def prefix_proxy() -> Any:
    proxies: list[PrefixProxy] = []

    def start(upstream_port: int) -> PrefixProxy:
        proxy = PrefixProxy(upstream_port)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.mark.browser
@pytest.mark.slow
def test_behind_a_proxy_under_a_path_prefix_with_backoff_while_the_server_is_away(
        start_server: ServerFactory, new_context: Callable[..., Any], prefix_proxy: Any) -> None:
    options = {"message_prefix": "[live]", "connected_message": "on air",
               "reconnect_message": "lost; next try in ${reconnectInterval} ms", "reconnect_interval": 1000}
    env = {"CLIENT_APP_OPTIONS": json.dumps(options)}
    port = free_port()
    server = start_server("tests.apps.client_app:app", port=port, env=env, extra_args=["--root-path", "/app"])
    proxy = prefix_proxy(port)
    context = new_context()
    url = f"http://127.0.0.1:{proxy.port}/app/page/proxied"
    tab = open_tab(context, url)
    script_src = tab.page.get_attribute("script[data-distreload]", "src")
    assert script_src is not None and script_src.startswith("/app/---distreload---/client.js")
    assert proxy.requests_since(0, "GET /app/---distreload---/events")
    assert any(line.startswith("[live] on air") for line in tab.console)

    post(f"http://127.0.0.1:{proxy.port}/app/publish")
    wait_until(lambda: tab.reloads == 1, 15, tab, "the reload through the proxy")
    tab.assert_on_a_real_page(url)
    tab.status()

    # The server goes away: the client retries with growing, jittered waits, not in a busy loop.
    server.stop()
    stopped = time.monotonic()
    settle(tab, 8)
    probes = proxy.requests_since(stopped, "/app/---distreload---")
    assert 2 <= len(probes) <= 10, probes
    waits = [line for line in tab.console if line.startswith("[live] lost; next try in ")]
    assert waits and all(line.split()[-2].isdigit() for line in waits), tab.console
    assert tab.reloads == 1

    # The same code comes back on the same address: the page reconnects and does not reload.
    restarted = start_server("tests.apps.client_app:app", port=port, env=env,
                             extra_args=["--root-path", "/app"])
    wait_for_port(restarted.port)
    wait_until(lambda: bool(tab.page.evaluate(CONNECTED)), 20, tab, "the reconnect")
    settle(tab, 2)
    assert tab.reloads == 1
    tab.assert_on_a_real_page(url)


# --- Content-Security-Policy ---------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
def test_under_a_strict_csp_the_tag_carries_the_nonce_and_the_page_still_reloads(
        start_server: ServerFactory, new_context: Callable[..., Any]) -> None:
    server = start_server("tests.apps.client_app:app")
    context = new_context()
    url = f"{server.base_url}/csp/strict"
    response_headers: list[dict[str, str]] = []
    page = context.new_page()
    page.on("response", lambda response: response_headers.append(response.headers)
            if response.url == url else None)
    tab = Tab(page)
    page.goto(url)
    status = tab.status()
    policy = response_headers[-1]["content-security-policy"]
    nonce = page.eval_on_selector("script[data-distreload]", "script => script.nonce")
    assert nonce and policy == f"script-src 'nonce-{nonce}'"
    # The policy lets the tagged script run but, with no worker-src, forbids the SharedWorker: the page
    # falls back to a connection of its own.
    assert status["mode"] == "page"

    post(server.base_url + "/publish")
    wait_until(lambda: tab.reloads == 1, 15, tab, "the reload under CSP")
    settle(tab, 1)
    assert tab.reloads == 1
    tab.assert_on_a_real_page(url)
    assert not [line for line in tab.console if "Refused to load the script" in line]


# --- the options the script tag carries ----------------------------------------------------------------

def test_client_options_accept_fast_hot_reload_names_and_reach_the_tag() -> None:
    from distreload import DistReload
    from distreload.middleware import check_client_options

    options = {"ws_message_prefix": "[dev]", "_ws_reconnect_interval": 500, "silent": True}
    assert check_client_options(options) == {"message_prefix": "[dev]", "reconnect_interval": 500,
                                             "silent": True}
    async def inner_app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    app = DistReload(inner_app, enabled=True, client_options=options)
    tag = app.script_tag({"type": "http", "root_path": "/app"}).decode()
    assert ' data-distreload="/app/---distreload---"' in tag
    assert ('data-distreload-options="{&quot;message_prefix&quot;:&quot;[dev]&quot;,'
            '&quot;reconnect_interval&quot;:500,&quot;silent&quot;:true}"') in tag


@pytest.mark.parametrize(("options", "complaint"), [
    ({"messagePrefix": "x"}, "unknown option 'messagePrefix'"),
    ({"silent": "yes"}, "'silent' must be bool"),
    ({"reconnect_interval": True}, "'reconnect_interval' must be int or float"),
    ({"max_reconnect_interval": 0}, "positive number of milliseconds"),
])
def test_client_options_that_the_browser_would_ignore_are_refused_at_start_up(
        options: dict[str, Any], complaint: str) -> None:
    from distreload.config import ConfigError
    from distreload.middleware import check_client_options

    with pytest.raises(ConfigError, match="client_options") as raised:
        check_client_options(options)
    assert complaint in str(raised.value)

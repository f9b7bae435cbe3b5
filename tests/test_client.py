"""The browser client in a real Chromium: many tabs under a strict CSP sharing one stream, several workers
and hosts, offline tabs, code-change restarts, stylesheet and image swaps, morphs, the error overlay, pause,
kiosk fleets (spread, match), a proxy under a path prefix; and the client's parts in tests/js/.

Reloads are counted from the browser's side: every document a tab loads is recorded, so "exactly once"
means exactly one new document per publish, and each must be a real page.

Every test runs real distreload servers. Morphs, spread, match, images and the ``overlay``/``indicator``
options are proved on tests/apps/cluster_pages_app.py served by two hosts on one Redis: its pages change and
fail on a test's word and it records when each request arrived, all through state kept in that Redis, and
what the pages are told is published through distreload itself (in a worker, over HTTP with the token, or
from the command line).
``DISTRELOAD_WRITE_DOCS=1`` makes the overlay test write docs/overlay.png.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, ServerFactory, ServerProcess, cli_published, free_port, wait_for_port

CONNECTED = "window.__distreload && window.__distreload.connected && !window.__distreload.reloading"
APPS = Path(__file__).resolve().parent / "apps"
UNIT_TESTS = Path(__file__).resolve().parent / "js"
UNIT_ORIGIN = "http://localhost:9"
WRITE_DOCS = os.environ.get("DISTRELOAD_WRITE_DOCS", "") not in ("", "0")

# The overlay and the indicator as a test (or a user's tool) reads them: through the open shadow root.
UI_STATE = """() => {
  const host = document.getElementById("distreload-ui");
  const part = (name) => {
    const element = host && host.shadowRoot && host.shadowRoot.querySelector(name);
    return element && !element.hidden ? element.innerText : null;
  };
  return {overlay: part(".overlay"), indicator: part(".indicator")};
}"""


@dataclass
class Tab:
    """One browser tab and everything it did: navigations (a reload is one) and console lines."""

    page: Any
    navigations: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Documents loaded, not "framenavigated", which also fires for history.replaceState (no reload).
        self.page.on("load", lambda page: self.navigations.append(page.url))
        self.page.on("console", lambda message: self.console.append(message.text))

    @property
    def reloads(self) -> int:
        return len(self.navigations) - 1

    def status(self) -> dict[str, Any]:
        # Polled from here, not with wait_for_function: Playwright's in-page poller evaluates a string with
        # eval, which a page under a strict CSP refuses (EvalError) whenever the first check is false.
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(Exception):  # a navigation may replace the document under us
                if self.page.evaluate(CONNECTED):
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"distreload never connected in {self.page.url}")
            self.page.wait_for_timeout(50)
        for _ in range(20):
            with contextlib.suppress(Exception):  # a navigation may replace the document under us
                return dict(self.page.evaluate("({...window.__distreload})"))
            self.page.wait_for_timeout(100)
        raise AssertionError(f"no distreload status in {self.page.url}")

    def status_now(self) -> dict[str, Any]:
        """The client's status as it is, connected or not."""
        return dict(self.page.evaluate("({...window.__distreload})"))

    def text(self, selector: str) -> str:
        return str(self.page.inner_text(selector, timeout=10_000))

    def ui(self) -> dict[str, str | None]:
        """What the overlay and the indicator say (None: not shown)."""
        for _ in range(20):
            with contextlib.suppress(Exception):  # a navigation may replace the document under us
                return dict(self.page.evaluate(UI_STATE))
            self.page.wait_for_timeout(100)
        raise AssertionError(f"could not read the overlay of {self.page.url}")

    def evaluate(self, script: str) -> Any:
        return self.page.evaluate(script)

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


def post(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(
        url, method="POST", data=data, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def reload_counts(tabs: list[Tab]) -> list[int]:
    return [tab.reloads for tab in tabs]


# --- many tabs, one stream, under a strict CSP ------------------------------------------------------------


def page_with_policy(context: Any, url: str) -> tuple[Tab, str]:
    """Open ``url`` and return its tab and the Content-Security-Policy it was served with."""
    tab = Tab(context.new_page())
    response = tab.page.goto(url)
    tab.status()
    return tab, str(response.headers.get("content-security-policy", ""))


@pytest.mark.browser
@pytest.mark.slow
def test_ten_tabs_under_a_strict_csp_share_one_stream_reload_once_each_and_lose_nothing_with_their_leader(
    start_server: ServerFactory, new_context: Callable[..., Any]
) -> None:
    server = start_server("tests.apps.client_app:app")
    context = new_context()
    urls = [f"{server.base_url}/csp/{index}" for index in range(10)]
    first, policy = page_with_policy(context, urls[0])
    tabs = [first] + [open_tab(context, url) for url in urls[1:]]
    # The tag carries the response's nonce; the policy (no worker-src) would refuse a SharedWorker, and the
    # tabs share their stream without one: one tab holds it for all ten, so all ten load.
    nonce = first.page.eval_on_selector("script[data-distreload]", "script => script.nonce")
    assert nonce and policy == f"script-src 'nonce-{nonce}'"
    statuses = [tab.status() for tab in tabs]
    assert {status["mode"] for status in statuses} == {"shared"}
    assert sum(status["leader"] for status in statuses) == 1
    assert get_json(server.base_url + "/---distreload---")["streams"] == 1

    version = post(server.base_url + "/publish")["version"]
    wait_until(lambda: reload_counts(tabs) == [1] * 10, 20, tabs[0], "every tab to reload")
    settle(tabs[0], 1)
    assert reload_counts(tabs) == [1] * 10
    for tab, url in zip(tabs, urls, strict=True):
        tab.assert_on_a_real_page(url)
        assert tab.status()["version"] == version
        assert not [line for line in tab.console if "Refused" in line or "violates" in line], tab.console

    # Close the tab that holds the stream and publish at once: the next tab in line takes the stream over,
    # resuming from the last version it heard of, and every remaining tab reloads once.
    leader = next(tab for tab in tabs if tab.status()["leader"])
    remaining = [tab for tab in tabs if tab is not leader]
    leader.page.close()
    version = post(server.base_url + "/publish")["version"]
    took = wait_until(
        lambda: reload_counts(remaining) == [2] * 9, 20, remaining[0], "every remaining tab to reload"
    )
    settle(remaining[0], 1)
    assert reload_counts(remaining) == [2] * 9
    statuses = [tab.status() for tab in remaining]
    assert {status["version"] for status in statuses} == {version}
    assert sum(status["leader"] for status in statuses) == 1
    wait_until(
        lambda: get_json(server.base_url + "/---distreload---")["streams"] == 1,
        10,
        remaining[0],
        "the closed tab's stream to go",
    )
    print(f"\n9 tabs reloaded {took:.2f} s after a publish sent right as their leader closed")


# --- several workers, two hosts, one Redis ---------------------------------------------------------------


def wait_for_subscribers(
    redis_url: str, namespace: str, count: int, timeout: float = 30.0, channel: str | None = None
) -> None:
    import redis

    from distreload.protocol import channel_name

    client = redis.Redis.from_url(redis_url)
    channel = channel or channel_name(namespace)
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
    start_server: ServerFactory, new_context: Callable[..., Any], shared_redis_url: str, namespace: str
) -> None:
    env = {"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    hosts = [
        start_server("tests.apps.cluster_app:app", server="gunicorn", workers=2, env=env) for _ in range(2)
    ]
    wait_for_subscribers(shared_redis_url, namespace, 4)

    # Each context is a separate browser profile with one stream per host, held by one of its tabs, so the
    # stream lands on whichever worker accepts it: open contexts until the streams cover all four workers.
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

    published = cli_published(shared_redis_url, namespace)
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
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-tab"])
def test_a_tab_offline_during_a_publish_reloads_once_when_back_and_a_blip_reloads_nothing(
    start_server: ServerFactory, new_context: Callable[..., Any], shared: bool
) -> None:
    # Per tab through the option's earlier name, shared_worker, which still means share_connection.
    options = {"share_connection": True} if shared else {"shared_worker": False}
    server = start_server("tests.apps.client_app:app", env={"CLIENT_APP_OPTIONS": json.dumps(options)})
    context = new_context()
    urls = [f"{server.base_url}/page/{name}" for name in ("a", "b")]
    tabs = [open_tab(context, url) for url in urls]
    assert {tab.status()["mode"] for tab in tabs} == {"shared" if shared else "page"}

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
    start_server: ServerFactory, new_context: Callable[..., Any], tmp_path: Path, server_kind: str
) -> None:
    project = project_with_restart_app(tmp_path)
    workers = 2 if server_kind == "gunicorn" else 1
    server = start_server(
        "restart_app:app", server=server_kind, workers=workers, extra_args=["--reload"], cwd=project
    )
    contexts = [new_context(), new_context()]
    urls = [f"{server.base_url}/page/{index}" for index in range(4)]
    tabs = [open_tab(contexts[index % 2], url) for index, url in enumerate(urls)]
    assert all(tab.text("#code") == "first" for tab in tabs)
    builds = {tab.status()["build"] for tab in tabs}
    assert len(builds) == 1

    time.sleep(1.1)  # a file time stamp the reloaders can tell from the one they started with
    change_code(project, "second")
    took = wait_until(
        lambda: reload_counts(tabs) == [1] * len(tabs),
        30,
        tabs[0],
        "every page to reload after the code change",
    )
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
    start_server: ServerFactory, new_context: Callable[..., Any]
) -> None:
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
            length = next(
                (int(line.split(":", 1)[1]) for line in kept if line.lower().startswith("content-length:")), 0
            )
            while len(body) < length:
                body += client.recv(65536)
            forwarded = (
                "\r\n".join(
                    [f"{method} {target[len(self.prefix) :]} {version}", *kept, "Connection: close", "", ""]
                ).encode("latin-1")
                + body
            )
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
    start_server: ServerFactory, new_context: Callable[..., Any], prefix_proxy: Any
) -> None:
    options = {
        "message_prefix": "[live]",
        "connected_message": "on air",
        "reconnect_message": "lost; next try in ${reconnectInterval} ms",
        "reconnect_interval": 1000,
    }
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
    restarted = start_server(
        "tests.apps.client_app:app", port=port, env=env, extra_args=["--root-path", "/app"]
    )
    wait_for_port(restarted.port)
    wait_until(lambda: bool(tab.page.evaluate(CONNECTED)), 20, tab, "the reconnect")
    settle(tab, 2)
    assert tab.reloads == 1
    tab.assert_on_a_real_page(url)


# --- the client's parts, unit-tested in the browser (tests/js/) ---------------------------------------------


@pytest.mark.browser
def test_the_clients_parts_pass_their_unit_tests_in_chromium(new_context: Callable[..., Any]) -> None:
    """tests/js/cases.js against distreload/client.js: morph pairing and what it keeps, the script check,
    globs, cache-busters, plan merging, versions, options, the overlay's style isolation."""
    files = {
        "/runner.html": UNIT_TESTS / "runner.html",
        "/cases.js": UNIT_TESTS / "cases.js",
        "/globs.json": UNIT_TESTS / "globs.json",
        "/client.js": ROOT / "distreload" / "client.js",
    }

    def serve(route: Any) -> None:
        path, query = urllib.parse.urlsplit(route.request.url)[2:4]
        if path == "/style.css":
            css = urllib.parse.parse_qs(query)["css"][0]
            route.fulfill(status=200, body=css, content_type="text/css")
            return
        if path not in files:
            route.fulfill(status=404, body="")
            return
        kind = mimetypes.guess_type(str(files[path]))[0] or "text/plain"
        route.fulfill(status=200, body=files[path].read_bytes(), content_type=kind)

    context = new_context()
    # localhost is a secure context, as the Web Locks API that tabs share their stream through needs; nothing
    # listens on the port: every request is answered by the route.
    context.route(f"{UNIT_ORIGIN}/**", serve)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{UNIT_ORIGIN}/runner.html")
    page.wait_for_function("window.unitResults", timeout=20_000)
    results = page.evaluate("window.unitResults")
    failures = [f"{result['name']}: {result['error']}" for result in results if not result["ok"]]
    assert not errors, errors
    assert not failures, "\n\n".join(failures)
    assert len(results) >= 25
    print(f"\n{len(results)} client unit tests passed in Chromium")


# --- the overlay: never onto an error page; the indicator while the stream is lost -------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_a_failing_or_stopped_server_shows_the_overlay_and_pages_reload_once_when_it_answers_again(
    start_server: ServerFactory, new_context: Callable[..., Any]
) -> None:
    port = free_port()
    server = start_server("tests.apps.client_app:app", port=port)
    context = new_context(viewport={"width": 1100, "height": 680})
    urls = [f"{server.base_url}/page/{name}" for name in ("a", "b")]
    tabs = [open_tab(context, url) for url in urls]
    assert all(tab.ui() == {"overlay": None, "indicator": None} for tab in tabs)

    # A reload while every page answers 500: each tab stays on its page and says why, in the overlay.
    post(server.base_url + "/failure/500")
    post(server.base_url + "/publish")
    wait_until(lambda: all(tab.ui()["overlay"] for tab in tabs), 10, tabs[0], "the overlay")
    for tab in tabs:
        overlay = str(tab.ui()["overlay"])
        assert "the server answered 500 Internal Server Error" in overlay, overlay
        assert "Traceback (most recent call last):" in overlay and "TemplateSyntaxError" in overlay, overlay
        assert "waiting for the server" in overlay, overlay
        assert tab.reloads == 0 and tab.page.title() == "distreload client page"
    if WRITE_DOCS:
        (ROOT / "docs").mkdir(exist_ok=True)
        tabs[0].page.screenshot(path=str(ROOT / "docs" / "overlay.png"))

    # The server stops: the overlay says nothing answers, and the indicator shows the stream is lost.
    server.stop()
    wait_until(
        lambda: all(
            "no answer from the server" in str(tab.ui()["overlay"])
            and "connection lost" in str(tab.ui()["indicator"])
            for tab in tabs
        ),
        15,
        tabs[0],
        "the overlay and the indicator of a stopped server",
    )
    assert reload_counts(tabs) == [0, 0]

    # A mended server on the same address: the overlay goes and each page reloads, once.
    start_server("tests.apps.client_app:app", port=port)
    took = wait_until(lambda: reload_counts(tabs) == [1, 1], 30, tabs[0], "the reload once it answers")
    settle(tabs[0], 2)
    assert reload_counts(tabs) == [1, 1]
    for tab, url in zip(tabs, urls, strict=True):
        tab.assert_on_a_real_page(url)
        tab.status()
        assert tab.ui() == {"overlay": None, "indicator": None}
        assert any("waits: no answer from the server" in line for line in tab.console), tab.console
    print(f"\nreloaded {took:.2f} s after the server was started again")


# --- pause ---------------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_a_paused_tab_shows_it_and_catches_up_once_on_resume_whatever_went_by(
    start_server: ServerFactory, new_context: Callable[..., Any]
) -> None:
    server = start_server("tests.apps.client_app:app")
    context = new_context()
    running = open_tab(context, f"{server.base_url}/page/running")
    by_url = open_tab(context, f"{server.base_url}/page/by-url?distreload=off")
    by_console = open_tab(context, f"{server.base_url}/page/by-console")
    by_console.evaluate("distreload.pause()")
    paused = [by_url, by_console]
    for tab in paused:
        assert tab.status()["paused"]
        assert "distreload paused" in str(tab.ui()["indicator"])

    post(server.base_url + "/publish")
    wait_until(lambda: running.reloads == 1, 10, running, "the running tab's first reload")
    version = post(server.base_url + "/publish")["version"]
    wait_until(lambda: running.reloads == 2, 10, running, "the running tab's second reload")
    settle(running, 0.5)
    assert reload_counts(paused) == [0, 0]
    for tab in paused:
        assert "a reload is waiting" in str(tab.ui()["indicator"])

    for tab in paused:
        tab.evaluate("distreload.resume()")
    wait_until(lambda: reload_counts(paused) == [1, 1], 10, running, "one catch-up reload each")
    settle(running, 1)
    assert reload_counts(paused) == [1, 1]
    for tab in paused:
        status = tab.status()
        assert status["version"] == version and not status["paused"]
        assert tab.ui()["indicator"] is None
    # Resuming dropped ?distreload=off, so the catch-up reload did not land on a paused page again.
    assert by_url.page.url == f"{server.base_url}/page/by-url"

    post(server.base_url + "/publish")
    wait_until(lambda: reload_counts([running, *paused]) == [3, 2, 2], 10, running, "a reload of all three")


# --- morph, spread, match, images: pages on two hosts behind Redis ---------------------------------------

PAGES_APP = "tests.apps.cluster_pages_app:app"
PUBLISH_TOKEN = "token-of-the-browser-tests"


def start_page_hosts(
    start_server: ServerFactory,
    redis_url: str,
    namespace: str,
    *,
    ports: list[int] | None = None,
    subscribers: int | None = None,
) -> list[ServerProcess]:
    """Two processes of tests/apps/cluster_pages_app.py (or one on each of ``ports``), one uvicorn worker
    each, on one Redis and namespace: a page's stream lands on the worker of the host it was loaded from,
    never left to chance. Returns once ``subscribers`` workers (default: these) are subscribed."""
    env = {
        "DISTRELOAD_REDIS_URL": redis_url,
        "DISTRELOAD_NAMESPACE": namespace,
        "DISTRELOAD_TOKEN": PUBLISH_TOKEN,
    }
    servers = [
        start_server(
            PAGES_APP, env=env, wait=False, port=port, extra_args=["--timeout-graceful-shutdown", "1"]
        )
        for port in ports or [free_port(), free_port()]
    ]
    for server in servers:  # started side by side, waited for together
        wait_for_port(server.port, 30, server.process)
    wait_for_subscribers(redis_url, namespace, subscribers or len(servers))
    return servers


def control(server: ServerProcess, what: str, value: object) -> None:
    post(f"{server.base_url}/control/{what}/{value}")


def publish_event(server: ServerProcess, kind: str, **fields: Any) -> dict[str, Any]:
    """Publish through send_reload_signal_async() in a worker of ``server``; the answer says when."""
    return post(server.base_url + "/control/publish", {"kind": kind, **fields})


def publish_over_http(server: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    """Publish through distreload's own endpoint, with the token, as ``distreload publish --url`` does."""
    request = urllib.request.Request(
        server.base_url + "/---distreload---/publish",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {PUBLISH_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


PREPARE_MORPH_PAGE = """(name) => {
  document.getElementById("name").value = name;
  document.getElementById("notes").value = "notes of " + name;
  document.getElementById("more").open = true;
  document.getElementById("counter").click();
  document.getElementById("counter").click();
  window.counterVariable = 41;
  const field = document.getElementById("name");
  field.focus();
  field.setSelectionRange(3, 5);
  window.scrollTo(0, 1200);
}"""

READ_MORPH_PAGE = """() => ({
  title: document.title, heading: document.getElementById("title").textContent,
  note: document.getElementById("note").textContent,
  noteRevision: document.getElementById("note").getAttribute("data-revision"),
  noteWeight: getComputedStyle(document.getElementById("note")).fontWeight,
  headingColour: getComputedStyle(document.getElementById("title")).color,
  bodyClass: document.body.className, htmlRevision: document.documentElement.getAttribute("data-revision"),
  banner: document.getElementById("banner") && document.getElementById("banner").textContent,
  items: Array.from(document.querySelectorAll("#list li")).map((item) => item.id + ":" + item.textContent),
  token: document.getElementById("token").value,
  name: document.getElementById("name").value, notes: document.getElementById("notes").value,
  focused: document.activeElement && document.activeElement.id,
  caret: [document.getElementById("name").selectionStart, document.getElementById("name").selectionEnd],
  detailsOpen: document.getElementById("more").open, scrollY: window.scrollY,
  clicks: window.clicks, counterVariable: window.counterVariable, scriptRuns: window.scriptRuns,
  sheets: document.querySelectorAll('link[rel="stylesheet"]').length,
  scripts: document.scripts.length,
})"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.redis
def test_a_morph_on_two_workers_updates_pages_in_place_keeping_what_the_reader_did(
    start_server: ServerFactory, new_context: Callable[..., Any], shared_redis_url: str, namespace: str
) -> None:
    hosts = start_page_hosts(start_server, shared_redis_url, namespace)
    server = hosts[0]  # where the test publishes; the pages on the other host hear of it through Redis
    contexts = [new_context(), new_context()]
    tabs = [
        open_tab(contexts[index % 2], f"{host.base_url}/morph/{index}")
        for index, host in enumerate(hosts * 2)
    ]
    assert len({tab.status()["worker"] for tab in tabs}) == 2
    # The same page from the app's second DistReload, the one with {"overlay": false, "indicator": false}.
    quiet = open_tab(new_context(), f"{hosts[1].base_url}/quiet/morph/quiet")
    assert json.loads(
        str(quiet.page.get_attribute("script[data-distreload]", "data-distreload-options"))
    ) == {"overlay": False, "indicator": False}
    for index, tab in enumerate(tabs):
        tab.page.evaluate(PREPARE_MORPH_PAGE, f"typed by reader {index}")
    before = tabs[0].evaluate(READ_MORPH_PAGE)
    assert before["headingColour"] == "rgb(0, 0, 0)" and before["noteWeight"] == "400"

    control(server, "revision", 2)
    published = publish_event(server, "morph")
    everyone = [*tabs, quiet]
    took = wait_until(
        lambda: all(tab.status()["morphs"] == 1 for tab in everyone), 15, tabs[0], "every page to morph"
    )
    for index, tab in enumerate(tabs):
        state = tab.evaluate(READ_MORPH_PAGE)
        # What the server changed: text, attributes, elements added, removed and reordered, head and sheet.
        assert (state["title"], state["heading"], state["note"]) == (
            "distreload morph 2",
            "Revision 2",
            "second note",
        )
        assert (state["noteRevision"], state["bodyClass"], state["htmlRevision"]) == ("2", "revision-2", "2")
        assert state["banner"] == "a new banner"
        assert state["items"] == ["item-0:zero", "item-2:two", "item-1:one, edited"]
        assert state["token"] == "token-2"  # a field the reader never touched takes the new value
        assert state["noteWeight"] == "700" and state["headingColour"] == "rgb(200, 0, 0)"
        assert state["sheets"] == 1 and state["scripts"] == before["scripts"]
        # What the reader did: typed text, focus and caret, open details, scroll, JavaScript state.
        assert state["name"] == f"typed by reader {index}"
        assert state["notes"] == f"notes of typed by reader {index}"
        assert state["focused"] == "name" and state["caret"] == [3, 5]
        assert state["detailsOpen"] and state["scrollY"] == 1200
        assert (state["clicks"], state["counterVariable"], state["scriptRuns"]) == (2, 41, 1)
        tab.page.evaluate('document.getElementById("counter").click()')
        assert tab.evaluate("window.clicks") == 3  # the listener on the unchanged button still works
        assert tab.reloads == 0 and tab.status()["version"] == published["version"]
        assert any(line.startswith("[distreload] morphed the page for") for line in tab.console)
    print(
        f"\n{len(tabs)} pages on 2 workers morphed within {took:.2f} s of the publish, scroll 1200 px, "
        "typed text, caret, open details and script state kept"
    )

    # A morph while the pages answer 500 waits behind the overlay (the quiet page shows none), then
    # happens once the server mends.
    control(server, "failure", 500)
    control(server, "revision", 1)
    publish_event(server, "morph")
    wait_until(
        lambda: all("answered 500" in str(tab.ui()["overlay"]) for tab in tabs),
        10,
        tabs[0],
        "the overlay on every page",
    )
    assert quiet.ui() == {"overlay": None, "indicator": None}
    assert quiet.evaluate("window.__distreload.pending") == "morph"
    control(server, "failure", 0)
    wait_until(
        lambda: all(tab.status()["morphs"] == 2 for tab in everyone),
        15,
        tabs[0],
        "the morph once the server mends",
    )
    for index, tab in enumerate(tabs):
        # The outgoing sheet stays in force until the incoming one has loaded (no unstyled flash).
        wait_until(
            lambda tab=tab: tab.evaluate(READ_MORPH_PAGE)["headingColour"] == "rgb(0, 0, 0)",
            10,
            tab,
            "the new stylesheet",
        )
        state = tab.evaluate(READ_MORPH_PAGE)
        assert state["heading"] == "Revision 1" and state["banner"] is None and state["scrollY"] == 1200
        assert state["name"] == f"typed by reader {index}"
        assert tab.ui() == {"overlay": None, "indicator": None} and tab.reloads == 0

    # A changed script cannot be morphed in: every page reloads in full, once, and says why.
    control(server, "revision", "script")
    publish_event(server, "morph")
    wait_until(lambda: reload_counts(everyone) == [1] * len(everyone), 15, tabs[0], "a full reload")
    settle(tabs[0], 1)
    assert reload_counts(everyone) == [1] * len(everyone)
    for tab in everyone:
        assert tab.evaluate("window.changedScript") is True and tab.evaluate("window.scriptRuns") == 1
        assert any("a full reload instead of a morph: a script changed" in line for line in tab.console)

    # The second host restarts: while its pages have no stream they show the indicator (the quiet one,
    # indicator: false, shows nothing); once the stream is back it goes, and nothing reloads. The morph
    # published meanwhile reaches only the first host's pages; the others, back on the stream one version
    # behind, are sent that morph again and apply it in place.
    hosts[1].stop()
    on_second_host = [tab for tab in tabs if tab.page.url.startswith(hosts[1].base_url)]
    on_first_host = [tab for tab in tabs if tab not in on_second_host]
    wait_until(
        lambda: all("connection lost" in str(tab.ui()["indicator"]) for tab in on_second_host),
        10,
        tabs[0],
        "the indicator on the second host's pages",
    )
    assert quiet.ui() == {"overlay": None, "indicator": None} and not quiet.status_now()["connected"]
    control(server, "revision", 3)
    assert publish_event(server, "morph")["receivers"] == 1
    wait_until(lambda: all(tab.status()["morphs"] == 1 for tab in on_first_host), 15, tabs[0], "the morph")
    assert all(tab.status_now()["morphs"] == 0 for tab in [*on_second_host, quiet])
    start_page_hosts(start_server, shared_redis_url, namespace, ports=[hosts[1].port], subscribers=2)
    took = wait_until(
        lambda: all(
            tab.ui()["indicator"] is None
            and tab.status_now()["connected"]
            and tab.status_now()["morphs"] == 1
            for tab in [*on_second_host, quiet]
        ),
        15,
        tabs[0],
        "the stream back and the missed morph",
    )
    assert reload_counts(everyone) == [1] * len(everyone)
    for tab in everyone:
        assert tab.text("#title") == "Revision 3" and tab.evaluate("window.scriptRuns") == 1
    print(f"the second host's pages applied the morph they missed {took:.2f} s after their host was back")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.redis
def test_a_morph_reloads_in_full_when_the_page_now_redirects_or_is_no_longer_html(
    start_server: ServerFactory, new_context: Callable[..., Any], shared_redis_url: str, namespace: str
) -> None:
    hosts = start_page_hosts(start_server, shared_redis_url, namespace)
    server, other = hosts  # the test publishes on the first host; the redirected page is on the other
    context = new_context()
    redirected = open_tab(context, f"{other.base_url}/morph/redirected")
    control(server, "revision", "redirect")
    publish_event(server, "morph")
    wait_until(lambda: redirected.reloads == 1, 10, redirected, "the reload after a redirect")
    assert redirected.page.url == f"{other.base_url}/moved/redirected"
    assert any(
        f"the page now redirects to {other.base_url}/moved/redirected" in line for line in redirected.console
    ), redirected.console

    control(server, "revision", 1)
    json_page = open_tab(context, f"{server.base_url}/morph/json")
    assert json_page.status()["worker"] != redirected.status()["worker"]
    control(server, "revision", "json")
    publish_event(server, "morph")
    wait_until(lambda: json_page.reloads == 1, 10, json_page, "the reload of a page that became JSON")
    assert any("the page is no longer HTML (application/json)" in line for line in json_page.console)
    wait_until(lambda: redirected.status()["morphs"] == 1, 10, redirected, "the moved page to morph")
    assert redirected.reloads == 1  # /moved/ is still HTML: it morphs instead


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.redis
def test_kiosk_screens_on_two_workers_reload_spread_over_the_window_and_only_where_the_glob_matches(
    start_server: ServerFactory, new_context: Callable[..., Any], shared_redis_url: str, namespace: str
) -> None:
    hosts = start_page_hosts(start_server, shared_redis_url, namespace)
    server = hosts[0]
    # Two browsers of seven screens, five of the lobby and two of the hall, each screen on either host. The
    # hall's name is not ASCII: its pages' location.pathname holds it percent-encoded ("/kiosk/hall%C3%A9/").
    lobby: list[Tab] = []
    hall: list[Tab] = []
    for browser_index in range(2):
        context = new_context()
        for index in range(7):
            group, screens = ("lobby", lobby) if index < 5 else ("hallé", hall)
            host = hosts[index % 2]
            screens.append(open_tab(context, f"{host.base_url}/kiosk/{group}/{browser_index}-{index}"))
    assert len({tab.status()["worker"] for tab in lobby}) == 2
    known = len(get_json(server.base_url + "/control/arrivals"))

    published = publish_event(server, "reload", spread=3, match="/kiosk/lobby/*")
    took = wait_until(lambda: reload_counts(lobby) == [1] * 10, 15, lobby[0], "every lobby screen to reload")
    settle(lobby[0], 1)
    assert reload_counts(lobby) == [1] * 10
    assert reload_counts(hall) == [0] * len(hall)
    for tab in hall:  # not for them, but seen: no later hello takes it for a missed reload
        assert tab.status()["version"] == published["version"]
        assert any("is for /kiosk/lobby/*, not this page" in line for line in tab.console)

    # Each screen checks its page (a fetch), then reloads it (a navigation): the first request of each
    # screen after the publish shows when it acted.
    arrivals = get_json(server.base_url + "/control/arrivals")[known:]
    first: dict[str, float] = {}
    for arrival in arrivals:
        first.setdefault(arrival["path"], arrival["t"])
    assert sorted(first) == sorted(urllib.parse.urlsplit(tab.page.url).path for tab in lobby)
    offsets = sorted(moment - published["published_at"] for moment in first.values())
    assert offsets[0] >= 0, offsets
    assert offsets[-1] - offsets[0] >= 1.2, offsets  # ten screens spread over a good part of 3 s
    assert offsets[-1] <= 3 + 1.5, offsets
    navigations = [arrival for arrival in arrivals if arrival["mode"] == "navigate"]
    assert len(navigations) == 10
    print(
        f"\n10 lobby screens acted {offsets[0]:.2f} to {offsets[-1]:.2f} s after a publish with spread 3 s "
        f"(median {offsets[5]:.2f} s); all reloaded within {took:.2f} s; hall screens untouched"
    )

    # The hall's turn, published the way a deploy script would: over HTTP, with the token, to the other host;
    # its glob typed with the letter itself, as a person writes it.
    answer = publish_over_http(hosts[1], {"kind": "reload", "match": "/kiosk/hallé/*"})
    assert answer["receivers"] == 2
    wait_until(lambda: reload_counts(hall) == [1] * len(hall), 10, hall[0], "every hall screen to reload")
    settle(hall[0], 0.5)
    assert reload_counts(hall) == [1] * len(hall) and reload_counts(lobby) == [1] * 10


IMAGE_STATE = """() => {
  const image = (id) => document.getElementById(id);
  return {
    plain: [image("plain").naturalWidth, image("plain").getAttribute("src")],
    responsive: [image("responsive").naturalWidth, image("responsive").currentSrc,
                 image("responsive").getAttribute("srcset")],
    inline: image("inline").style.backgroundImage,
    sheet: getComputedStyle(image("sheet")).backgroundImage,
    slow: [image("slow").naturalWidth, image("slow").getAttribute("src")],
    elsewhere: image("elsewhere").getAttribute("src"),
  };
}"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.redis
def test_an_images_reload_refreshes_img_srcset_and_backgrounds_in_place_once_the_new_image_loaded(
    start_server: ServerFactory, new_context: Callable[..., Any], shared_redis_url: str, namespace: str
) -> None:
    hosts = start_page_hosts(start_server, shared_redis_url, namespace)
    server = hosts[0]
    context = new_context()
    tabs = [open_tab(context, f"{host.base_url}/images/wall") for host in hosts]
    assert len({tab.status()["worker"] for tab in tabs}) == 2
    assert all(tab.evaluate(IMAGE_STATE)["plain"] == [10, "/img/plain.svg"] for tab in tabs)

    control(server, "image-revision", 2)
    version = publish_event(server, "images")["version"]
    buster = f"distreload={version}"
    swapped = wait_until(
        lambda: all(tab.evaluate(IMAGE_STATE)["plain"][0] == 20 for tab in tabs),
        10,
        tabs[0],
        "the new plain image",
    )
    # The slow image (1.5 s to answer) still shows the old one: nothing is swapped before it loaded.
    for tab in tabs:
        state = tab.evaluate(IMAGE_STATE)
        assert state["slow"] == [10, "/img/slow.svg"], state
    slow = swapped + wait_until(
        lambda: all(tab.evaluate(IMAGE_STATE)["slow"][0] == 20 for tab in tabs), 10, tabs[0], "the slow image"
    )
    states = [tab.evaluate(IMAGE_STATE) for tab in tabs]
    for state in states:
        assert state["responsive"][0] == 20 and buster in state["responsive"][1], state
        assert state["responsive"][2].count(buster) == 2, state
        assert buster in state["inline"] and buster in state["sheet"], state
        assert buster in state["elsewhere"]
    assert reload_counts(tabs) == [0, 0]

    # Only the paths named (`distreload publish --images PATH`): the plain image is refreshed, the others
    # keep what they had.
    control(server, "image-revision", 3)
    published = cli_published(shared_redis_url, namespace, "--images", "/img/plain.svg")
    assert published["receivers"] == 2
    wait_until(
        lambda: all(tab.evaluate(IMAGE_STATE)["plain"][0] == 30 for tab in tabs),
        10,
        tabs[0],
        "the named image",
    )
    settle(tabs[0], 0.5)
    for tab, state in zip(tabs, states, strict=True):
        after = tab.evaluate(IMAGE_STATE)
        assert (after["elsewhere"], after["inline"], after["sheet"]) == (
            state["elsewhere"],
            state["inline"],
            state["sheet"],
        )
    assert reload_counts(tabs) == [0, 0]
    arrivals = get_json(server.base_url + "/control/arrivals")
    for tab in tabs:
        worker = tab.status()["worker"]
        requested = {
            arrival["path"]
            for arrival in arrivals
            if buster in arrival["query"] and arrival["worker"] == worker
        }
        assert requested == {
            f"/img/{name}.svg" for name in ("plain", "responsive", "inline", "sheet", "slow", "elsewhere")
        }
    print(
        f"\nimages on 2 workers swapped in place {swapped:.2f} s after the publish, the slow one {slow:.2f} s"
    )

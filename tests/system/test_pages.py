"""``distreload publish --wait`` against real pages in Chromium, served by two hosts (two server processes)
on one Redis: every page applies (exit 0), a page whose server answers 500 is named (exit 3), a page that
does not answer in time (exit 4), a paused tab, a tab the match leaves out, a tab closed mid-wait, the same
through ``--url --token``, ``status --pages`` and the fleet page; a tab still loading at publish time. The
same over two network hosts of two workers each: tests/system/test_network.py."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from distreload.protocol import state_key

from ..conftest import ServerFactory, ServerProcess, distreload_cli, wait_for_port
from ..sse import SSEReader
from ..test_client import Tab, open_tab, wait_for_subscribers
from . import redis_servers
from .redis_apps import Fleet, start_fleet
from .redis_servers import RedisCluster3, SentinelSet

pytestmark = pytest.mark.redis

SCREENS_APP = "tests.apps.screens_app:app"
TOKEN = "screens-token"
EXIT_FAILED, EXIT_TIMED_OUT = 3, 4


def start_hosts(
    start_server: ServerFactory, redis_url: str, namespace: str, count: int = 2
) -> list[ServerProcess]:
    env = {"DISTRELOAD_REDIS_URL": redis_url, "DISTRELOAD_NAMESPACE": namespace}
    servers = [
        start_server(SCREENS_APP, env=env, wait=False, extra_args=["--timeout-graceful-shutdown", "1"])
        for _ in range(count)
    ]
    for server in servers:
        wait_for_port(server.port, 30, server.process)
    wait_for_subscribers(redis_url, namespace, count)
    return servers


def control(base_url: str, what: str, name: str, value: object) -> None:
    """Tell the screens app (on every host: the setting lives in Redis) how the screen ``name`` answers."""
    request = urllib.request.Request(f"{base_url}/control/{what}/{name}/{value}", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def page_count(redis_url: str, namespace: str) -> dict[str, int]:
    """Pages per path, as ``distreload status --pages --json`` reads them from the workers' tables."""
    done = distreload_cli("status", "--pages", "--json", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    paths = json.loads(done.stdout)["paths"]
    return {path: sum(entry["versions"].values()) for path, entry in paths.items()}


def wait_for_pages(redis_url: str, namespace: str, expected: dict[str, int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (seen := page_count(redis_url, namespace)) != expected:
        assert time.monotonic() < deadline, f"the workers list {seen}, not {expected}"
        time.sleep(0.2)


def publish_waiting(redis_url: str, namespace: str, *extra: str) -> tuple[int, dict[str, Any]]:
    done = distreload_cli(
        "publish", "--redis-url", redis_url, "--namespace", namespace, "--json", "--wait", *extra, timeout=90
    )
    assert done.returncode in (0, EXIT_FAILED, EXIT_TIMED_OUT), done.stderr
    return done.returncode, json.loads(done.stdout)["pages"]


@pytest.fixture
def screens(
    browser: Any, start_server: ServerFactory, shared_redis_url: str, namespace: str
) -> Iterator[Callable[[ServerProcess, str], Tab]]:
    """Opens a screen in a browser of its own (no stream shared with another screen)."""
    contexts: list[Any] = []

    def open_screen(server: ServerProcess, path: str) -> Tab:
        context = browser.new_context()
        contexts.append(context)
        return open_tab(context, server.base_url + path)

    yield open_screen
    for context in contexts:
        context.close()


def paths_of(listed: list[dict[str, str]]) -> list[str]:
    return sorted(page["path"] for page in listed)


@pytest.mark.browser
def test_publish_wait_counts_every_page_over_two_hosts(
    browser: Any,
    screens: Callable[[ServerProcess, str], Tab],
    start_server: ServerFactory,
    shared_redis_url: str,
    namespace: str,
) -> None:
    host_a, host_b = start_hosts(start_server, shared_redis_url, namespace)
    lobby_one = screens(host_a, "/screen/lobby/one")
    # Two tabs of one browser share one stream (the leader's); each is a page of its own.
    shared = browser.new_context()
    try:
        lobby_two = open_tab(shared, host_a.base_url + "/screen/lobby/two")
        lobby_three = open_tab(shared, host_a.base_url + "/screen/lobby/three")
        bar = screens(host_b, "/screen/bar/four")
        lobby_five = screens(host_b, "/screen/lobby/five")
        everyone = {
            "/screen/lobby/one": 1,
            "/screen/lobby/two": 1,
            "/screen/lobby/three": 1,
            "/screen/bar/four": 1,
            "/screen/lobby/five": 1,
        }
        wait_for_pages(shared_redis_url, namespace, everyone)
        # An idle page reports nothing (its local look once a second finds nothing changed).
        reports: list[str] = []

        def note_report(request: Any) -> None:
            if request.url.endswith("/---distreload---/page"):
                reports.append(request.url)

        for tab in (lobby_one, lobby_two, lobby_three):
            tab.page.on("request", note_report)
        lobby_one.page.wait_for_timeout(2500)
        assert reports == []

        # Every page applies: exit 0, and the times to applied are given.
        status, pages = publish_waiting(shared_redis_url, namespace, "20")
        assert status == 0, pages
        assert (pages["outcome"], pages["applied"], pages["expected"]) == ("applied", 5, 5)
        assert pages["p50_ms"] is not None and pages["p99_ms"] >= pages["p50_ms"]
        for tab in (lobby_one, lobby_two, lobby_three, bar, lobby_five):
            assert tab.status()["version"] == pages["version"]
            assert tab.reloads == 1, tab.navigations

        # A page whose server answers 500 is named, with its worker and the status: exit 3.
        control(host_b.base_url, "fail", "five", 500)
        status, pages = publish_waiting(shared_redis_url, namespace, "20")
        assert status == EXIT_FAILED, pages
        assert (pages["outcome"], pages["applied"], pages["expected"]) == ("failed", 4, 5)
        [failed] = pages["failed"]
        assert failed["path"] == "/screen/lobby/five" and "500" in failed["reason"]
        assert failed["worker"] == lobby_five.status_now()["worker"]
        control(host_b.base_url, "fail", "five", 0)
        lobby_five.page.wait_for_function(
            "window.__distreload && !window.__distreload.overlay", timeout=20_000
        )

        # A paused tab and one the match leaves out do not hold the wait: listed, not counted.
        reported = len(reports)
        lobby_two.page.evaluate("distreload.pause()")
        wait_for_state(shared_redis_url, namespace, "/screen/lobby/two", "paused")
        assert len(reports) > reported  # the pause was reported (the listener does see reports)
        status, pages = publish_waiting(shared_redis_url, namespace, "20", "--match", "/screen/lobby/*")
        assert status == 0, pages
        assert (pages["applied"], pages["expected"], pages["excluded"]) == (3, 3, 1)
        assert paths_of(pages["paused"]) == ["/screen/lobby/two"]
        lobby_two.page.evaluate("distreload.resume()")

        # A page that does not answer within the wait: exit 4, named as unanswered.
        control(host_a.base_url, "slow", "one", 6)
        status, pages = publish_waiting(shared_redis_url, namespace, "2")
        assert status == EXIT_TIMED_OUT, pages
        assert paths_of(pages["unanswered"]) == ["/screen/lobby/one"]
        assert pages["applied"] == 4
        lobby_one.page.wait_for_function(
            "v => window.__distreload && window.__distreload.version === v && !window.__distreload.reloading",
            arg=pages["version"],
            timeout=30_000,
        )

        # A tab closed mid-wait (its reload still fetching the slow page) leaves the count at once.
        waiting = WaitInBackground(shared_redis_url, namespace, "30")
        time.sleep(1.5)  # the other pages apply, the slow one is still being fetched
        lobby_one.page.close()
        status, pages = waiting.result()
        assert status == 0, pages
        assert paths_of(pages["closed"]) == ["/screen/lobby/one"]
        assert (pages["applied"], pages["expected"]) == (4, 4)
        assert pages["elapsed"] < 6, "the closed page did not hold the wait"
        control(host_a.base_url, "slow", "one", 0)

        # Through the app's endpoint with the token, as a CI runner that cannot reach Redis does.
        done = distreload_cli(
            "publish", "--url", host_b.base_url, "--wait", "20", "--json", env={"DISTRELOAD_TOKEN": TOKEN}
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["pages"]["applied"] == 4

        # With a spread the wait counts from the end of the window: 1 s after a 4 s spread is enough.
        status, pages = publish_waiting(shared_redis_url, namespace, "1", "--spread", "4")
        assert status == 0, pages
        assert (pages["applied"], pages["expected"]) == (4, 4)
    finally:
        shared.close()


@pytest.mark.browser
def test_a_tab_still_loading_at_publish_time_is_counted_once_it_catches_up(
    browser: Any,
    screens: Callable[[ServerProcess, str], Tab],
    start_server: ServerFactory,
    shared_redis_url: str,
    namespace: str,
) -> None:
    """The tab's page came before the reload, its script after: it connects behind, gets the reload on
    connecting and reloads, onto the same worker again (one worker here, so always). The wait counts it,
    as it counts a tab that resumes from a pause and reloads just as the next reload arrives."""
    [server] = start_hosts(start_server, shared_redis_url, namespace, count=1)
    slow = screens(server, "/screen/lobby/slow")  # holds the wait open while the late tab catches up
    wait_for_pages(shared_redis_url, namespace, {"/screen/lobby/slow": 1})
    control(server.base_url, "slow", "slow", 2)
    late_context = browser.new_context()
    held: list[Any] = []

    def hold_the_first(route: Any) -> None:
        if held:
            route.continue_()  # the next document's script
        else:
            held.append(route)

    try:
        late_context.route("**/client.js*", hold_the_first)
        late = Tab(late_context.new_page())
        late.page.goto(server.base_url + "/screen/lobby/late", wait_until="commit")
        late.page.wait_for_timeout(500)
        assert len(held) == 1 and late.page.evaluate("window.__distreload") is None
        waiting = WaitInBackground(shared_redis_url, namespace, "30")
        deadline = time.monotonic() + 20
        while not slow.page.evaluate("window.__distreload.reloading"):  # the reload reached the worker
            assert time.monotonic() < deadline, "the reload never reached the slow screen"
            slow.page.wait_for_timeout(50)
        held[0].continue_()
        while waiting.thread.is_alive():  # route handlers run while Playwright is called
            late.page.wait_for_timeout(100)
        status, pages = waiting.result()
        assert status == 0, json.dumps(pages)
        assert (pages["applied"], pages["expected"]) == (2, 2), json.dumps(pages)
        assert late.status()["version"] == pages["version"] and late.reloads == 1, late.navigations
    finally:
        control(server.base_url, "slow", "slow", 0)
        late_context.close()


@pytest.mark.browser
@pytest.mark.parametrize("server_name", ["uvicorn", "gunicorn"])
def test_publish_wait_counts_every_page_once_when_two_workers_share_one_port(
    server_name: str,
    browser: Any,
    screens: Callable[[ServerProcess, str], Tab],
    start_server: ServerFactory,
    shared_redis_url: str,
    namespace: str,
) -> None:
    """Each connection goes to either worker: a tab's reports land on both, and its new document after a
    reload may listen through the other worker's stream. Every page is still listed and counted once."""
    env = {"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    quick_exit = (
        ["--timeout-graceful-shutdown", "1"] if server_name == "uvicorn" else ["--graceful-timeout", "1"]
    )
    server = start_server(
        SCREENS_APP, workers=2, server=server_name, env=env, wait=False, extra_args=quick_exit
    )
    wait_for_port(server.port, 30, server.process)
    wait_for_subscribers(shared_redis_url, namespace, 2)
    # Three tabs of one browser share one stream; three more have a browser each.
    shared = browser.new_context()
    try:
        together = [open_tab(shared, f"{server.base_url}/screen/shared/{n}") for n in ("one", "two", "three")]
        alone = [screens(server, f"/screen/alone/{n}") for n in ("four", "five", "six")]
        tabs = {tab.page.url.removeprefix(server.base_url): tab for tab in together + alone}
        wait_for_pages(shared_redis_url, namespace, dict.fromkeys(tabs, 1))

        status, pages = publish_waiting(shared_redis_url, namespace, "20")
        assert status == 0, json.dumps(pages)
        assert (pages["outcome"], pages["applied"], pages["expected"]) == ("applied", 6, 6), json.dumps(pages)
        for tab in tabs.values():
            assert tab.status()["version"] == pages["version"]
            assert tab.reloads == 1, tab.navigations
        wait_for_pages(shared_redis_url, namespace, dict.fromkeys(tabs, 1))  # once each, wherever listed

        # The tab that holds the shared stream goes: the others listen through a new one, counted once.
        [holder] = [tab for tab in together if tab.page.evaluate("window.__distreload.leader")]
        holder.page.close()
        del tabs[holder.page.url.removeprefix(server.base_url)]
        wait_for_pages(shared_redis_url, namespace, dict.fromkeys(tabs, 1))
        status, pages = publish_waiting(shared_redis_url, namespace, "20")
        assert status == 0, json.dumps(pages)
        assert (pages["applied"], pages["expected"], pages["closed_count"]) == (5, 5, 0), json.dumps(pages)
        wait_for_pages(shared_redis_url, namespace, dict.fromkeys(tabs, 1))

        # A tab closed mid-wait (its reload still fetching the slow page) is named closed, not awaited.
        control(server.base_url, "slow", "four", 6)
        waiting = WaitInBackground(shared_redis_url, namespace, "30")
        time.sleep(1.5)  # the other pages apply, the slow one is still being fetched
        tabs.pop("/screen/alone/four").page.close()
        status, pages = waiting.result()
        assert status == 0, json.dumps(pages)
        assert paths_of(pages["closed"]) == ["/screen/alone/four"]
        assert (pages["applied"], pages["expected"]) == (4, 4), json.dumps(pages)
        assert pages["elapsed"] < 6, "the closed page held the wait"
        control(server.base_url, "slow", "four", 0)
    finally:
        shared.close()


def wait_for_state(redis_url: str, namespace: str, path: str, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = distreload_cli(
            "status", "--pages", "--json", "--redis-url", redis_url, "--namespace", namespace
        )
        entry = json.loads(done.stdout)["paths"].get(path, {})
        if entry.get("states", {}).get(state):
            return
        assert time.monotonic() < deadline, f"{path} never reported {state}: {entry}"
        time.sleep(0.2)


class WaitInBackground:
    """``distreload publish --wait`` running while the test does something to the pages."""

    def __init__(self, redis_url: str, namespace: str, *extra: str) -> None:
        self.outcome: tuple[int, dict[str, Any]] | None = None
        self.thread = threading.Thread(target=self._run, args=(redis_url, namespace, *extra))
        self.thread.start()

    def _run(self, redis_url: str, namespace: str, *extra: str) -> None:
        self.outcome = publish_waiting(redis_url, namespace, *extra)

    def result(self) -> tuple[int, dict[str, Any]]:
        self.thread.join(90)
        assert self.outcome is not None
        return self.outcome


@pytest.mark.browser
def test_the_fleet_page_shows_hosts_workers_and_pages_and_publishes(
    browser: Any,
    screens: Callable[[ServerProcess, str], Tab],
    start_server: ServerFactory,
    shared_redis_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    host_a, host_b = start_hosts(start_server, shared_redis_url, namespace)
    for server, path in (
        (host_a, "/screen/lobby/one"),
        (host_a, "/screen/lobby/two"),
        (host_b, "/screen/bar/three"),
    ):
        screens(server, path)
    paused = screens(host_b, "/screen/lobby/four")
    paused.page.evaluate("distreload.pause()")
    wait_for_state(shared_redis_url, namespace, "/screen/lobby/four", "paused")

    context = browser.new_context(viewport={"width": 1100, "height": 720})
    try:
        fleet = context.new_page()
        # Without the token: only the form asking for it, no data.
        fleet.goto(host_a.base_url + "/---distreload---/fleet")
        fleet.wait_for_selector("#login:not([hidden])", timeout=10_000)
        assert fleet.is_hidden("#fleet")
        fleet.fill("#token", "wrong")
        fleet.click("#login button")
        fleet.wait_for_timeout(500)
        assert fleet.is_hidden("#fleet")
        # With it (in the fragment, which no server sees): the workers of both hosts and every page, live.
        fleet.goto(host_a.base_url + "/---distreload---/fleet#token=" + TOKEN)
        fleet.wait_for_function("document.getElementById('count-pages').textContent === '4'", timeout=15_000)
        assert fleet.text_content("#count-workers") == "2"
        assert "token" not in fleet.url
        rows = fleet.locator("#pages tr").all_inner_texts()
        assert any("/screen/lobby/four" in row and "paused" in row for row in rows), rows
        assert len(rows) == 4

        # A page opened now shows up without a reload of the fleet page.
        screens(host_b, "/screen/bar/five")
        fleet.wait_for_function("document.getElementById('count-pages').textContent === '5'", timeout=15_000)

        # Publish from the page, waiting for the pages: it says what became of them.
        fleet.fill("#wait", "20")
        fleet.click("#send")
        fleet.wait_for_function(
            "document.getElementById('message').textContent.includes('applied')", timeout=30_000
        )
        message = fleet.text_content("#message") or ""
        assert "applied 4 of 4" in message and "paused 1" in message, message
        fleet.wait_for_function(
            "document.getElementById('last').textContent.includes('applied 4 of 4')", timeout=15_000
        )
        # The page tables follow within a second or two (each worker writes its own at most once a second).
        fleet.wait_for_function(
            "Array.from(document.querySelectorAll('#pages tr')).filter("
            "(row) => /live × 1.*reloaded × 1/.test(row.innerText.replace(/\\s+/g, ' '))).length === 4",
            timeout=15_000,
        )
        assert fleet.is_hidden("#login")
        shot = Path(os.environ.get("DISTRELOAD_FLEET_SCREENSHOT", tmp_path / "fleet.png"))
        fleet.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        context.close()


# --- on a Redis Cluster and through Sentinels (pages simulated: reports as client.js sends them) ----------


def report_page(
    server: ServerProcess,
    stream: str,
    version: str,
    how: str = "loaded",
    *,
    page: str = "simulated-page-1",
    path: str = "/tv/1",
) -> None:
    """A page's report as client.js sends it, to ``server`` (which passes it on if ``stream`` is not its
    worker's)."""
    body = {"page": page, "path": path, "version": version, "how": how, "state": "live"}
    request = urllib.request.Request(
        server.base_url + "/---distreload---/page",
        method="POST",
        data=json.dumps({**body, "stream": stream}).encode(),
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def wait_for_one_simulated_page(fleet: Fleet, cli_url: str, namespace: str) -> None:
    """A page on the fleet's one worker applies a reload; ``publish --wait`` (given ``cli_url``) sees it."""
    [server], [reader] = fleet.servers, fleet.readers
    hello = reader.wait_for("hello")[0].json()
    report_page(server, hello["stream"], hello["version"])
    wait_for_pages(cli_url, namespace, {"/tv/1": 1})
    waiting = WaitInBackground(cli_url, namespace, "30")
    reload = reader.wait_for("reload", timeout=20)[0].json()
    report_page(server, hello["stream"], reload["version"], "reloaded")
    status, pages = waiting.result()
    assert status == 0, pages
    assert (pages["applied"], pages["expected"], pages["workers"], pages["version"]) == (
        1,
        1,
        1,
        reload["version"],
    )


@pytest.mark.slow
def test_publish_wait_on_a_redis_cluster(
    tmp_path: Path, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    with redis_servers.running(RedisCluster3(tmp_path / "cluster")) as cluster:
        owner = cluster.owner(cluster.slot_of(state_key(namespace)))
        other = next(node for node in cluster.masters if node is not owner)
        # The worker is given one node, the command another: both find the slot's owner.
        fleet = start_fleet(start_server, open_sse, [other.url], namespace, workers=1)
        wait_for_one_simulated_page(fleet, cluster.masters[-1].url, namespace)


@pytest.mark.slow
def test_publish_wait_through_sentinels(
    tmp_path: Path, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    with redis_servers.running(SentinelSet(tmp_path / "sentinel")) as sentinels:
        fleet = start_fleet(start_server, open_sse, [sentinels.url()], namespace, workers=1)
        wait_for_one_simulated_page(fleet, sentinels.url(), namespace)

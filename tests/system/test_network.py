"""Hosts on a real network: Redis on one host, app servers on two others, the driver outside.

Each host is a network namespace with its own address on one bridge (``NetHosts``)::

    driver  10.213.X.1  the bridge itself, in the root namespace: publishes (the CLI), reads event
                        streams, runs Chromium
    redis   10.213.X.2  redis-server :6379
    app1    10.213.X.3  uvicorn, 2 workers, :8000  <- the host that loses packets / is cut off from Redis
    app2    10.213.X.4  uvicorn, 2 workers, :8000  <- healthy

Packet loss is on app1's link, 20 % each way: ``NetHosts.drop(..., egress_at_receivers=True)`` drops what app1
receives in app1 and what it sends where it arrives (the driver, the Redis host), as a bad cable would. A
DROP in app1's own OUTPUT chain would instead be reported to app1's sockets (EPERM), which no wire does.

The partition cuts only the path between app1 and the Redis host: each end drops, in its INPUT chain, every
packet from the other. Both sides stay silent (no reset, no refusal), so the workers learn of it only from
their PING deadline, while the driver, and the browser, still reach app1's pages over the same bridge. Taking
app1's bridge port down instead would cut the driver off too, and "its workers keep serving pages" could not
be observed.

The same hosts serve the screens of tests/apps/screens_app.py for ``publish --wait``: tabs in Chromium on
both hosts, over both workers of each (each host names its workers with DISTRELOAD_HOST_NAME), counted from
the driver: every page applies, a page answers 500, a paused tab, a tab the match leaves out, a tab closed
mid-wait.

Figures (heal-to-reload times, catch-up times, reconnects) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from distreload.process import ENV_HOST_NAME
from distreload.protocol import channel_name

from .. import conftest, test_client
from ..conftest import ROOT, cli_published, missing, unique_namespace
from ..sse import SSEReader
from ..waiting import wait_until
from . import redis_servers
from .redis_servers import NetHosts, RedisNode, Unavailable, require_binaries
from .test_pages import (
    EXIT_FAILED,
    SCREENS_APP,
    WaitInBackground,
    control,
    paths_of,
    publish_waiting,
    wait_for_pages,
    wait_for_state,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

APP = "tests.apps.cluster_app:app"
PREFIX = "/---distreload---"
APP_PORT = 8000
WORKERS = 2
LOST = "lost the connection to"
BACK = "connected to Redis at"
# The ordinary EventSource retry: the endpoint's "retry:" hint (RETRY_MILLISECONDS).
RETRY_SECONDS = 1.0


# --- the network --------------------------------------------------------------------------------------


@contextlib.contextmanager
def network_hosts() -> Iterator[NetHosts]:
    """The three hosts; a machine that cannot make namespaces (no root) skips, or fails under CI=true."""
    hosts = NetHosts(names=["redis", "app1", "app2"])
    try:
        hosts.start()
    except Unavailable as exc:
        unavailable = str(exc)
    else:
        unavailable = ""
    if unavailable:  # outside the except block: the skip or failure says why, without a chained traceback
        missing(unavailable)
    try:
        yield hosts
    finally:
        hosts.stop()


class RedisPath:
    """The path between one app host and the Redis host, which can be cut and restored on its own."""

    def __init__(self, hosts: NetHosts, app: str, redis_host: str) -> None:
        self.hosts = hosts
        self.iptables = require_binaries("iptables")["iptables"]
        # Each end drops what arrives from the other: nothing is refused, nothing is reported to a socket.
        self.rules = [
            (app, ["INPUT", "-s", hosts[redis_host].address, "-j", "DROP"]),
            (redis_host, ["INPUT", "-s", hosts[app].address, "-j", "DROP"]),
        ]
        self.cut_off = False

    def _apply(self, action: str) -> None:
        for host, rule in self.rules:
            done = self.hosts.run(host, self.iptables, "-w", "5", action, *rule, timeout=30)
            assert done.returncode == 0, f"iptables {action} {rule} in {host}: {done.stderr}"

    def cut(self) -> None:
        self._apply("-A")
        self.cut_off = True

    def heal(self) -> None:
        if self.cut_off:
            self.cut_off = False
            self._apply("-D")


def dropped(hosts: NetHosts, where: str | None, contains: str) -> int:
    """Packets dropped so far by the INPUT DROP rules of ``where`` (None: the root namespace) whose listing
    contains ``contains``: proof that a loss or a cut really hit the traffic."""
    command = [require_binaries("iptables")["iptables"], "-w", "5", "-L", "INPUT", "-v", "-x", "-n"]
    if where is None:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    else:
        listing = hosts.run(where, *command).stdout
    return sum(int(line.split()[0]) for line in listing.splitlines() if " DROP " in line and contains in line)


@dataclass
class AppHost:
    """uvicorn with two workers inside one host, bound to that host's address."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{APP_PORT}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self, text: str) -> int:
        return sum(1 for line in self.log().splitlines() if text in line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


@dataclass
class Network:
    """Redis on one host, the app on two others, and what the driver opened on them."""

    hosts: NetHosts
    redis: RedisNode
    namespace: str
    apps: dict[str, AppHost] = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def subscribers(self) -> int:
        channel = channel_name(self.namespace)
        with self.redis.client() as client:
            return int(dict(client.pubsub_numsub(channel)).get(channel, 0))

    def publish(self) -> dict[str, Any]:
        """Publish one reload from the driver with the command line, as a deploy hook would."""
        return cli_published(self.redis_url, self.namespace)

    def connections_received(self) -> int:
        return int(self.redis.info("stats")["total_connections_received"])

    def open_stream(self, app: str) -> Stream:
        stream = Stream(self.apps[app].address, APP_PORT)
        self.streams.append(stream)
        return stream

    def streams_per_worker(self, app: str, per_worker: int, attempts: int = 200) -> list[Stream]:
        """``per_worker`` streams on each worker of ``app`` (the kernel hands a shared listening socket's
        connections out unevenly, so extra streams are opened and closed again)."""
        kept: dict[str, list[Stream]] = {}
        for _ in range(attempts):
            stream = self.open_stream(app)
            on_worker = kept.setdefault(stream.worker(), [])
            if len(on_worker) < per_worker:
                on_worker.append(stream)
            else:
                stream.close()
            if len(kept) == WORKERS and all(len(group) == per_worker for group in kept.values()):
                return [stream for group in kept.values() for stream in group]
        raise AssertionError(f"streams on {app} reached only {sorted(kept)} of {WORKERS} workers")


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def info(app: AppHost) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(get(app.base_url + PREFIX)[1])
    return answer


def per_worker(
    app: AppHost, ask: Callable[[AppHost], tuple[str, Any]], timeout: float = 30
) -> dict[str, Any]:
    """Ask over fresh connections until every worker of ``app`` answered: {worker: answer}. A worker that
    is still starting does not accept yet, and the kernel hands connections out unevenly: ask for a while."""
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker, answer = ask(app)
        seen[worker] = answer
        if len(seen) == WORKERS:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"only {sorted(seen)} of {WORKERS} workers of {app.name} answered")


def worker_info(app: AppHost) -> tuple[str, Any]:
    answer = info(app)
    return str(answer["worker"]), answer


def served_page(app: AppHost) -> tuple[str, Any]:
    """The app's own page, as a visitor gets it: which process served it, and whether it was whole."""
    status, body = get(app.base_url + "/")
    match = re.search(rb'<p id="worker">(\d+)</p>', body)
    assert match is not None, body[:300]
    return match.group(1).decode(), status == 200 and b"data-distreload" in body


def fetch_page(app: AppHost, budget: float = 20.0) -> float:
    """Get the app's page whole, trying again when packet loss breaks a connection off; the seconds it
    took."""
    started = time.monotonic()
    while True:
        try:
            whole = served_page(app)[1]
        except OSError as exc:  # urllib's errors included: a connect or read that timed out under loss
            assert time.monotonic() - started < budget, f"no page from {app.name} within {budget:g} s: {exc}"
            continue
        assert whole, f"{app.name} served a page without the reload script"
        return time.monotonic() - started


def nap() -> None:
    time.sleep(0.05)


@contextlib.contextmanager
def running_network(directory: Path, app: str) -> Iterator[Network]:
    """Redis on ``redis``, uvicorn (2 workers) serving ``app`` on ``app1`` and ``app2``, every worker
    subscribed."""
    with network_hosts() as hosts:
        try:
            server = hosts.start_redis("redis")
        except Unavailable as exc:
            unavailable = str(exc)
        else:
            unavailable = ""
        if unavailable:
            missing(unavailable)
        net = Network(hosts, server, unique_namespace())
        try:
            for name in ("app1", "app2"):
                net.apps[name] = start_app(hosts, name, app, net, directory)
            for host in net.apps.values():
                per_worker(host, worker_info)  # a worker accepts connections only once it subscribed
            wait_until(lambda: net.subscribers() == 2 * WORKERS, 20, "every worker subscribed", pump=nap)
            yield net
        finally:
            # Before the hosts go: without the bridge their addresses would be routed off this machine.
            for stream in net.streams:
                stream.close()
            for host in net.apps.values():
                host.stop()


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with running_network(tmp_path, APP) as net:
        yield net


@pytest.fixture
def screens_network(tmp_path: Path) -> Iterator[Network]:
    """The same hosts serving the screens that ``publish --wait`` counts (tests/apps/screens_app.py)."""
    with running_network(tmp_path, SCREENS_APP) as net:
        yield net


def start_app(hosts: NetHosts, name: str, app: str, net: Network, directory: Path) -> AppHost:
    address = hosts[name].address
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "DISTRELOAD_ENABLED": "1",
        "DISTRELOAD_REDIS_URL": net.redis_url,
        "DISTRELOAD_NAMESPACE": net.namespace,
        ENV_HOST_NAME: name,  # how summaries and `status` name this host's workers ("app1:<pid>")
        "SCREENS_DEBUG": "1",  # the screens app's workers log distreload's debug lines (other apps: nothing)
    }
    command = [sys.executable, "-m", "uvicorn", app, "--host", address, "--port", str(APP_PORT)]
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        process = hosts.popen(
            name,
            *command,
            "--workers",
            str(WORKERS),
            "--no-access-log",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(ROOT),
            start_new_session=True,
        )
    host = AppHost(name, address, process, log_path)
    try:
        redis_servers.wait_for_port(address, APP_PORT, 30, process)
    except Exception:
        host.stop()
        raise AssertionError(f"uvicorn on {name} did not start:\n{host.log()}") from None
    return host


# --- event streams that reconnect like a browser ----------------------------------------------------------


class Stream:
    """An event stream to one host that reconnects as EventSource does: when its connection ends, it opens a
    new one after the retry hint, with Last-Event-ID, so a reload missed meanwhile is told on return."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.connections = [SSEReader(port, host=address)]
        self._retry_at: float | None = None
        self.reached_at: dict[str, float] = {}  # version -> when the driver first saw it

    def worker(self) -> str:
        return str(self.connections[0].wait_for("hello")[0].json()["worker"])

    def reload_ids(self) -> list[str | None]:
        return [event.id for reader in self.connections for event in reader.of("reload")]

    def last_id(self) -> str | None:
        ids = [event.id for reader in self.connections for event in reader.events if event.id]
        return ids[-1] if ids else None

    @property
    def reconnects(self) -> int:
        return len(self.connections) - 1

    def poll(self) -> None:
        """Note the versions seen so far, and reconnect if the connection ended."""
        now = time.monotonic()
        for version in self.reload_ids():
            if version is not None:
                self.reached_at.setdefault(version, now)
        if not self.connections[-1].closed.is_set():
            return
        if self._retry_at is None:
            self._retry_at = now + RETRY_SECONDS
        elif now >= self._retry_at:
            headers = {"Last-Event-ID": self.last_id() or ""}
            try:
                self.connections.append(SSEReader(self.port, host=self.address, headers=headers))
                self._retry_at = None
            except OSError:
                self._retry_at = now + RETRY_SECONDS

    def break_off(self) -> None:
        """End the connection from this side, as a network error would: poll() then reconnects."""
        self.connections[-1].close()

    def close(self) -> None:
        for reader in self.connections:
            reader.close()


# --- the tests ----------------------------------------------------------------------------------------


def test_without_root_the_network_tests_skip_and_under_ci_they_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="need root"), network_hosts():
        pass
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="need root.*required under CI=true"), network_hosts():
        pass


def test_streams_on_a_lossy_host_end_at_the_last_version_and_healthy_ones_see_every_reload_once(
    network: Network,
) -> None:
    lossy = network.streams_per_worker("app1", 2)
    healthy = network.streams_per_worker("app2", 2)
    streams = lossy + healthy

    def pump() -> None:
        nap()
        for stream in streams:
            stream.poll()

    def lossy_at(version: str) -> bool:
        pump()
        return all(stream.last_id() == version for stream in lossy)

    app1 = network.apps["app1"]
    connections_before = network.connections_received()
    network.hosts.drop("app1", 20, egress_at_receivers=True)
    published: list[dict[str, Any]] = []
    serving: list[float] = []
    try:
        for index in range(5):
            if index:
                # Spaced out, so that each reload travels on its own over the lossy link; meanwhile the
                # lossy host serves its page.
                next_at = time.monotonic() + 1.5
                serving.append(fetch_page(app1))
                if index == 2:
                    # A browser whose connection broke comes back with Last-Event-ID over the lossy link
                    # (one stream of each worker).
                    for stream in lossy[::2]:
                        stream.break_off()
                while time.monotonic() < next_at:
                    pump()
            published.append(network.publish())
        last = str(published[-1]["version"])
        last_published_at = time.monotonic()  # the publish command has returned
        # Still under loss: every stream on the lossy host must get to the last version.
        took = wait_until(lambda: lossy_at(last), 30, f"every stream on the lossy host at {last}", pump=nap)
        # Less the publishes' own connections (one each) and this INFO's: what the workers opened.
        connections_during_loss = network.connections_received() - connections_before - len(published) - 1
        hosts, address = network.hosts, network.apps["app1"].address
        lost_in = dropped(hosts, "app1", "statistic")
        lost_out = sum(dropped(hosts, where, address) for where in (None, "redis", "app2"))
    finally:
        network.hosts.drop("app1", 0)
    versions = [str(result["version"]) for result in published]
    wait_until(lambda: all(s.reload_ids() == versions for s in healthy), 10, "the healthy streams", pump=pump)
    settle = time.monotonic() + 2.0  # time for a wrong extra reload to show up
    while time.monotonic() < settle:
        pump()

    print(
        f"\n20 % loss each way on app1: {lost_in} packets to it and {lost_out} from it dropped; "
        f"receivers per publish {[r['receivers'] for r in published]}"
    )
    for stream in lossy:
        reached = stream.reached_at.get(last, last_published_at) - last_published_at
        print(
            f"  lossy stream first on {stream.worker()}: saw {len(stream.reload_ids())} of 5 reloads, at the "
            f"last {reached:.2f} s after the publish command returned, {stream.reconnects} stream reconnects"
        )
    print(
        f"  pages from the lossy host in {', '.join(f'{seconds:.2f}' for seconds in serving)} s; "
        f"all lossy streams at the last version {took:.2f} s after its publish; app1's workers lost Redis "
        f"{app1.log_lines(LOST)} times and reconnected {app1.log_lines(BACK)} times; the workers "
        f"opened {connections_during_loss} new connections to Redis during the loss"
    )

    for stream in healthy:
        assert stream.reload_ids() == versions, "a stream on the healthy host missed or repeated a reload"
    for stream in lossy:
        ids = [version for version in stream.reload_ids() if version is not None]
        numbers = [int(version.rsplit("-", 1)[1]) for version in ids]
        assert ids and ids[-1] == last, f"a stream on the lossy host did not end at {last}: {ids}"
        assert numbers == sorted(set(numbers)), f"a stream on the lossy host saw a version twice: {ids}"
        assert set(ids) <= set(versions), ids
    # Each worker holds one subscription and backs off between attempts: a lossy link must not turn into a
    # stream of new connections (2 workers, ~10 s of loss: a few reconnects at most, each a pub/sub
    # connection and a command connection).
    assert lost_in > 0 and lost_out > 0, "the loss did not touch app1's traffic"
    assert connections_during_loss <= 20, f"{connections_during_loss} connections to Redis during the loss"
    for name, app in network.apps.items():
        versions_now = per_worker(app, worker_info)
        assert {answer["version"] for answer in versions_now.values()} == {last}, (name, versions_now)


# -- pages in Chromium ------------------------------------------------------------------------------------

LOADS_KEY = "network-test-loads"
# Runs at the start of every document a tab loads: the tab's own record of its loads, in sessionStorage so
# that it survives the reloads it counts, with the wall-clock time of each (compared with the driver's).
COUNT_LOADS = f"""(() => {{
  try {{
    const loads = JSON.parse(window.sessionStorage.getItem("{LOADS_KEY}") || "[]");
    loads.push(Date.now());
    window.sessionStorage.setItem("{LOADS_KEY}", JSON.stringify(loads));
  }} catch (error) {{ /* about:blank has no storage */ }}
}})();"""
CONNECTED = "window.__distreload && window.__distreload.connected && !window.__distreload.reloading"


@dataclass
class Tab:
    page: Any
    worker: str = ""  # the worker process holding this tab's stream

    def _evaluate(self, script: str) -> Any:
        for _ in range(50):
            with contextlib.suppress(Exception):  # a reload may replace the document under us
                return self.page.evaluate(script)
            self.page.wait_for_timeout(100)
        raise AssertionError(f"could not evaluate {script!r} in {self.page.url}")

    def loads(self) -> list[float]:
        """The wall-clock time (s) of every document load of this tab, the first one included."""
        return [
            stamp / 1000 for stamp in self._evaluate(f"JSON.parse(sessionStorage.getItem('{LOADS_KEY}'))")
        ]

    def reloads(self) -> int:
        return len(self.loads()) - 1

    def status(self) -> dict[str, Any]:
        self.page.wait_for_function(CONNECTED, timeout=20_000)
        return dict(self._evaluate("({...window.__distreload})"))


def open_tabs(new_context: Callable[..., Any], app: AppHost, count: int, attempts: int = 16) -> list[Tab]:
    """``count`` tabs on ``app`` whose streams cover both its workers (extra tabs are closed again).

    A browser profile of its own per tab: within one, a tab's stream reuses the keep-alive connection that
    fetched an earlier page, so every stream would land on the worker that served the first one."""
    tabs: list[Tab] = []
    for index in range(attempts):
        context = new_context()
        context.add_init_script(COUNT_LOADS)
        page = context.new_page()
        page.goto(f"{app.base_url}/page/{app.name}-{index}")
        tab = Tab(page)
        status = tab.status()
        tab.worker = str(status["worker"])
        assert status["mode"] == "page", status  # a plain-HTTP origin has no Web Locks: a stream per tab
        tabs.append(tab)
        if len(tabs) > count:  # one too many: close one that shares its worker with another
            crowded = next(t for t in tabs if sum(o.worker == t.worker for o in tabs) > 1)
            tabs.remove(crowded)
            crowded.page.context.close()
        if len(tabs) == count and len({t.worker for t in tabs}) == WORKERS:
            return tabs
    raise AssertionError(f"the tabs on {app.name} reached only {sorted({t.worker for t in tabs})}")


@pytest.mark.browser
def test_a_host_cut_off_from_redis_keeps_serving_and_each_page_reloads_once_when_it_returns(
    network: Network, new_context: Callable[..., Any]
) -> None:
    tabs: dict[str, list[Tab]] = {}
    for name, app in network.apps.items():
        tabs[name] = open_tabs(new_context, app, 3)
    every_tab = [tab for group in tabs.values() for tab in group]
    pump_tab = every_tab[0]

    healed_at: float | None = None
    back_at: float | None = None

    def pump() -> None:
        nonlocal back_at
        pump_tab.page.wait_for_timeout(100)  # lets Playwright deliver the browser's events meanwhile
        if healed_at is not None and back_at is None and app1.log_lines(BACK) >= WORKERS:
            back_at = time.monotonic()

    def reloads(name: str) -> list[int]:
        return [tab.reloads() for tab in tabs[name]]

    app1, app2 = network.apps["app1"], network.apps["app2"]
    assert [tab.reloads() for tab in every_tab] == [0] * len(every_tab)
    path = RedisPath(network.hosts, "app1", "redis")
    published: list[dict[str, Any]] = []
    healthy_reload_times: list[float] = []
    try:
        path.cut()
        cut_at = time.monotonic()
        for count in (1, 2):
            # One publish at a time, each seen on its own by the healthy pages: two reloads, not one merged.
            published_at = time.time()
            published.append(network.publish())
            wait_until(
                lambda count=count: reloads("app2") == [count] * 3, 15, f"app2's reload {count}", pump=pump
            )
            healthy_reload_times += [tab.loads()[count] - published_at for tab in tabs["app2"]]
        # The cut is real: both of app1's workers noticed it (their PING went unanswered) ...
        wait_until(lambda: app1.log_lines(LOST) >= WORKERS, 15, "app1's workers losing Redis", pump=pump)
        noticed = time.monotonic() - cut_at
        assert {answer["redis_connected"] for answer in per_worker(app1, worker_info).values()} == {False}
        # ... and while it lasts both keep serving whole pages to the driver over the same bridge.
        served = per_worker(app1, served_page)
        assert all(served.values()), served
        assert reloads("app1") == [0, 0, 0], "a page on the cut-off host reloaded during the cut"
        # A cut of some length: the workers' reconnect attempts back off meanwhile, and how long the last
        # wait is shows in the time from the heal to the reload.
        while time.monotonic() - cut_at < 10:
            pump()
        cut_for = time.monotonic() - cut_at
        hosts, redis_address = network.hosts, network.hosts["redis"].address
        cut_packets = dropped(hosts, "app1", redis_address) + dropped(hosts, "redis", app1.address)
    finally:
        path.heal()
    healed_at, healed_wall = time.monotonic(), time.time()

    wait_until(lambda: all(count >= 1 for count in reloads("app1")), 30, "app1's pages reloading", pump=pump)
    wait_until(lambda: back_at is not None, 15, "app1's workers back on Redis", pump=pump)
    assert back_at is not None
    back = back_at - healed_at
    settle_until = time.monotonic() + 3.0  # time for a wrong second reload to happen
    while time.monotonic() < settle_until:
        pump()

    last = str(published[-1]["version"])
    heal_to_reload = [tab.loads()[1] - healed_wall for tab in tabs["app1"]]
    print(
        f"\npartition of app1 from Redis for {cut_for:.1f} s (workers noticed after {noticed:.1f} s); "
        f"{cut_packets} packets between them dropped; receivers per publish during it (Redis still counts "
        f"app1's dead subscriptions): {[r['receivers'] for r in published]}"
    )
    healthy = ", ".join(f"{seconds:.2f}" for seconds in healthy_reload_times)
    print(f"  healthy pages: from the start of the publish command to the reload {healthy} s")
    print(f"  app1's workers back on Redis within {back:.2f} s of the heal")
    for tab, seconds in zip(tabs["app1"], heal_to_reload, strict=True):
        print(f"  page on {tab.worker}: reloaded {seconds:.2f} s after the heal")

    assert reloads("app1") == [1, 1, 1], (
        "each page on the cut-off host must reload exactly once after the heal"
    )
    assert reloads("app2") == [2, 2, 2], "each page on the healthy host must reload once per publish"
    assert LOST not in app2.log(), "the healthy host lost Redis too: the cut was not limited to app1"
    # One outage, one recovery per worker: no flapping after the heal.
    assert (app1.log_lines(LOST), app1.log_lines(BACK)) == (WORKERS, WORKERS), app1.log()
    for tab in every_tab:
        assert tab.status()["version"] == last, tab.status()


# -- confirmed delivery: pages on two hosts, two workers each -----------------------------------------------


def screens_on_both_workers(
    new_context: Callable[..., Any], host: AppHost, paths: list[str], attempts: int = 40
) -> dict[str, test_client.Tab]:
    """One tab per path on ``host``, each in a browser of its own, whose streams cover both its workers
    (the kernel hands connections out unevenly: the last tab is opened again until they do)."""
    tabs = {path: test_client.open_tab(new_context(), host.base_url + path) for path in paths}
    for _ in range(attempts):
        if len({tab.status()["worker"] for tab in tabs.values()}) == WORKERS:
            return tabs
        last = paths[-1]
        tabs[last].page.context.close()
        tabs[last] = test_client.open_tab(new_context(), host.base_url + last)
    raise AssertionError(f"the tabs on {host.name} never reached both its workers")


@pytest.mark.browser
def test_publish_wait_counts_every_page_on_two_hosts_of_two_workers_each(
    screens_network: Network, new_context: Callable[..., Any]
) -> None:
    """Each host's tabs reach either of its workers (a report may land on the worker that does not hold
    the tab's stream and be passed on through Redis); the driver, outside both hosts, publishes and waits."""
    net = screens_network
    app1, app2 = net.apps["app1"], net.apps["app2"]
    tabs = {
        **screens_on_both_workers(
            new_context, app1, ["/screen/lobby/one", "/screen/lobby/two", "/screen/bar/three"]
        ),
        **screens_on_both_workers(
            new_context, app2, ["/screen/lobby/four", "/screen/lobby/five", "/screen/lobby/six"]
        ),
    }
    url, namespace = net.redis_url, net.namespace
    try:
        wait_for_pages(url, namespace, dict.fromkeys(tabs, 1))
    except AssertionError as exc:  # which worker holds which tab, and what the workers logged
        workers = {path: tab.status_now().get("worker") for path, tab in tabs.items()}
        logs = "\n".join(f"--- {host.name}\n{host.log()[-4000:]}" for host in net.apps.values())
        raise AssertionError(f"{exc}\ntabs' workers: {workers}\n{logs}") from None
    workers = {path: str(tab.status()["worker"]) for path, tab in tabs.items()}
    assert len(set(workers.values())) == 2 * WORKERS, workers
    assert {worker.split(":")[0] for worker in workers.values()} == {"app1", "app2"}, workers

    # Every page applies: exit 0, every worker of both hosts answered.
    status, pages = publish_waiting(url, namespace, "20")
    assert status == 0, json.dumps(pages)
    assert (pages["outcome"], pages["applied"], pages["expected"], pages["workers"]) == ("applied", 6, 6, 4)
    for tab in tabs.values():
        assert tab.status()["version"] == pages["version"]
        assert tab.reloads == 1, tab.navigations

    # A page whose server answers 500 is named with its host's worker and the status: exit 3.
    control(app2.base_url, "fail", "four", 500)
    status, pages = publish_waiting(url, namespace, "20")
    assert status == EXIT_FAILED, json.dumps(pages)
    assert (pages["outcome"], pages["applied"], pages["expected"]) == ("failed", 5, 6), json.dumps(pages)
    [failed] = pages["failed"]
    assert failed["path"] == "/screen/lobby/four" and "500" in failed["reason"], failed
    assert failed["worker"] == tabs["/screen/lobby/four"].status_now()["worker"], failed
    assert failed["worker"].startswith("app2:"), failed
    control(app2.base_url, "fail", "four", 0)
    tabs["/screen/lobby/four"].page.wait_for_function(
        "window.__distreload && !window.__distreload.overlay", timeout=20_000
    )

    # A paused tab and one the match leaves out are listed, not awaited.
    tabs["/screen/lobby/two"].page.evaluate("distreload.pause()")
    wait_for_state(url, namespace, "/screen/lobby/two", "paused")
    status, pages = publish_waiting(url, namespace, "20", "--match", "/screen/lobby/*")
    assert status == 0, json.dumps(pages)
    assert (pages["applied"], pages["expected"], pages["excluded"]) == (4, 4, 1), json.dumps(pages)
    assert paths_of(pages["paused"]) == ["/screen/lobby/two"]
    assert pages["paused"][0]["worker"].startswith("app1:"), pages["paused"]
    tabs["/screen/lobby/two"].page.evaluate("distreload.resume()")

    # A tab closed mid-wait (its reload still fetching the slow page) is named closed and does not hold it.
    control(app2.base_url, "slow", "five", 6)
    waiting = WaitInBackground(url, namespace, "30")
    time.sleep(1.5)  # the other pages apply; the slow one is still being fetched
    tabs.pop("/screen/lobby/five").page.close()
    status, pages = waiting.result()
    control(app2.base_url, "slow", "five", 0)
    assert status == 0, json.dumps(pages)
    assert paths_of(pages["closed"]) == ["/screen/lobby/five"]
    assert (pages["applied"], pages["expected"]) == (5, 5), json.dumps(pages)
    assert pages["elapsed"] < 6, "the closed page held the wait"

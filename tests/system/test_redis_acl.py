"""Least privilege: workers and the command line under the ACL rules the README gives, and what a worker
does when a right is missing (an optional one: says so once and keeps delivering; a required one: one line
and a backoff that grows, never a reconnect storm).

Each test owns a redis-server (tests/system/redis_servers.py) and creates its ACL users there.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pytest

from distreload.broker import RedisBroker
from distreload.config import Target
from distreload.presence import read_presence
from distreload.protocol import (
    PublishError,
    ReloadRequest,
    observers_channel_name,
    presence_prefix,
    state_key,
)
from distreload.publisher import publish_blocking

from ..conftest import ROOT, ServerFactory, cli_published, distreload_cli, wait_for_port
from ..sse import SSEReader
from . import redis_servers
from .redis_apps import (
    APP,
    TOKEN,
    cli_rule,
    info,
    pages_reader_rule,
    pages_worker_rule,
    set_user,
    start_fleet,
    trigger,
    with_user,
    worker_rule,
)
from .redis_servers import RedisNode, free_port
from .test_pages import report_page, wait_for_pages

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisNode]:
    try:
        binary = redis_servers.require_binaries("redis-server")["redis-server"]
    except redis_servers.Unavailable as exc:
        redis_servers.missing(str(exc))
    node = RedisNode(
        "acl", free_port(), tmp_path / "redis", binary=binary, args=["--save", "", "--appendonly", "no"]
    )
    node.start()
    try:
        yield node
    finally:
        node.kill()


def url_of(server: RedisNode, user: str) -> str:
    return with_user(server.url, user, "pw")


def connections(admin: Any) -> int:
    """Connections the server has accepted so far (asked on a connection the caller keeps open)."""
    return int(admin.info("stats")["total_connections_received"])


def without(rule: list[str], right: str) -> list[str]:
    assert right in rule, (right, rule)
    return [part for part in rule if part != right]


def test_cli_user_with_the_documented_rule_publishes_lists_and_listens(
    server: RedisNode, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    set_user([server], "dr-worker", "pw", worker_rule(namespace))
    set_user([server], "dr-cli", "pw", cli_rule(namespace))
    fleet = start_fleet(start_server, open_sse, [url_of(server, "dr-worker")], namespace, workers=2)
    cli_url = url_of(server, "dr-cli")
    listen = subprocess.Popen(
        [sys.executable, "-m", "distreload", "listen", "--redis-url", cli_url, "--namespace", namespace]
        + ["--count", "1", "--timeout", "60", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    try:
        assert listen.stderr is not None
        line = listen.stderr.readline()
        assert "listening on" in line, line + listen.stderr.read()
        published = cli_published(cli_url, namespace)
        assert published["receivers"] == 2  # the two workers; the listener is not counted
        out, err = listen.communicate(timeout=60)
        assert listen.returncode == 0, err
        assert json.loads(out)["version"] == published["version"]
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.communicate()
    from_worker = trigger(fleet.servers[0])  # a worker publishes with its own user too
    for reader in fleet.readers:
        reader.wait_for("reload", 2)
        assert fleet.ids(reader) == [published["version"], from_worker["version"]]
    status = distreload_cli("status", "--redis-url", cli_url, "--namespace", namespace, "--json")
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)
    assert sorted(f"{w['host']}:{w['pid']}" for w in listed["workers"]) == fleet.workers
    assert listed["version"] == from_worker["version"]
    assert not fleet.log_lines("cannot"), fleet.logs()


def test_worker_without_the_presence_right_delivers_and_says_so_once(
    server: RedisNode, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    set_user([server], "dr-worker", "pw", without(worker_rule(namespace), "+set"))
    set_user([server], "dr-cli", "pw", cli_rule(namespace))
    fleet = start_fleet(start_server, open_sse, [url_of(server, "dr-worker")], namespace, workers=2)
    admin = server.client()
    before = connections(admin)
    published = cli_published(url_of(server, "dr-cli"), namespace)
    assert published["receivers"] == 2
    for reader in fleet.readers:
        assert [e.id for e in reader.wait_for("reload")] == [published["version"]]
    time.sleep(6)  # more than one presence interval (5 s): a worker retrying its presence would show here
    made = connections(admin) - before
    admin.close()
    assert made == 1, f"{made} connections in 6 s: only the CLI's one was expected"
    said = fleet.log_lines("cannot write its presence")
    assert len(said) == 2 and all("no permissions to run the 'set' command" in line for line in said), said
    assert not fleet.log_lines("cannot use") and not fleet.log_lines("lost the connection"), fleet.logs()
    status = distreload_cli("status", "--redis-url", url_of(server, "dr-cli"), "--namespace", namespace)
    assert status.returncode == 0 and "no live workers" in status.stdout, status.stdout + status.stderr
    print(f"\npresence refused: {made} connection in 6 s, {len(said)} log lines for 2 workers")


def test_worker_without_a_required_right_backs_off_and_says_so_once(
    server: RedisNode, namespace: str, start_server: ServerFactory
) -> None:
    channel_right = f"&distreload:{{{namespace}}}:reload"
    set_user([server], "dr-worker", "pw", without(worker_rule(namespace), channel_right))
    admin = server.client()
    count = connections(admin)
    app = start_server(
        APP,
        workers=1,
        env={"DISTRELOAD_REDIS_URL": url_of(server, "dr-worker"), "DISTRELOAD_NAMESPACE": namespace},
        wait=False,
    )
    # Watch the server's connection counter (on one connection of our own) for 10 s from the start.
    seen: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < 10:
        now = connections(admin)
        seen += [time.monotonic() - started] * (now - count)
        count = now
        time.sleep(0.01)
    wait_for_port(app.port, 60, app.process)
    # Connections a few milliseconds apart belong to one attempt (the first one also asks HELLO).
    attempts = [t for i, t in enumerate(seen) if i == 0 or t - seen[i - 1] > 0.05]
    gaps = [round(b - a, 2) for a, b in zip(attempts, attempts[1:], strict=False)]
    print(
        f"\nrequired right missing: {len(seen)} connections in 10 s; attempts {len(attempts)}, gaps {gaps} s"
    )
    assert len(seen) <= 12, f"{len(seen)} connections in 10 s: {attempts}"
    # Each wait at least as long as the one before (polling and the attempts' own time allowed for),
    # growing to seconds: a backoff, not a storm.
    assert all(later >= earlier - 0.1 for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
    assert len(gaps) >= 4 and gaps[-1] >= 1.0 and gaps[-1] >= 4 * gaps[0], gaps
    said = [line for line in app.log().splitlines() if "cannot use Redis" in line]
    assert len(said) == 1, app.log()
    assert "no permissions to access one of the channels" in said[0] and "README" in said[0], said
    assert "lost the connection" not in app.log() and "not reachable yet" not in app.log(), app.log()
    # The worker serves pages all along, and says it is not subscribed.
    with urllib.request.urlopen(app.base_url + "/", timeout=10) as response:
        assert response.status == 200 and b"data-distreload" in response.read()
    assert info(app)["redis_connected"] is False
    # Once the right is granted, the worker subscribes at its next attempt (the backoff is capped).
    admin.execute_command("ACL", "SETUSER", "dr-worker", channel_right)
    fixed = time.monotonic()
    while info(app)["redis_connected"] is not True:
        assert time.monotonic() - fixed < 40, app.log()
        time.sleep(0.1)
    print(f"subscribed {time.monotonic() - fixed:.1f} s after the right was granted")
    assert len([line for line in app.log().splitlines() if "connected to Redis" in line]) == 1, app.log()
    admin.close()


# --- Each right of the documented rules is needed --------------------------------------------------------


class Admin(Protocol):
    def command(self, *args: Any) -> Any: ...


class InDatabase:
    """The default (all-powerful) user on one database of the server."""

    def __init__(self, node: RedisNode, db: int) -> None:
        self.node, self.db = node, db

    def command(self, *args: Any) -> Any:
        with self.node.client(db=self.db) as client:
            return client.execute_command(*args)


async def worker_does_everything(url: str, namespace: str, user: str, admin: Admin) -> str | None:
    """Run, as the worker user, every path of a worker (subscribe, seed over a malformed state, PING,
    presence, a publish from the worker, a seed that moves a lost version forward, leaving): the first
    failure, or None."""

    async def redis(*args: Any) -> Any:
        return await asyncio.to_thread(admin.command, *args)

    broker = RedisBroker(Target(url, namespace), startup_wait=3.0, ping_interval=0.3)
    listener = _Listener()
    await redis("SET", state_key(namespace), "not a hash")  # the scripts' DEL path
    await broker.hold(listener)
    try:
        if not broker.connected:
            return "did not subscribe"
        if not broker._presence_written:
            return "presence not written"
        # What `distreload listen` reads: the observers' channel, watched here by the all-powerful user.
        node: Any = getattr(admin, "node", admin)
        observer = node.client().pubsub(ignore_subscribe_messages=True)
        await asyncio.to_thread(observer.subscribe, observers_channel_name(namespace))
        try:
            result = await broker.publish(ReloadRequest())
            seen = None
            for _ in range(30):  # get_message answers None for the subscribe confirmation it skips
                seen = await asyncio.to_thread(observer.get_message, timeout=0.1)
                if seen is not None:
                    break
        finally:
            await asyncio.to_thread(observer.close)
        for _ in range(100):
            if broker.version == result.version:
                break
            await asyncio.sleep(0.02)
        else:
            return "did not receive its own publish"
        if seen is None or f'"version":{result.version.number},' not in seen["data"]:
            return "a publish from the app did not reach distreload listen"
        await asyncio.sleep(0.5)  # a few PINGs
        # State behind what the worker knows (lost writes): the seed moves it forward and publishes.
        await redis("HSET", state_key(namespace), "version", 0)
        await redis("CLIENT", "KILL", "USER", user)
        for _ in range(150):
            if await redis("HGET", state_key(namespace), "version") == str(result.version.number):
                break
            await asyncio.sleep(0.02)
        else:
            return "the seed did not move the version forward"
    except PublishError as exc:
        return str(exc)
    finally:
        await broker.release(listener)
    return None


def cli_does_everything(url: str, namespace: str, admin: Admin) -> str | None:
    """Run, as the CLI user, publish (over a malformed state), status and listen: the first failure."""
    target = Target(url, namespace)
    admin.command("SET", state_key(namespace), "not a hash")
    record = json.dumps({"host": "host", "pid": 1})
    admin.command("SET", presence_prefix(namespace) + "host:1", record, "EX", 60)
    try:
        publish_blocking(target, ReloadRequest())
        cluster = read_presence(target)
        if cluster.version is None or not cluster.workers:
            return "status read no version or no worker"
    except Exception as exc:
        return str(exc)
    done = distreload_cli("listen", "--redis-url", url, "--namespace", namespace, "--timeout", "0.5")
    return None if done.returncode == 0 else done.stderr.strip()


class _Listener:
    def deliver(self, reload: object) -> None:
        pass

    def __len__(self) -> int:
        return 0


def test_every_right_in_the_documented_rules_is_needed(server: RedisNode, namespace: str) -> None:
    """The full rules work; without any one of their parts, something a worker or the CLI does fails.
    (Each case has a namespace and user of its own, so they all run at once.)"""
    worker_cases: list[tuple[str, str, str]] = []  # (what is removed, user, namespace)
    cli_cases: list[tuple[str, str, str]] = []
    for role, rule_for, cases in (("w", worker_rule, worker_cases), ("c", cli_rule, cli_cases)):
        for index, right in enumerate([None, *rule_for(namespace)]):
            if right in ("resetkeys", "resetchannels", "-@all"):
                continue
            user, case_namespace = f"{role}{index}", f"{namespace}-{role}{index}"
            rule = rule_for(case_namespace)
            if right is not None:
                rule = rule[: index - 1] + rule[index:]
            set_user([server], user, "pw", rule)
            cases.append((right or "nothing", user, case_namespace))

    async def workers() -> list[str | None]:
        return await asyncio.gather(
            *(worker_does_everything(url_of(server, u), ns, u, server) for _, u, ns in worker_cases)
        )

    worker_failures = asyncio.run(workers())
    with ThreadPoolExecutor(4) as pool:
        cli_failures = list(
            pool.map(lambda case: cli_does_everything(url_of(server, case[1]), case[2], server), cli_cases)
        )
    outcomes = {
        f"worker without {case[0]}": failure
        for case, failure in zip(worker_cases, worker_failures, strict=True)
    } | {f"CLI without {case[0]}": failure for case, failure in zip(cli_cases, cli_failures, strict=True)}
    assert outcomes.pop("worker without nothing") is None and outcomes.pop("CLI without nothing") is None
    print("\n" + "\n".join(f"{case}: {failure}" for case, failure in outcomes.items()))
    needless = [case for case, failure in outcomes.items() if failure is None]
    assert needless == [], f"rights nothing needed: {needless}"


def test_the_worker_rule_on_a_database_other_than_0_needs_select(server: RedisNode, namespace: str) -> None:
    set_user([server], "dr-worker", "pw", worker_rule(namespace))
    url = url_of(server, "dr-worker").replace("/0", "/3")
    in_3 = InDatabase(server, 3)
    assert asyncio.run(worker_does_everything(url, namespace, "dr-worker", in_3)) == "did not subscribe"
    set_user([server], "dr-worker", "pw", [*worker_rule(namespace), "+select"])
    assert asyncio.run(worker_does_everything(url, namespace, "dr-worker", in_3)) is None


# --- Page reports ------------------------------------------------------------------------------------------


def test_page_reports_are_counted_under_the_documented_rules_direct_or_passed_on(
    server: RedisNode, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    """Two workers under the worker rule and its page part; one page reports to its own stream's worker,
    the other to the worker that does not hold its stream (passed on through that worker's inbox), as tabs
    of workers that share a port do. The command line, under its rule and the reading part, waits for both;
    so does a worker asked over HTTP."""
    set_user([server], "dr-worker", "pw", [*worker_rule(namespace), *pages_worker_rule(namespace)])
    set_user([server], "dr-cli", "pw", [*cli_rule(namespace), *pages_reader_rule(namespace)])
    worker_url, cli_url = url_of(server, "dr-worker"), url_of(server, "dr-cli")
    fleet = start_fleet(start_server, open_sse, [worker_url, worker_url], namespace, workers=1)
    first, second = fleet.servers
    hellos = [reader.wait_for("hello")[0].json() for reader in fleet.readers]

    def report_both(version: str, how: str) -> None:
        report_page(first, hellos[0]["stream"], version, how, page="screen-one", path="/tv/1")
        report_page(first, hellos[1]["stream"], version, how, page="screen-two", path="/tv/2")  # passed on

    report_both(hellos[0]["version"], "loaded")
    wait_for_pages(cli_url, namespace, {"/tv/1": 1, "/tv/2": 1})

    token = {"DISTRELOAD_TOKEN": TOKEN}

    def wait_and_report(*how: str) -> None:
        reloads_before = len(fleet.readers[0].of("reload"))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(distreload_cli, "publish", *how, "--json", "--wait", "20", env=token)
            reloads = fleet.readers[0].wait_for("reload", count=reloads_before + 1, timeout=20)
            report_both(str(reloads[-1].json()["version"]), "reloaded")
            done = waiting.result()
        logs = [app.log()[-2000:] for app in fleet.servers]
        assert done.returncode == 0, (how, done.stdout, done.stderr, logs)
        pages: dict[str, Any] = json.loads(done.stdout)["pages"]
        assert (pages["applied"], pages["expected"], pages["workers"]) == (2, 2, 2), (how, pages)

    wait_and_report("--redis-url", cli_url, "--namespace", namespace)
    # A worker asked over HTTP to wait reads the summaries itself: under the worker rule alone it says so in
    # one line and publishes nothing; with the reading part added it waits like the command line.
    refused = distreload_cli("publish", "--url", second.base_url, "--wait", "20", env=token)
    assert refused.returncode != 0 and refused.stdout == "", refused
    [line] = refused.stderr.splitlines()
    assert "no permissions to run the 'scan' command" in line, line
    time.sleep(0.5)
    assert len(fleet.readers[0].of("reload")) == 1, "a refused publish still sent a reload"
    server.command("ACL", "SETUSER", "dr-worker", *pages_reader_rule(namespace))
    wait_and_report("--url", second.base_url)
    for app in fleet.servers:
        assert "could not" not in app.log(), app.log()

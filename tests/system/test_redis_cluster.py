"""Redis Cluster, end to end: app servers whose workers were each given a different node's URL (and ACL
users with the README's rules), event streams on every worker, and every way to publish.

Each test owns a 3-master cluster (tests/system/redis_servers.py). Figures (recovery times) are printed;
run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distreload import send_reload_signal
from distreload.protocol import state_key

from ..conftest import ROOT, ServerFactory, cli_published, distreload_cli
from ..sse import SSEReader
from . import redis_servers
from .redis_apps import (
    Fleet,
    Ledger,
    cli_rule,
    publish_over_http,
    set_user,
    start_fleet,
    trigger,
    version_of,
    with_user,
    worker_rule,
)
from .redis_servers import RedisCluster3, RedisNode

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster3]:
    with redis_servers.running(RedisCluster3(tmp_path / "cluster")) as built:
        yield built


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[RedisCluster3]:
    with redis_servers.running(RedisCluster3(tmp_path / "cluster", replicas=1)) as built:
        yield built


def users(cluster: RedisCluster3, namespace: str) -> None:
    """The README's worker and CLI users, on every node."""
    set_user(cluster.nodes, "dr-worker", "wpw", worker_rule(namespace, cluster=True))
    set_user(cluster.nodes, "dr-cli", "cpw", cli_rule(namespace, cluster=True))


def worker_url(node: RedisNode) -> str:
    return with_user(node.url, "dr-worker", "wpw")


def cli_url(node: RedisNode) -> str:
    return with_user(node.url, "dr-cli", "cpw")


def fleet_on_every_master(
    cluster: RedisCluster3,
    namespace: str,
    start_server: ServerFactory,
    open_sse: Callable[..., SSEReader],
) -> Fleet:
    """One app server (one worker) per master, each given that master's URL and nothing else."""
    return start_fleet(start_server, open_sse, [worker_url(n) for n in cluster.masters], namespace, workers=1)


def test_workers_on_different_nodes_get_every_reload_from_every_path(
    cluster: RedisCluster3,
    namespace: str,
    start_server: ServerFactory,
    open_sse: Callable[..., SSEReader],
    tmp_path: Path,
) -> None:
    users(cluster, namespace)
    fleet = fleet_on_every_master(cluster, namespace, start_server, open_sse)
    owner = cluster.owner(cluster.slot_of(state_key(namespace)))
    published: list[str] = []

    def check(result: dict[str, object], how: str) -> None:
        published.append(str(result["version"]))
        for reader in fleet.readers:
            reader.wait_for("reload", len(published), timeout=20)
        time.sleep(0.2)
        assert fleet.received() == {k: published for k in fleet.received()}, how
        # Sharded: every worker subscribed on the slot's owner, so the count covers them all; a running
        # listen is on the observers' channel and never counted.
        assert result["receivers"] == 3, (how, result)

    # The command line, given each node in turn: the owner answers at once, the others redirect.
    for node in cluster.masters:
        check(cli_published(cli_url(node), namespace), f"CLI via {node.name} (owner: {node is owner})")
    check(trigger(fleet.servers[0]), "send_reload_signal_async() in a worker")
    check(publish_over_http(fleet.servers[1]), "POST <prefix>/publish")
    done = distreload_cli("publish", "--url", fleet.servers[2].base_url, "--token", "fleet-token", "--json")
    assert done.returncode == 0, done.stderr
    check(json.loads(done.stdout), "distreload publish --url")
    result = send_reload_signal(redis_url=cli_url(cluster.masters[1]), namespace=namespace)
    assert result is not None
    check({"version": str(result.version), "receivers": result.receivers}, "send_reload_signal()")

    # status: every worker, whichever node it was given, from whichever node status is given.
    status = distreload_cli(
        "status", "--redis-url", cli_url(cluster.masters[2]), "--namespace", namespace, "--json"
    )
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)
    assert sorted(f"{w['host']}:{w['pid']}" for w in listed["workers"]) == fleet.workers
    assert listed["version"] == published[-1]
    assert all(w["version"] == published[-1] for w in listed["workers"])

    # listen and watch, each started on a node that does not own the slot.
    other = next(node for node in cluster.masters if node is not owner)
    listen = subprocess.Popen(
        [sys.executable, "-m", "distreload", "listen", "--redis-url", cli_url(other)]
        + ["--namespace", namespace, "--count", "2", "--timeout", "60", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    watched = tmp_path / "watched"
    watched.mkdir()
    watch = subprocess.Popen(
        [sys.executable, "-m", "distreload", "watch", str(watched), "--redis-url", cli_url(other)]
        + ["--namespace", namespace, "--count", "1", "--timeout", "60", "--json", "--debounce", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    try:
        for process, ready in ((listen, "listening on"), (watch, "watching")):
            assert process.stderr is not None
            line = process.stderr.readline()
            assert ready in line, line + process.stderr.read()
        check(cli_published(cli_url(owner), namespace), "CLI while listen runs")
        (watched / "page.html").write_text("changed")
        watch_out, watch_err = watch.communicate(timeout=60)
        assert watch.returncode == 0, watch_err
        check(json.loads(watch_out.splitlines()[-1]), "distreload watch")
        listen_out, listen_err = listen.communicate(timeout=60)
        assert listen.returncode == 0, listen_err
        assert [json.loads(line)["version"] for line in listen_out.splitlines()] == published[-2:]
    finally:
        for process in (listen, watch):
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert not fleet.log_lines("cannot use Redis"), fleet.logs()


def test_slot_migration_moves_every_subscription_and_loses_nothing(
    cluster: RedisCluster3, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    users(cluster, namespace)
    fleet = fleet_on_every_master(cluster, namespace, start_server, open_sse)
    slot = cluster.slot_of(state_key(namespace))
    source = cluster.owner(slot)
    target, bystander = (node for node in cluster.masters if node is not source)
    ledger = Ledger(fleet)

    def publish(label: str) -> str:
        attempt = ledger.publish(label, lambda: cli_published(cli_url(bystander), namespace))
        assert attempt.version is not None, attempt.error
        return str(attempt.version)

    before = publish("stable")
    cluster.begin_slot_migration(slot, target)
    migrating = publish("MIGRATING, key on the source")  # runs on the source: reaches the workers at once
    assert cluster.move_slot_keys(slot, source, target) >= 1  # the state, and the presence records
    # The key is on the target now (ASK), the subscriptions still on the source: this one reaches nobody
    # directly; the workers get it from the state when the slot's move makes them subscribe again.
    stranded = publish("key moved, slot not yet")
    finished = time.monotonic()
    cluster.finish_slot_migration(slot, target)
    caught_up = fleet.wait_all_reach(version_of(stranded), ledger.attempts[-1].marks, timeout=20)
    after = publish("after")
    ledger.assert_none_lost(timeout=20)
    time.sleep(0.3)
    # A migration loses no write: each stream saw each reload once, in order, nothing more.
    assert fleet.received() == {k: [before, migrating, stranded, after] for k in fleet.received()}
    took = caught_up - finished
    print(f"\nslot migration: every stream had the stranded reload {took:.2f} s after SETSLOT NODE")
    status = distreload_cli("status", "--redis-url", cli_url(source), "--namespace", namespace, "--json")
    assert status.returncode == 0, status.stderr
    assert len(json.loads(status.stdout)["workers"]) == 3


def test_a_killed_master_is_replaced_and_every_worker_follows(
    cluster_with_replicas: RedisCluster3,
    namespace: str,
    start_server: ServerFactory,
    open_sse: Callable[..., SSEReader],
) -> None:
    cluster = cluster_with_replicas
    users(cluster, namespace)
    owner = cluster.owner(cluster.slot_of(state_key(namespace)))
    masters = cluster.masters
    # One worker was started with the URL of the node that dies: it finds the cluster from the others.
    fleet = fleet_on_every_master(cluster, namespace, start_server, open_sse)
    survivor = next(node for node in cluster.masters if node is not owner)
    ledger = Ledger(fleet)
    first = ledger.publish("before", lambda: cli_published(cli_url(survivor), namespace))
    assert first.version is not None, first.error

    def in_process() -> dict[str, object]:
        result = send_reload_signal(redis_url=cli_url(survivor), namespace=namespace)
        assert result is not None
        return {"version": str(result.version)}

    # Through a worker whose own node survives (fleet servers follow cluster.masters' order).
    api_server = fleet.servers[[node.name for node in masters].index(survivor.name)]
    stop = ledger.keep_publishing({"thread": in_process, "api": lambda: trigger(api_server)}, every=0.3)
    killed = time.monotonic()
    try:
        cluster.kill(owner)
        promoted = time.monotonic()
        time.sleep(3)
    finally:
        stop()
    last = ledger.publish("after", lambda: cli_published(cli_url(survivor), namespace))
    assert last.version is not None, last.error
    ledger.assert_none_lost(timeout=30)
    during = [a for a in ledger.attempts if killed <= a.started]
    first_after = next(a for a in during if a.version is not None)
    assert first_after.version is not None
    everywhere = fleet.wait_all_reach(first_after.version, first_after.marks, timeout=1)
    print(
        f"\nmaster killed: replica promoted after {promoted - killed:.2f} s; the first successful publish "
        f"after the kill reached every stream {everywhere - killed:.2f} s after it\n" + ledger.summary(killed)
    )
    status = distreload_cli("status", "--redis-url", cli_url(survivor), "--namespace", namespace, "--json")
    assert status.returncode == 0, status.stderr
    assert len(json.loads(status.stdout)["workers"]) == 3

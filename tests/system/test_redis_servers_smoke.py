"""Each topology of redis_servers.py starts, is usable, and cleans up after itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests import conftest
from tests.conftest import missing
from tests.system import redis_servers
from tests.system.redis_servers import (
    NetHosts,
    RedisCluster3,
    SentinelSet,
    Unavailable,
    leftover_net_objects,
    wait_until,
)

# The fixtures, made visible to this module (a conftest would import them the same way).
redis_cluster3 = redis_servers.redis_cluster3
sentinel_set = redis_servers.sentinel_set
net_hosts = redis_servers.net_hosts

STARTUP_BUDGET = 10.0  # seconds per topology: the system tests start many of them


@pytest.mark.redis
def test_cluster_delivers_plain_publish_from_any_node_to_every_node(redis_cluster3: RedisCluster3) -> None:
    assert redis_cluster3.startup_seconds < STARTUP_BUDGET
    assert len(redis_cluster3.masters) == 3
    clients = [node.client() for node in redis_cluster3.nodes]
    pubsubs = [client.pubsub(ignore_subscribe_messages=True) for client in clients]  # type: ignore[no-untyped-call]
    try:
        for pubsub in pubsubs:
            pubsub.subscribe("smoke")
            assert pubsub.get_message(timeout=1) is None  # the confirmation, ignored
        # A plain PUBLISH is broadcast over the cluster bus; its count covers the local node only.
        assert redis_cluster3.nodes[0].command("PUBLISH", "smoke", "hello") == 1
        for pubsub in pubsubs:
            message = pubsub.get_message(timeout=2)
            assert message is not None and message["data"] == "hello"
    finally:
        for pubsub, client in zip(pubsubs, clients, strict=True):
            pubsub.close()
            client.close()


@pytest.mark.redis
def test_cluster_moves_a_slot_with_its_keys(redis_cluster3: RedisCluster3) -> None:
    key = "distreload:{smoke}:state"
    slot = redis_cluster3.slot_of(key)
    source = redis_cluster3.owner(slot)
    source.command("HSET", key, "version", 7)
    target = next(node for node in redis_cluster3.masters if node is not source)

    assert redis_cluster3.migrate_slot(slot, target) == 1

    assert all(redis_cluster3.owner(slot, seen_by=node) is target for node in redis_cluster3.nodes)
    assert target.command("HGET", key, "version") == "7"
    with pytest.raises(redis.ResponseError, match=str(slot)):  # MOVED <slot> <target>
        source.command("HGET", key, "version")


@pytest.mark.redis
@pytest.mark.slow
def test_sentinel_failover_and_primary_kill_change_the_master(sentinel_set: SentinelSet) -> None:
    assert sentinel_set.startup_seconds < STARTUP_BUDGET
    ports = ",".join(f"127.0.0.1:{port}" for _, port in sentinel_set.sentinel_addresses)
    assert sentinel_set.url() == f"redis+sentinel://{ports}/mymaster/0"
    first = sentinel_set.primary
    first.command("SET", "smoke", "before")

    second = sentinel_set.failover()

    assert second is not first and sentinel_set.primary is second
    assert second.info("replication")["role"] == "master"
    assert first.info("replication")["role"] == "slave"
    assert second.command("GET", "smoke") == "before"

    third = sentinel_set.kill_primary()

    assert third is first and not second.alive
    assert sentinel_set.master_address() == ("127.0.0.1", first.port)
    assert first.command("SET", "smoke", "after") is True  # writable: promoted, not a replica any more


@pytest.mark.redis
def test_sentinel_set_over_tls_serves_a_tls_client(tmp_path: Path) -> None:
    from redis.sentinel import Sentinel

    try:
        sentinels = SentinelSet(tmp_path / "tls", tls=True, password="datapw").start()
    except Unavailable as exc:
        missing(str(exc))
    try:
        assert sentinels.startup_seconds < STARTUP_BUDGET and sentinels.tls is not None
        assert sentinels.url().startswith("rediss+sentinel://:datapw@127.0.0.1:")
        tls = sentinels.tls.client_options()
        # redis-py takes the Sentinels' TLS options apart (sentinel_kwargs) from the data nodes' ones.
        sentinel = Sentinel(sentinels.sentinel_addresses, sentinel_kwargs=tls, password="datapw", **tls)  # type: ignore[no-untyped-call]
        primary = sentinel.master_for(sentinels.master_name)  # type: ignore[no-untyped-call]
        try:
            assert primary.ping() is True
        finally:
            primary.close()
            for client in sentinel.sentinels:
                client.close()
    finally:
        sentinels.stop()


def _udp_loss(hosts: NetHosts, host: str, count: int = 400) -> float:
    """Round-trip loss of UDP datagrams between the driver and an echo server inside ``host``."""
    address, port = hosts[host].address, 40999
    echo = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(({address!r}, {port}))\n"
        "s.settimeout(5)\n"
        "while True:\n"
        "    try:\n"
        "        data, peer = s.recvfrom(64)\n"
        "    except TimeoutError:\n"
        "        break\n"
        "    try:\n"
        "        s.sendto(data, peer)\n"
        "    except PermissionError:\n"  # a DROP in this host's OUTPUT chain is reported to the sender
        "        pass\n"
    )
    server = hosts.popen(host, sys.executable, "-c", echo)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            # Wait until the echo server answers at all (a few tries: some of them are dropped).
            def answers() -> bool:
                sock.sendto(b"probe", (address, port))
                sock.settimeout(0.2)
                try:
                    return sock.recvfrom(64)[0] == b"probe"
                except TimeoutError:
                    return False

            wait_until(answers, 10, f"the UDP echo server in {host}")
            sock.setblocking(False)
            with_reply: set[int] = set()
            for sequence in range(count):
                sock.sendto(str(sequence).encode(), (address, port))
                time.sleep(0.002)
                with_reply |= _drain(sock)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                with_reply |= _drain(sock)
                time.sleep(0.01)
        return 1 - len(with_reply) / count
    finally:
        server.kill()
        server.wait(5)


def _drain(sock: socket.socket) -> set[int]:
    received: set[int] = set()
    while True:
        try:
            data = sock.recvfrom(64)[0]
        except (TimeoutError, BlockingIOError):
            return received
        if data.isdigit():
            received.add(int(data))


@pytest.mark.redis
def test_net_hosts_reach_each_other_lose_packets_and_partition(net_hosts: NetHosts) -> None:
    assert net_hosts.startup_seconds < STARTUP_BUDGET
    server = net_hosts.start_redis("h1")
    assert server.host == net_hosts["h1"].address != "127.0.0.1"

    # A process in one namespace reaches a Redis in another over the bridge, and so does the driver.
    reply = net_hosts.run("h2", "redis-cli", "-h", server.host, "-p", str(server.port), "PING", timeout=10)
    assert reply.stdout.strip() == "PONG", reply.stderr
    assert server.command("PING") is True
    # The Redis is bound to h1's address only: from inside h2, h1's loopback is not h2's.
    local = net_hosts.run("h2", "redis-cli", "-h", "127.0.0.1", "-p", str(server.port), "PING", timeout=10)
    assert "PONG" not in local.stdout

    # 20 % each way on h3's link: about 1 - 0.8 * 0.8 = 36 % of round trips are lost.
    assert _udp_loss(net_hosts, "h3", count=100) < 0.05
    net_hosts.drop("h3", 20)
    rules = net_hosts.iptables_rules("h3")
    assert rules.count("--probability 0.2") == 2, rules
    loss = _udp_loss(net_hosts, "h3")
    assert 0.2 < loss < 0.55, loss
    net_hosts.drop("h3", 0)
    assert "statistic" not in net_hosts.iptables_rules("h3")
    # The same loss applied where h3's packets arrive (the driver's INPUT, the other hosts' INPUT).
    net_hosts.drop("h3", 20, egress_at_receivers=True)
    assert net_hosts["h3"].address in _root_input_rules()
    loss = _udp_loss(net_hosts, "h3")
    assert 0.2 < loss < 0.55, loss
    net_hosts.drop("h3", 0)
    assert net_hosts["h3"].address not in _root_input_rules()

    # A partition loses everything silently (no reset, no refusal: connecting times out); heal restores.
    net_hosts.partition("h1")
    with pytest.raises(TimeoutError):
        socket.create_connection((server.host, server.port), timeout=1).close()
    probe = (
        f"import socket; socket.create_connection(({server.host!r}, {server.port}), timeout=1); print('ok')"
    )
    cut = net_hosts.run("h2", sys.executable, "-c", probe, timeout=15)
    assert "ok" not in cut.stdout and "timed out" in cut.stderr, cut.stderr
    net_hosts.heal("h1")
    wait_until(lambda: server.command("PING") is True, 10, "h1 reachable again after heal")


def _root_input_rules() -> str:
    return subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True, check=True).stdout


def _root_forward_rules() -> str:
    return subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True).stdout


def test_net_hosts_cleanup_removes_everything_even_after_a_failure() -> None:
    try:
        hosts = NetHosts(2).start()
    except Unavailable as exc:  # checked apart: Unavailable is a RuntimeError too
        missing(str(exc))
    names = [host.namespace for host in hosts.hosts.values()]
    address = hosts["h2"].address
    with pytest.raises(RuntimeError, match="boom"):
        try:
            hosts.start_redis("h1")
            hosts.drop("h2", 50, egress_at_receivers=True)
            hosts.partition("h1")
            raise RuntimeError("boom")
        finally:
            hosts.stop()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
    assert not [name for name in leftover_net_objects() if hosts.suffix in name]
    assert address not in _root_input_rules() and hosts.bridge not in _root_forward_rules()


def test_without_root_net_hosts_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(Unavailable, match="root"):
        NetHosts(1).start()


def test_missing_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="required under CI=true"):
        missing("the thing")
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="the thing"):
        missing("the thing")


@pytest.mark.redis
def test_a_failed_start_leaves_no_process_behind(tmp_path: Path) -> None:
    try:
        redis_servers.require_binaries("redis-server", "redis-cli")
    except Unavailable as exc:  # checked apart: Unavailable is a RuntimeError too
        missing(str(exc))
    cluster = RedisCluster3(tmp_path / "cluster", extra_args=["--no-such-option", "x"])
    with pytest.raises(RuntimeError, match="did not start"):
        cluster.start()
    assert not any(node.alive for node in cluster.nodes)
    assert not (tmp_path / "cluster" / "node0").exists()

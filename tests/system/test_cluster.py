"""The whole cluster against a real Redis: two server processes ("hosts") with several workers each."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

import pytest

from distreload.protocol import channel_name

from ..conftest import ServerFactory, ServerProcess, cli_published
from ..sse import SSEReader

pytestmark = pytest.mark.redis


def every_worker_answering(server: ServerProcess, workers: int, timeout: float = 30) -> None:
    """Wait until each worker has served a request: a worker accepts only once its start-up is done."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {sorted(seen)} of {workers} workers answered"
        with urllib.request.urlopen(server.base_url + "/---distreload---", timeout=10) as response:
            seen.add(json.load(response)["worker"])
        time.sleep(0.01)


def readers_on_every_worker(
    open_sse: Callable[..., SSEReader], server: ServerProcess, workers: int, attempts: int = 200
) -> list[SSEReader]:
    """Open streams until every worker process of ``server`` holds at least one (the kernel hands a
    shared listening socket's connections out unevenly, so this may take many tries)."""
    every_worker_answering(server, workers)
    readers: list[SSEReader] = []
    seen: set[str] = set()
    for _ in range(attempts):
        reader = open_sse(server.port)
        hello = reader.wait_for("hello")[0].json()
        readers.append(reader)
        seen.add(hello["worker"])
        if len(seen) == workers and len(readers) >= workers * 2:
            return readers
    raise AssertionError(f"streams reached only {sorted(seen)} of {workers} workers")


def wait_for_workers(redis_url: str, namespace: str, count: int, timeout: float = 20.0) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    channel = channel_name(namespace)
    while time.monotonic() < deadline:
        subscribers = dict(client.pubsub_numsub(channel))[channel.encode()]
        if subscribers >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"only {subscribers} of {count} workers subscribed")


@pytest.fixture
def two_hosts(start_server: ServerFactory, shared_redis_url: str, namespace: str) -> list[ServerProcess]:
    env = {"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    hosts = [start_server("tests.apps.cluster_app:app", workers=2, env=env) for _ in range(2)]
    wait_for_workers(shared_redis_url, namespace, 4)
    return hosts


def test_cli_publish_reaches_every_worker_of_both_hosts_exactly_once(
    two_hosts: list[ServerProcess], shared_redis_url: str, namespace: str, open_sse: Callable[..., SSEReader]
) -> None:
    readers = [r for host in two_hosts for r in readers_on_every_worker(open_sse, host, 2)]
    workers = {r.wait_for("hello")[0].json()["worker"] for r in readers}
    assert len(workers) == 4

    result = cli_published(shared_redis_url, namespace)
    assert result["receivers"] == 4

    for reader in readers:
        reload = reader.wait_for("reload")[0]
        assert reload.id == result["version"]
        assert reload.json() == {
            "version": result["version"],
            "kind": "reload",
            "paths": [],
            "spread": 0.0,
            "match": "",
        }
    time.sleep(0.5)
    assert all(len(reader.of("reload")) == 1 for reader in readers)


@pytest.mark.parametrize("route", ["/trigger", "/trigger-sync"])
def test_publish_from_inside_one_worker_reaches_all_of_them(
    two_hosts: list[ServerProcess], route: str, open_sse: Callable[..., SSEReader]
) -> None:
    readers = [r for host in two_hosts for r in readers_on_every_worker(open_sse, host, 2)]
    request = urllib.request.Request(two_hosts[0].base_url + route, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    assert answer["receivers"] == 4
    for reader in readers:
        assert [e.id for e in reader.wait_for("reload")] == [answer["version"]]
    time.sleep(0.3)
    assert all(len(reader.of("reload")) == 1 for reader in readers)


def test_reconnect_with_an_old_last_event_id_gets_the_reload_at_once(
    two_hosts: list[ServerProcess], open_sse: Callable[..., SSEReader]
) -> None:
    first = open_sse(two_hosts[0].port)
    old = first.wait_for("hello")[0].id
    first.close()
    request = urllib.request.Request(two_hosts[0].base_url + "/trigger", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        version = json.load(response)["version"]
    # Reconnect to the *other* host, as a load balancer might send it.
    again = open_sse(two_hosts[1].port, headers={"Last-Event-ID": old})
    assert [e.id for e in again.wait_for("reload")] == [version]
    current = open_sse(two_hosts[1].port, headers={"Last-Event-ID": version})
    current.wait_for("hello")
    time.sleep(0.3)
    assert current.of("reload") == []


def test_stopping_a_server_with_open_streams_is_prompt(
    two_hosts: list[ServerProcess], open_sse: Callable[..., SSEReader]
) -> None:
    readers = readers_on_every_worker(open_sse, two_hosts[0], 2)
    took = two_hosts[0].stop()
    assert took < 5, two_hosts[0].log()
    for reader in readers:
        assert reader.closed.wait(5)
        assert reader.of("shutdown")

"""Redis Sentinel, end to end: app servers given only a ``redis+sentinel://`` URL, event streams on every
worker, publishes through every path while the Sentinels fail the master over.

Each test owns a primary, a replica and three Sentinels (tests/system/redis_servers.py). What a publish
made during a failover must do: reach every stream once it is over, or fail loudly (an exception, a 503, a
non-zero exit). Figures are printed; run with ``-s`` to see them.
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

from ..conftest import ROOT, ServerFactory, cli_published, distreload_cli
from ..sse import SSEReader
from . import redis_servers
from .redis_apps import Fleet, Ledger, cli_rule, set_user, start_fleet, trigger, worker_rule
from .redis_servers import SentinelSet

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with redis_servers.running(SentinelSet(tmp_path / "sentinel")) as built:
        yield built


def sentinel_url(sentinels: SentinelSet, user: str, password: str) -> str:
    """The set's URL with a data-node user (the userinfo goes to the data nodes only)."""
    url = sentinels.url()
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"


def fleet_and_publishers(
    sentinels: SentinelSet, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> tuple[Fleet, Ledger, str]:
    """Two app servers of two workers each on the Sentinel URL (README worker rule on both data nodes), a
    ledger, and the CLI user's URL."""
    set_user(sentinels.servers, "dr-worker", "wpw", worker_rule(namespace))
    set_user(sentinels.servers, "dr-cli", "cpw", cli_rule(namespace))
    url = sentinel_url(sentinels, "dr-worker", "wpw")
    fleet = start_fleet(start_server, open_sse, [url, url], namespace, workers=2)
    return fleet, Ledger(fleet), sentinel_url(sentinels, "dr-cli", "cpw")


def publish_during(
    ledger: Ledger, fleet: Fleet, cli_url: str, namespace: str, fault: Callable[[], object], settle: float
) -> tuple[float, float]:
    """Publish every 0.25 s (a thread with send_reload_signal(), a worker's send_reload_signal_async())
    while ``fault`` runs and ``settle`` seconds after; returns when the fault started and ended."""

    def in_process() -> dict[str, object]:
        result = send_reload_signal(redis_url=cli_url, namespace=namespace)
        assert result is not None
        return {"version": str(result.version)}

    stop = ledger.keep_publishing(
        {"thread": in_process, "api": lambda: trigger(fleet.servers[0])}, every=0.25
    )
    started = time.monotonic()
    try:
        fault()
        ended = time.monotonic()
        time.sleep(settle)
    finally:
        stop()
    return started, ended


def check_recovery(
    ledger: Ledger,
    fleet: Fleet,
    cli_url: str,
    namespace: str,
    label: str,
    fault: tuple[float, float],
    recovered: Callable[[], None] = lambda: None,
) -> float:
    """The first publish made once the master changed reached every stream (``recovered`` runs then),
    every successful publish reached every stream, and so does the next one. Returns how long after the
    change the first one was everywhere."""
    t0, t1 = fault
    first_after = next(a for a in ledger.succeeded if a.started >= t1)
    assert first_after.version is not None
    everywhere = fleet.wait_all_reach(first_after.version, first_after.marks, timeout=30)
    recovered()
    last = ledger.publish("after", lambda: cli_published(cli_url, namespace))
    assert last.version is not None, last.error
    ledger.assert_none_lost(timeout=30)
    print(
        f"\n{label}: the master changed {t1 - t0:.2f} s after the fault began; the first reload published "
        f"after that reached every stream {everywhere - first_after.started:.2f} s after it was published "
        f"({everywhere - t1:.2f} s after the change); {len(ledger.succeeded)} publishes went out, "
        f"{len(ledger.failed)} failed loudly\n" + ledger.summary(t0)
    )
    return everywhere - t1


def test_forced_failover_every_worker_follows_before_the_old_master_is_demoted(
    sentinels: SentinelSet, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    fleet, ledger, cli_url = fleet_and_publishers(sentinels, namespace, start_server, open_sse)
    old = sentinels.primary
    first = ledger.publish("before", lambda: cli_published(cli_url, namespace))
    assert first.version is not None, first.error
    # SENTINEL FAILOVER: the old master stays a writable master for ~10 s, until the Sentinels demote it.
    fault = publish_during(
        ledger, fleet, cli_url, namespace, lambda: sentinels.failover(wait_demoted=False), settle=2.0
    )

    def before_the_demotion() -> None:
        # Followed promptly: every stream had a reload from the new master while the old one still
        # thought itself a master (the Sentinels demote it ~10 s after the failover).
        role = old.info("replication")["role"]
        assert role == "master", f"streams caught up only after the old master was demoted ({role})"

    check_recovery(ledger, fleet, cli_url, namespace, "SENTINEL FAILOVER", fault, before_the_demotion)
    final = cli_published(cli_url, namespace)
    assert final["receivers"] == 4  # all four subscribed on the new master


def test_killed_primary_every_worker_follows_and_nothing_is_lost(
    sentinels: SentinelSet, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    fleet, ledger, cli_url = fleet_and_publishers(sentinels, namespace, start_server, open_sse)
    first = ledger.publish("before", lambda: cli_published(cli_url, namespace))
    assert first.version is not None, first.error
    fault = publish_during(ledger, fleet, cli_url, namespace, sentinels.kill_primary, settle=3.0)
    check_recovery(ledger, fleet, cli_url, namespace, "primary killed", fault)
    # While no master was reachable, publishes failed (with a reason), none vanished.
    assert ledger.failed, "expected publishes to fail while no master was reachable"
    final = cli_published(cli_url, namespace)
    assert final["receivers"] == 4


def test_tls_sentinels_with_their_own_password_and_every_cli_command(
    tmp_path: Path, namespace: str, start_server: ServerFactory, open_sse: Callable[..., SSEReader]
) -> None:
    try:
        sentinels = SentinelSet(
            tmp_path / "tls", tls=True, password="datapw", sentinel_password="sentpw"
        ).start()
    except redis_servers.Unavailable as exc:
        redis_servers.missing(str(exc))
    try:
        url = sentinels.url()
        assert url.startswith("rediss+sentinel://:datapw@") and "sentinel_password=sentpw" in url
        fleet = start_fleet(start_server, open_sse, [url], namespace, workers=2)
        listen = subprocess.Popen(
            [sys.executable, "-m", "distreload", "listen", "--redis-url", url, "--namespace", namespace]
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
            assert "datapw" not in line and "sentpw" not in line
            published = cli_published(url, namespace)
            assert published["receivers"] == 2  # the two workers; the listener is not counted
            out, err = listen.communicate(timeout=60)
            assert listen.returncode == 0, err
            assert json.loads(out)["version"] == published["version"]
        finally:
            if listen.poll() is None:
                listen.kill()
                listen.communicate()
        for reader in fleet.readers:
            assert [e.id for e in reader.wait_for("reload")] == [published["version"]]
        status = distreload_cli("status", "--redis-url", url, "--namespace", namespace, "--json")
        assert status.returncode == 0, status.stderr
        assert (
            sorted(f"{w['host']}:{w['pid']}" for w in json.loads(status.stdout)["workers"]) == fleet.workers
        )
        # The Sentinels' password given as the data nodes' (a common mistake): one line that says so.
        wrong = url.replace("sentinel_password=sentpw&", "")
        refused = distreload_cli("publish", "--redis-url", wrong, "--namespace", namespace)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "sentinel_password" in refused.stderr and "datapw" not in refused.stderr, refused.stderr
    finally:
        sentinels.stop()

"""``distreload status``: the live workers read from their presence records."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from distreload.cli import main
from distreload.protocol import presence_prefix

from .cli_tools import clean_cli_environment_fixture  # noqa: F401 - fixtures
from .conftest import ServerFactory
from .sse import SSEReader

pytestmark = pytest.mark.usefixtures("clean_cli_environment")


# --- status ----------------------------------------------------------------------------------------------


@pytest.mark.redis
def test_status_shows_live_workers_and_their_streams(
    start_server: ServerFactory,
    shared_redis_url: str,
    namespace: str,
    open_sse: Callable[..., SSEReader],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = start_server(
        "tests.apps.cluster_app:app",
        workers=2,
        env={"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace},
    )
    reader = open_sse(server.port)
    holder = reader.wait_for("hello")[0].json()["worker"]
    target = ["--redis-url", shared_redis_url, "--namespace", namespace]
    # Presence is refreshed every 5 s: wait for the one that counts the open stream.
    deadline = time.monotonic() + 20
    while True:
        assert main(["status", *target, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        if len(status["workers"]) == 2 and status["streams"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["namespace"] == namespace and status["streams"] == 1
    pids = sorted(w["pid"] for w in status["workers"])
    assert len(pids) == 2
    assert {f"{w['host']}:{w['pid']}": w["streams"] for w in status["workers"]}[holder] == 1
    assert all(w["version"] == status["version"] and w["build"] and w["age"] >= 0 for w in status["workers"])

    assert main(["status", *target]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["HOST", "PID", "BROWSERS", "VERSION", "BUILD", "AGE"]
    assert {line.split()[1] for line in text[1:3]} == {str(pid) for pid in pids}
    assert text[-1] == (
        f"1 host, 2 workers, 1 browser stream; cluster version {status['version']} (namespace {namespace!r})"
    )


@pytest.mark.redis
def test_status_forgets_a_worker_when_its_presence_expires(
    shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    record = {
        "host": "gone-host",
        "pid": 4242,
        "started": time.time() - 125,
        "streams": 3,
        "version": "0123456789abcdef-7",
        "build": "b1",
    }
    with redis.Redis.from_url(shared_redis_url) as client:
        client.set(f"{presence_prefix(namespace)}gone-host:4242", json.dumps(record), px=1500)
    target = ["--redis-url", shared_redis_url, "--namespace", namespace]
    assert main(["status", *target]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["gone-host", "4242", "3", "0123456789abcdef-7", "b1", "2m05s"]
    time.sleep(1.7)
    assert main(["status", *target]) == 0
    assert capsys.readouterr().out == (
        f"no live workers in namespace {namespace!r} at {shared_redis_url} (cluster version none yet)\n"
    )


@pytest.mark.redis
def test_a_bad_presence_record_is_skipped_with_one_line_and_the_rest_is_shown(
    shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    prefix = presence_prefix(namespace)
    good = {"host": "web-1", "pid": 7, "started": time.time(), "streams": 2, "version": "ab-1", "build": "b"}
    with redis.Redis.from_url(shared_redis_url) as client:
        client.set(prefix + "web-1:7", json.dumps(good), ex=30)
        client.set(prefix + "evil:1", b'{"host": "evil", "pid": 1, "started": 1e999}', ex=30)
        client.set(prefix + "types:2", json.dumps({"host": 5, "pid": "x"}), ex=30)
        client.set(prefix + "junk:3", b"\x1b[2J not json", ex=30)
    target = ["--redis-url", shared_redis_url, "--namespace", namespace]
    assert main(["status", *target]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].split()[:3] == ["web-1", "7", "2"]
    assert captured.out.splitlines()[-1].startswith("1 host, 1 worker, 2 browser streams;")
    notes = captured.err.splitlines()
    assert notes == [
        "distreload status: skipped the unreadable presence record 'evil:1': started inf is not a time",
        "distreload status: skipped the unreadable presence record 'junk:3': not JSON (JSONDecodeError)",
        "distreload status: skipped the unreadable presence record 'types:2': host 5 is not text",
    ]
    assert main(["status", *target, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [w["pid"] for w in status["workers"]] == [7] and status["skipped"] == 3


@pytest.mark.redis
def test_status_pages_adds_up_every_worker_s_pages_by_path(
    shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    from distreload.protocol import pages_prefix

    first = {
        "worker": "web-1:7",
        "pages": 3,
        "paths": {
            "/tv/1": {
                "versions": {"ab-2": 2, "ab-1": 1},
                "states": {"live": 2, "paused": 1},
                "how": {"reloaded": 3},
            }
        },
    }
    second = {
        "worker": "web-2:9",
        "pages": 1,
        "paths": {
            "/tv/1": {
                "versions": {"ab-2": 1},
                "states": {"overlay: the server answered 500": 1},
                "how": {"loaded": 1},
            }
        },
    }
    with redis.Redis.from_url(shared_redis_url) as client:
        client.set(pages_prefix(namespace) + "web-1:7", json.dumps(first), ex=30)
        client.set(pages_prefix(namespace) + "web-2:9", json.dumps(second), ex=30)
        client.set(pages_prefix(namespace) + "junk:1", b"not json", ex=30)
    target = ["--redis-url", shared_redis_url, "--namespace", namespace]
    assert main(["status", "--pages", *target]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["PATH", "PAGES", "VERSIONS", "STATES"]
    assert lines[1].split("  ")[0] == "/tv/1"
    assert "ab-1 1, ab-2 3" in lines[1]
    assert "live 2, overlay: the server answered 500 1, paused 1" in lines[1]
    assert lines[-1] == f"4 pages on 1 path, reported by 2 workers (namespace {namespace!r})"
    assert main(["status", "--pages", "--json", *target]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pages"] == 4 and data["paths"]["/tv/1"]["how"] == {"loaded": 1, "reloaded": 3}


@pytest.mark.redis
def test_text_from_redis_is_printed_with_its_control_characters_escaped(
    shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    hostile = {
        "host": "web\x1b]0;owned\x07\x1b[2J",
        "pid": 9,
        "started": time.time(),
        "streams": 0,
        "version": "ab-1\r\x1b[31m",
        "build": "b\u202e1",
    }
    with redis.Redis.from_url(shared_redis_url) as client:
        client.set(presence_prefix(namespace) + "web:9", json.dumps(hostile), ex=30)
    target = ["--redis-url", shared_redis_url, "--namespace", namespace]
    assert main(["status", *target]) == 0
    out = capsys.readouterr().out
    assert not [c for c in out if not c.isprintable() and c != "\n"]
    row = out.splitlines()[1].split()
    assert row[0] == "web\\x1b]0;owned\\x07\\x1b[2J"
    assert row[3] == "ab-1\\r\\x1b[31m" and row[4] == "b\\u202e1"
    assert main(["status", *target, "--json"]) == 0  # JSON escapes them itself, and keeps the text as it is
    assert json.loads(capsys.readouterr().out)["workers"][0]["host"] == hostile["host"]

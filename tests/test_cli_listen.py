"""``distreload listen``: from Redis and from an app's event stream."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from distreload.cli import main
from distreload.protocol import observers_channel_name, parse_message

from .cli_tools import (  # noqa: F401 - fixtures
    TOKEN,
    ChannelSpy,
    app_with_token_fixture,
    clean_cli_environment_fixture,
    run_cli,
    spawn_cli,
)
from .conftest import ServerProcess

pytestmark = pytest.mark.usefixtures("clean_cli_environment")


def test_listen_over_http_prints_what_the_app_streams(app_with_token: ServerProcess) -> None:
    listener = spawn_cli(
        "listen", "--url", app_with_token.base_url, "--count", "1", "--timeout", "30", "--json"
    )
    try:
        assert listener.stderr is not None
        assert "listening on" in listener.stderr.readline()
        assert listener.stderr.readline().startswith("connected to worker ")
        published = run_cli("publish", "--url", app_with_token.base_url, "--token", TOKEN, "--json")
        out, err = listener.communicate(timeout=20)
    finally:
        listener.kill()
        listener.wait()
    assert listener.returncode == 0, err
    assert json.loads(out) == {
        "version": json.loads(published.stdout)["version"],
        "kind": "reload",
        "paths": [],
        "source": f"{app_with_token.base_url}/---distreload---/events",
    }


def test_listen_over_http_waits_as_long_as_the_announced_heartbeat() -> None:
    """A worker announcing 0.3 s heartbeats that then goes quiet is given up in about a second, not 45."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    hello = b'event: hello\ndata: {"version": "0123456789abcdef-0", "worker": "w:1", "heartbeat": 0.3}\n\n'

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + hello)
            time.sleep(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started = time.monotonic()
    done = run_cli("listen", "--url", f"http://127.0.0.1:{port}", timeout=20)
    listener.close()
    assert done.returncode == 1 and time.monotonic() - started < 6
    assert "no heartbeat from" in done.stderr and "in 1.9 s" in done.stderr


# --- listen ----------------------------------------------------------------------------------------------


@pytest.mark.redis
def test_listen_prints_reloads_and_ignores_foreign_messages(shared_redis_url: str, namespace: str) -> None:
    import redis

    listener = spawn_cli(
        "listen", "--redis-url", shared_redis_url, "--namespace", namespace, "--count", "2", "--timeout", "30"
    )
    try:
        assert listener.stderr is not None
        assert listener.stderr.readline() == (
            f"listening on {observers_channel_name(namespace)} at {shared_redis_url} (Ctrl-C to stop)\n"
        )
        with redis.Redis.from_url(shared_redis_url) as client:
            client.publish(observers_channel_name(namespace), b"not json")
        target = ["--redis-url", shared_redis_url, "--namespace", namespace, "--json"]
        first = json.loads(run_cli("publish", *target).stdout)
        second = json.loads(run_cli("publish", *target, "--css", "/a.css").stdout)
        out, err = listener.communicate(timeout=20)
    finally:
        listener.kill()
        listener.wait()
    assert listener.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f" reload {first['version']}  ({observers_channel_name(namespace)})")
    assert lines[1].endswith(f" css {second['version']} /a.css  ({observers_channel_name(namespace)})")
    assert "ignored a message that distreload did not publish: not UTF-8 JSON" in err


@pytest.mark.redis
def test_a_running_listen_is_not_counted_as_a_worker_process(shared_redis_url: str, namespace: str) -> None:
    """Three subscribers on the workers' channel (what three worker processes hold) and a running listen:
    publish reports three, and the listener still prints the reload."""
    workers = [ChannelSpy(shared_redis_url, namespace) for _ in range(3)]
    listener = spawn_cli(
        "listen", "--redis-url", shared_redis_url, "--namespace", namespace, "--count", "1", "--timeout", "30"
    )
    try:
        assert listener.stderr is not None
        assert listener.stderr.readline().startswith("listening on ")
        published = run_cli("publish", "--redis-url", shared_redis_url, "--namespace", namespace, "--json")
        assert published.returncode == 0, published.stderr
        out, err = listener.communicate(timeout=20)
        for worker in workers:
            assert str(parse_message(worker.next()).version) == json.loads(published.stdout)["version"]
    finally:
        listener.kill()
        listener.wait()
        for worker in workers:
            worker.close()
    assert json.loads(published.stdout)["receivers"] == 3
    assert listener.returncode == 0, err
    assert out.split()[1:3] == ["reload", json.loads(published.stdout)["version"]], out


@pytest.mark.redis
def test_listen_timeout_without_count_is_success(
    shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    target = ["--redis-url", shared_redis_url, "--namespace", namespace]
    assert main(["listen", *target, "--timeout", "0.5"]) == 0
    assert time.monotonic() - started < 5
    assert capsys.readouterr().out == ""

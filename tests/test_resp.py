"""The RESP publisher: what ``distreload publish`` runs for a plain Redis, against real redis-server
processes."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from distreload.config import Target
from distreload.protocol import ClusterVersion, PublishError, ReloadRequest, channel_name, state_key
from distreload.resp import ClusterRedirect, publish_over_resp

from .conftest import RedisProcess
from .system import redis_servers
from .system.redis_servers import RedisCluster3

pytestmark = pytest.mark.redis


def test_publish_bumps_state_and_reaches_subscribers(shared_redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(shared_redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel_name(namespace))
    try:
        first = publish_over_resp(Target(shared_redis_url, namespace), ReloadRequest())
        second = publish_over_resp(
            Target(shared_redis_url, namespace), ReloadRequest("css", ("/static/a.css",))
        )
        assert first.receivers == 1 and second.version == ClusterVersion(first.version.epoch, 2)
        messages = [m for m in iter(lambda: pubsub.get_message(timeout=1), None) if m["type"] == "message"]
        assert [json.loads(m["data"]) for m in messages] == [
            {
                "epoch": first.version.epoch,
                "version": 1,
                "kind": "reload",
                "paths": [],
                "spread": 0.0,
                "match": "",
            },
            {
                "epoch": first.version.epoch,
                "version": 2,
                "kind": "css",
                "paths": ["/static/a.css"],
                "spread": 0.0,
                "match": "",
            },
        ]
    finally:
        pubsub.close()
        client.delete(state_key(namespace))
        client.close()


@pytest.fixture
def locked_redis(own_redis: RedisProcess) -> Iterator[RedisProcess]:
    """A private server with an ACL user allowed only one namespace, and a unix socket."""
    own_redis.stop()
    socket_path = str(own_redis.directory / "redis.sock")
    own_redis.extra_args = ["--unixsocket", socket_path, "--unixsocketperm", "700"]
    own_redis.start()
    admin = redis.Redis(port=own_redis.port)
    admin.execute_command(
        "ACL", "SETUSER", "shop", "on", ">s3cret", "~distreload:{shop}:*", "&distreload:{shop}:*", "+@all"
    )
    admin.close()
    yield own_redis


def test_acl_user_database_and_unix_socket(locked_redis: RedisProcess) -> None:
    port = locked_redis.port
    result = publish_over_resp(Target(f"redis://shop:s3cret@127.0.0.1:{port}/3", "shop"), ReloadRequest())
    assert result.version.number == 1
    assert redis.Redis(port=port, db=3).hget(state_key("shop"), "version") == b"1"  # SELECT happened
    sock = locked_redis.directory / "redis.sock"
    again = publish_over_resp(Target(f"unix://shop:s3cret@{sock}?db=3", "shop"), ReloadRequest())
    assert again.version == ClusterVersion(result.version.epoch, 2)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://shop:wrong@127.0.0.1:{port}/0", "WRONGPASS"),
        ("redis://127.0.0.1:{port}/0", "NOPERM"),  # the default user may not touch another app's keys
    ],
)
def test_refusals_are_one_line_with_the_password_masked(
    locked_redis: RedisProcess, url: str, fragment: str
) -> None:
    admin = redis.Redis(port=locked_redis.port)
    admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "resetchannels")
    admin.close()
    with pytest.raises(PublishError) as raised:
        publish_over_resp(Target(url.format(port=locked_redis.port), "shop"), ReloadRequest())
    message = str(raised.value)
    assert fragment in message and "\n" not in message and "wrong" not in message


def test_a_server_that_hangs_up_or_speaks_nonsense_is_a_publish_error() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    replies = iter([b"", b"?what\r\n"])

    def serve() -> None:
        for reply in replies:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        for expected in ("closed the connection", "unexpected reply"):
            with pytest.raises(PublishError, match=expected):
                publish_over_resp(Target(f"redis://127.0.0.1:{port}/0", "x"), ReloadRequest(), timeout=2)
    finally:
        thread.join(5)
        listener.close()


def test_a_cluster_node_that_does_not_hold_the_slot_is_handed_to_redis_py() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"-MOVED 1234 127.0.0.1:7001\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(ClusterRedirect):
            publish_over_resp(Target(f"redis://127.0.0.1:{port}/0", "x"), ReloadRequest(), timeout=2)
    finally:
        thread.join(5)
        listener.close()


def test_one_round_trip_logs_in_selects_and_publishes(own_redis: RedisProcess, namespace: str) -> None:
    """AUTH, SELECT and EVAL go out in one write: the server sees them before the first reply is read."""
    admin = redis.Redis(port=own_redis.port)
    admin.config_set("requirepass", "pw")
    admin = redis.Redis(port=own_redis.port, password="pw")
    result = publish_over_resp(
        Target(f"redis://:pw@127.0.0.1:{own_redis.port}/2", namespace), ReloadRequest()
    )
    assert result.version.number == 1
    assert redis.Redis(port=own_redis.port, password="pw", db=2).hget(state_key(namespace), "version") == b"1"
    admin.close()


def test_a_sentinel_named_where_a_data_node_belongs_is_said_so() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"-ERR unknown command 'EVAL', with args beginning with: 'local' \r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(PublishError, match=r"a Redis Sentinel\? name it redis\+sentinel://") as raised:
            publish_over_resp(Target(f"redis://127.0.0.1:{port}/0", "x"), ReloadRequest(), timeout=2)
        assert "\n" not in str(raised.value) and "args beginning" not in str(raised.value)
    finally:
        thread.join(5)
        listener.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster3]:
    with redis_servers.running(RedisCluster3(tmp_path / "cluster")) as built:
        yield built


def test_on_a_cluster_the_slot_owner_is_published_to_directly_and_the_others_redirect(
    cluster: RedisCluster3, namespace: str
) -> None:
    owner = cluster.owner(cluster.slot_of(state_key(namespace)))
    result = publish_over_resp(Target(owner.url, namespace), ReloadRequest())
    assert result.version.number == 1 and owner.command("HGET", state_key(namespace), "version") == "1"
    for node in cluster.masters:
        if node is not owner:
            with pytest.raises(ClusterRedirect, match="MOVED"):
                publish_over_resp(Target(node.url, namespace), ReloadRequest())

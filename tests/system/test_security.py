"""Security against real processes: off unless enabled, a read-only stream, namespaces, ACL users, TLS, and
nothing from Redis ever reaching a page as markup."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from distreload.protocol import channel_name, state_key

from ..conftest import RedisProcess, ServerFactory, ServerProcess, cli_publish, free_port, missing
from ..sse import SSEReader
from .test_cluster import wait_for_workers
from .test_faults import readers_everywhere

pytestmark = pytest.mark.redis

APP = "tests.apps.cluster_app:app"
PREFIX = "/---distreload---"

VERSION_TEXT = re.compile(r"[0-9a-f]{8,32}-[0-9]{1,16}")


def request(
    server: ServerProcess,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    prepared = urllib.request.Request(server.base_url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(prepared, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def client_names(redis_url: str) -> list[str]:
    """Every connection a Redis holds, except the one asking."""
    with redis.Redis.from_url(redis_url) as client:
        me = client.client_id()
        return [str(entry.get("name", "")) for entry in client.client_list() if int(entry["id"]) != me]


# --- Off unless enabled -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "setting"),
    [
        ("examples.app:app", ""),  # DistReload(app): off unless enabled
        (APP, "0"),  # the drop-in is on by default, as fastapi-reloader is: off only when told
        (APP, "off"),
    ],
)
def test_disabled_serves_no_script_no_endpoint_and_touches_no_redis(
    start_server: ServerFactory, own_redis: RedisProcess, namespace: str, app: str, setting: str
) -> None:
    server = start_server(
        app,
        workers=2,
        env={
            "DISTRELOAD_ENABLED": setting,
            "DISTRELOAD_REDIS_URL": own_redis.url,
            "DISTRELOAD_NAMESPACE": namespace,
        },
    )
    status, _, page = request(server, "/")
    assert status == 200
    assert b"<script" not in page and b"data-distreload" not in page
    for path in (PREFIX, f"{PREFIX}/events", f"{PREFIX}/client.js", f"{PREFIX}/publish"):
        status, headers, body = request(server, path)
        assert status == 404, path
        assert body == b'{"detail":"Not Found"}'  # the app's own 404: distreload is not there at all
        assert "x-distreload-version" not in headers
    status, _, _ = request(
        server, f"{PREFIX}/publish", method="POST", body=b"{}", headers={"Authorization": "Bearer anything"}
    )
    assert status == 404
    time.sleep(1)
    assert client_names(own_redis.url) == []  # no subscription, no presence, not one connection
    said = [line for line in server.log().splitlines() if "distreload" in line.lower()]
    if setting:
        assert said == []  # turned off on purpose: nothing in a server's default log
    else:
        # Off because nobody turned it on: one line per worker says so, and how to turn it on.
        assert len(said) == 2 and all("DISTRELOAD_ENABLED=1" in line for line in said), said


def test_enabled_says_so_in_one_line_per_worker(
    start_server: ServerFactory, own_redis: RedisProcess, namespace: str, tmp_path: Path
) -> None:
    # uvicorn's own logging configuration leaves the root logger alone; an app that logs at INFO sees this:
    log_config = tmp_path / "logging.json"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
                "loggers": {"distreload": {"handlers": ["console"], "level": "INFO", "propagate": False}},
            }
        )
    )
    password_url = own_redis.url.replace("redis://", "redis://:hunter2@")
    own_redis.stop()
    own_redis.extra_args = ["--requirepass", "hunter2"]
    own_redis.start()
    server = start_server(
        APP,
        workers=2,
        env={"DISTRELOAD_REDIS_URL": password_url, "DISTRELOAD_NAMESPACE": namespace},
        extra_args=["--log-config", str(log_config)],
    )
    wait_for_workers(password_url, namespace, 2)
    # A worker's presence can reach Redis a moment before its line reaches the log: wait for both lines.
    deadline = time.monotonic() + 5
    while server.log().count("distreload active") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and a moment more, so that a third line would be seen too
    lines = [line for line in server.log().splitlines() if "distreload" in line]
    active = [line for line in lines if line.startswith("distreload active")]
    assert len(active) == 2, server.log()  # one per worker process
    assert all(f"namespace '{namespace}'" in line and ":***@" in line for line in active)
    assert lines == active  # nothing else
    assert "hunter2" not in server.log()


def test_enabled_logs_one_warning_and_turned_off_only_an_info_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.applications import Starlette

    from distreload import DistReload

    def run_lifespan(app: DistReload) -> None:
        """Start and stop the app on a loop of its own thread, whatever loop this thread may hold."""
        from asgi_lifespan import LifespanManager

        async def cycle() -> None:
            async with LifespanManager(app):  # type: ignore[arg-type]
                pass

        failures: list[BaseException] = []
        thread = threading.Thread(target=lambda: _capture(failures, lambda: asyncio.run(cycle())))
        thread.start()
        thread.join(30)
        assert failures == []

    from distreload import middleware

    monkeypatch.setattr(middleware, "_said_off", False)
    with caplog.at_level(logging.DEBUG, logger="distreload"):
        run_lifespan(DistReload(Starlette(), enabled=False, redis_url="memory://"))
        assert [r.levelno for r in caplog.records if r.name.startswith("distreload")] == [logging.INFO]
        caplog.clear()
        run_lifespan(DistReload(Starlette(), enabled=True, redis_url="memory://"))
    records = [r for r in caplog.records if r.name.startswith("distreload")]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING  # shown by a server's default logging
    assert records[0].getMessage().startswith("distreload active: endpoint /---distreload---")


def _capture(failures: list[BaseException], action: Callable[[], object]) -> None:
    try:
        action()
    except BaseException as exc:  # handed to the test's thread, which asserts there were none
        failures.append(exc)


# --- The endpoint: read-only stream, token for publishing, nothing else -------------------------------------


def test_the_stream_only_reads_and_publishing_needs_the_token(
    start_server: ServerFactory, open_sse: Callable[..., SSEReader], own_redis: RedisProcess, namespace: str
) -> None:
    server = start_server(
        APP,
        env={
            "DISTRELOAD_REDIS_URL": own_redis.url,
            "DISTRELOAD_NAMESPACE": namespace,
            "DISTRELOAD_TOKEN": "correct-horse",
        },
    )
    wait_for_workers(own_redis.url, namespace, 1)
    watcher = open_sse(server.port)
    watcher.wait_for("hello")
    with redis.Redis.from_url(own_redis.url) as client:
        before = client.hgetall(state_key(namespace))

    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = request(server, f"{PREFIX}/events", method=method, body=b'{"kind":"reload"}')
        assert status == 405 and headers["allow"] == "GET"
    # Whatever a stream request carries, it changes nothing.
    for query in ("?kind=reload", "?version=ffffffffffffffff-99&publish=1", "?last_event_id=%3Cscript%3E"):
        reader = open_sse(
            server.port, path=f"{PREFIX}/events{query}", headers={"Last-Event-ID": "ffffffffffffffff-999999"}
        )
        reader.wait_for("hello")
        reader.close()
    for authorization in (
        {},
        {"Authorization": "Bearer wrong-horse"},
        {"Authorization": "correct-horse"},
        {"Authorization": "Basic Y29ycmVjdC1ob3JzZQ=="},
        {"Authorization": "Bearer "},
    ):
        status, headers, _ = request(
            server, f"{PREFIX}/publish", method="POST", body=b"{}", headers=authorization
        )
        assert status == 401 and headers["www-authenticate"] == "Bearer"
    time.sleep(0.5)
    assert watcher.of("reload") == []
    with redis.Redis.from_url(own_redis.url) as client:
        assert client.hgetall(state_key(namespace)) == before

    token = {"Authorization": "Bearer correct-horse"}
    for paths in (
        ["//evil.example/x.css"],
        ["https://evil.example/x.css"],
        ["javascript:alert(1)"],
        ["x.css"],
        ["/a\nb.css"],
        "/x.css",
    ):
        status, _, _ = request(
            server,
            f"{PREFIX}/publish",
            method="POST",
            headers=token,
            body=json.dumps({"kind": "css", "paths": paths}).encode(),
        )
        assert status == 400, paths
    status, _, body = request(
        server,
        f"{PREFIX}/publish",
        method="POST",
        headers=token,
        body=b'{"kind": "css", "paths": ["/static/site.css"]}',
    )
    assert status == 200
    version = json.loads(body)["version"]
    event = watcher.wait_for("reload")[0]
    assert event.id == version and event.json()["paths"] == ["/static/site.css"]


def test_unknown_paths_under_the_prefix_are_404_from_distreload(start_server: ServerFactory) -> None:
    server = start_server(APP)  # no Redis needed: memory broker
    for path in (
        f"{PREFIX}/nope",
        f"{PREFIX}/events/extra",
        f"{PREFIX}/client.js/x",
        f"{PREFIX}//events",
        f"{PREFIX}/publish",
        f"{PREFIX}/%2e%2e/json",
    ):
        status, headers, body = request(server, path)
        assert status == 404, path
        assert body == b"distreload: no such endpoint\n"
        assert headers["content-type"].startswith("text/plain")
    status, _, body = request(server, f"{PREFIX}/nope", method="HEAD")
    assert status == 404 and body == b""
    status, _, body = request(server, f"{PREFIX}x")  # not under the prefix: the app answers
    assert status == 404 and body == b'{"detail":"Not Found"}'


# --- Namespaces, ACL users, TLS ---------------------------------------------------------------------------


def test_namespaces_sharing_one_redis_never_reload_each_other(
    start_server: ServerFactory, open_sse: Callable[..., SSEReader], own_redis: RedisProcess
) -> None:
    shop = start_server(
        APP, workers=2, env={"DISTRELOAD_REDIS_URL": own_redis.url, "DISTRELOAD_NAMESPACE": "shop"}
    )
    blog = start_server(
        APP, workers=2, env={"DISTRELOAD_REDIS_URL": own_redis.url, "DISTRELOAD_NAMESPACE": "blog"}
    )
    wait_for_workers(own_redis.url, "shop", 2)
    wait_for_workers(own_redis.url, "blog", 2)
    shop_readers = readers_everywhere(open_sse, shop)
    blog_readers = readers_everywhere(open_sse, blog)

    done = cli_publish(own_redis.url, "shop")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["receivers"] == 2
    for reader in shop_readers:
        reader.wait_for("reload")
    done = cli_publish(own_redis.url, "blog")
    blog_version = json.loads(done.stdout)["version"]
    for reader in blog_readers:
        assert [e.id for e in reader.wait_for("reload")] == [blog_version]
    time.sleep(0.5)
    assert all(len(reader.of("reload")) == 1 for reader in [*shop_readers, *blog_readers])


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis with no default user: ``shop`` may use only namespace shop's keys and channels."""
    if shutil.which("redis-server") is None:
        missing("the redis-server binary")
    server = RedisProcess(
        port=free_port(),
        directory=tmp_path,
        extra_args=[
            "--user",
            "default",
            "off",
            "--user",
            "shop",
            "on",
            ">shop-s3cret",
            "~distreload:{shop}:*",
            "&distreload:{shop}:*",
            "+@all",
        ],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_acl_username_and_password_urls_work_and_never_show_the_password(
    start_server: ServerFactory, open_sse: Callable[..., SSEReader], acl_redis: RedisProcess
) -> None:
    url = f"redis://shop:shop-s3cret@127.0.0.1:{acl_redis.port}/0"
    server = start_server(APP, workers=2, env={"DISTRELOAD_REDIS_URL": url, "DISTRELOAD_NAMESPACE": "shop"})
    wait_for_workers(url, "shop", 2)
    readers = readers_everywhere(open_sse, server)
    done = cli_publish(url, "shop")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["receivers"] == 2
    for reader in readers:
        assert [e.id for e in reader.wait_for("reload")] == [result["version"]]

    # The ACL keeps this user inside its namespace, and a wrong password is one line, masked.
    refused = cli_publish(url, "blog")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "NoPermission" in refused.stderr or "NOPERM" in refused.stderr
    wrong = cli_publish(url.replace("shop-s3cret", "not-the-password"), "shop")
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "not-the-password" not in wrong.stderr and "shop:***@" in wrong.stderr

    # A worker started with the wrong password serves pages and says why it cannot subscribe, masked.
    bad = start_server(
        APP,
        env={
            "DISTRELOAD_REDIS_URL": url.replace("shop-s3cret", "not-the-password"),
            "DISTRELOAD_NAMESPACE": "shop",
        },
    )
    status, _, page = request(bad, "/")
    assert status == 200 and b"data-distreload" in page
    deadline = time.monotonic() + 10
    while "cannot use Redis at" not in bad.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    # A refusal is no outage: it says what Redis refused, and that the retries are slow until it changes.
    said = [line for line in bad.log().splitlines() if "cannot use Redis at" in line]
    assert len(said) == 1 and "shop:***@" in said[0] and "AuthenticationError" in said[0], bad.log()
    assert "retrying at most every 30 s" in said[0]
    assert "not-the-password" not in bad.log() and "shop-s3cret" not in server.log()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisProcess, Path]]:
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        missing("redis-server and openssl")
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    made = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    port = free_port()
    server = RedisProcess(
        port=port,
        directory=tmp_path,
        extra_args=[
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
        ],
    )
    server.start()
    try:
        yield server, cert
    finally:
        server.stop()


def test_rediss_urls_work_end_to_end(
    start_server: ServerFactory,
    open_sse: Callable[..., SSEReader],
    tls_redis: tuple[RedisProcess, Path],
    namespace: str,
) -> None:
    server_process, cert = tls_redis
    url = f"rediss://127.0.0.1:{server_process.port}/0?ssl_ca_certs={cert}"
    env = {"DISTRELOAD_REDIS_URL": url, "DISTRELOAD_NAMESPACE": namespace}
    server = start_server(APP, workers=2, env=env)
    wait_for_workers(url, namespace, 2)
    readers = readers_everywhere(open_sse, server)
    time.sleep(6)  # idle long enough for the health-check PINGs to go round over TLS
    done = cli_publish(url, namespace)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["receivers"] == 2
    for reader in readers:
        assert [e.id for e in reader.wait_for("reload")] == [result["version"]]
    assert "lost the connection" not in server.log() and "cannot reach" not in server.log()
    # Plain text to the TLS port, or TLS without trusting the certificate, does not get through.
    assert cli_publish(url.replace("rediss://", "redis://").split("?")[0], namespace).returncode == 1
    assert cli_publish(url.split("?")[0], namespace).returncode == 1


# --- Nothing from Redis reaches a page as markup -----------------------------------------------------------


def test_junk_state_in_redis_never_reaches_a_page(
    start_server: ServerFactory, open_sse: Callable[..., SSEReader], own_redis: RedisProcess, namespace: str
) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        client.hset(
            state_key(namespace), mapping={"epoch": '"><script>alert(1)</script>', "version": "1e400"}
        )
        server = start_server(
            APP, env={"DISTRELOAD_REDIS_URL": own_redis.url, "DISTRELOAD_NAMESPACE": namespace}
        )
        wait_for_workers(own_redis.url, namespace, 1)
        status, _, page = request(server, "/")
        assert status == 200 and b"alert(1)" not in page
        tag = re.search(rb'data-distreload-version="([^"]*)"', page)
        assert tag is not None and VERSION_TEXT.fullmatch(tag.group(1).decode())
        assert VERSION_TEXT.fullmatch(request(server, PREFIX)[1]["x-distreload-version"])
        reader = open_sse(server.port)
        assert VERSION_TEXT.fullmatch(reader.wait_for("hello")[0].id or "")
        # A message that looks right but carries markup in a path: refused before it reaches the stream.
        epoch = client.hget(state_key(namespace), "epoch")
        assert epoch is not None and re.fullmatch(rb"[0-9a-f]{8,32}", epoch)
        for path in ("/x.css\n<script>alert(1)</script>", "//evil.example/x.css", "javascript:alert(1)"):
            client.publish(
                channel_name(namespace),
                json.dumps({"epoch": epoch.decode(), "version": 1, "kind": "css", "paths": [path]}),
            )
    time.sleep(1)
    assert reader.of("reload") == []
    assert "alert(1)" not in json.dumps([event.data for event in reader.events])

"""The ``distreload`` command: publish (Redis and HTTP), listen, status, watch, help and error handling."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from distreload.cli import classify_changes, main
from distreload.protocol import channel_name, parse_message, presence_prefix

from .conftest import ROOT, ServerFactory, ServerProcess, free_port
from .sse import SSEReader

TOKEN = "cli-test-token"
ENV_NAMES = ("DISTRELOAD_REDIS_URL", "DISTRELOAD_NAMESPACE", "DISTRELOAD_TOKEN")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    return subprocess.run(
        [sys.executable, "-m", "distreload", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
        cwd=ROOT,
    )


def spawn_cli(*args: str) -> subprocess.Popen[str]:
    """A long-running command (listen, watch) whose output the test reads as it comes."""
    return subprocess.Popen(
        [sys.executable, "-m", "distreload", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


class ChannelSpy:
    """A plain redis-py subscriber on a namespace's channel: what a worker would receive."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel_name(namespace))
        self.pubsub.get_message(timeout=2)

    def next(self, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message":
                return message["data"]
        raise AssertionError("nothing published on the channel")

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def spy(shared_redis_url: str, namespace: str) -> Iterator[ChannelSpy]:
    watcher = ChannelSpy(shared_redis_url, namespace)
    yield watcher
    watcher.close()


# --- help and usage ------------------------------------------------------------------------------------


def test_help_reads_like_a_man_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for expected in (
        "usage: distreload",
        "examples:",
        "environment:",
        "exit status:",
        "DISTRELOAD_REDIS_URL",
        "publish",
        "listen",
        "status",
        "watch",
        "demo",
    ):
        assert expected in text


@pytest.mark.parametrize("command", ["publish", "listen", "status", "watch", "demo"])
def test_every_command_has_help_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: distreload {command}")
    assert "examples:" in text
    assert f"distreload {command}" in text.split("examples:", 1)[1]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["publish", "--bogus"],
        ["listen", "--count", "0"],
        ["watch"],
        ["demo", "--port", "70000"],
        ["status", "--timeout", "1"],
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("distreload")
    assert "--help" in captured.err


def test_python_dash_m_and_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    from distreload import __version__

    assert done.stdout.strip() == f"distreload {__version__}"


# --- publish to Redis ----------------------------------------------------------------------------------


@pytest.mark.redis
def test_publish_reaches_the_channel_and_reports_version_and_receivers(
    spy: ChannelSpy, shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", "--redis-url", shared_redis_url, "--namespace", namespace]) == 0
    out = capsys.readouterr().out
    reload = parse_message(spy.next())
    assert reload.kind == "reload" and reload.paths == ()
    assert out == (
        f"published reload {reload.version} to namespace {namespace!r}: received by 1 worker process\n"
    )


@pytest.mark.redis
def test_publish_css_with_and_without_paths_as_json(
    spy: ChannelSpy, shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--redis-url", shared_redis_url, "--namespace", namespace, "--json"]
    assert main(["publish", *target, "--css", "/static/a.css", "/static/b.css"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["publish", *target, "--css"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first == {
        "version": first["version"],
        "receivers": 1,
        "kind": "css",
        "paths": ["/static/a.css", "/static/b.css"],
        "spread": 0.0,
        "match": "",
        "namespace": namespace,
    }
    assert second["kind"] == "css" and second["paths"] == []
    sent = [parse_message(spy.next()), parse_message(spy.next())]
    assert [(str(r.version), r.kind, r.paths) for r in sent] == [
        (first["version"], "css", ("/static/a.css", "/static/b.css")),
        (second["version"], "css", ()),
    ]
    assert sent[1].version.number == sent[0].version.number + 1


@pytest.mark.redis
def test_publish_morph_images_and_fleet_options_travel_in_the_one_message(
    spy: ChannelSpy, shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--redis-url", shared_redis_url, "--namespace", namespace]
    assert main(["publish", *target, "--morph", "--spread", "30", "--match", "/screens/lobby/*"]) == 0
    assert "published morph " in capsys.readouterr().out
    assert main(["publish", *target, "--images", "/static/logo.png", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    morph, images = parse_message(spy.next()), parse_message(spy.next())
    assert (morph.kind, morph.spread, morph.match) == ("morph", 30.0, "/screens/lobby/*")
    assert (images.kind, images.paths) == ("images", ("/static/logo.png",))
    assert printed["kind"] == "images" and printed["paths"] == ["/static/logo.png"]


@pytest.mark.redis
def test_publish_takes_redis_and_namespace_from_the_environment(
    spy: ChannelSpy, shared_redis_url: str, namespace: str
) -> None:
    done = run_cli(
        "publish", "--json", env={"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == str(parse_message(spy.next()).version)


@pytest.mark.redis
def test_the_publish_path_does_not_import_starlette(shared_redis_url: str, namespace: str) -> None:
    code = (
        "import sys; from distreload.cli import main; "
        f"status = main(['publish', '--redis-url', {shared_redis_url!r}, '--namespace', {namespace!r}]); "
        "print('starlette' in sys.modules, status)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines()[-1] == "False 0", done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish"], "no Redis given: pass --redis-url or set DISTRELOAD_REDIS_URL"),
        (["publish", "--redis-url", "http://localhost"], "--redis-url: 'http://localhost' has scheme 'http'"),
        (["publish", "--redis-url", "memory://"], "memory:// lives inside one app process"),
        (["publish", "--redis-url", "redis://127.0.0.1:6379", "--namespace", "no spaces"], "--namespace:"),
        (
            ["publish", "--redis-url", "redis://127.0.0.1:6379", "--css", "site.css"],
            "--css: 'site.css' is not a URL",
        ),
        (
            ["publish", "--redis-url", "redis://127.0.0.1:6379", "--images", "x.png"],
            "--images: 'x.png' is not a URL",
        ),
        (
            ["publish", "--redis-url", "redis://127.0.0.1:6379", "--match", "lobby"],
            "match 'lobby' must be a URL path",
        ),
        (["publish", "--redis-url", "redis://127.0.0.1:6379", "--spread", "7200"], "spread must be a number"),
        (["publish", "--url", "ftp://example.com", "--token", "x"], "is not an http:// or https:// URL"),
        (["publish", "--url", "http://127.0.0.1:1"], "--url needs the app's token"),
        (
            ["publish", "--url", "http://127.0.0.1:1", "--token", "x", "--redis-url", "redis://127.0.0.1"],
            "pass either --url",
        ),
        (["status"], "no Redis given"),
        (["listen", "--url", "http://127.0.0.1:1", "--redis-url", "redis://127.0.0.1"], "pass either --url"),
    ],
)
def test_mistakes_are_one_line_and_status_1(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"distreload {args[0]}: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1


@pytest.mark.parametrize("command", ["publish", "status", "listen"])
def test_unreachable_redis_is_one_line_never_a_traceback(command: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli(command, "--redis-url", url, "--namespace", "nobody")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert url in done.stderr and "Connection refused" in done.stderr


def test_publish_over_http_to_an_app_that_is_not_running() -> None:
    port = free_port()
    done = run_cli("publish", "--url", f"http://127.0.0.1:{port}", "--token", "x")
    assert done.returncode == 1
    assert done.stderr == (
        f"distreload publish: cannot reach the app at "
        f"http://127.0.0.1:{port}/---distreload---/publish: Connection refused\n"
    )


# --- publish over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def app_with_token(start_server: ServerFactory) -> ServerProcess:
    """One uvicorn worker, no Redis (the in-memory broker), publish endpoint on."""
    return start_server("tests.apps.cluster_app:app", env={"DISTRELOAD_TOKEN": TOKEN})


def test_publish_over_http_reaches_the_app_s_streams(
    app_with_token: ServerProcess, open_sse: Callable[..., SSEReader]
) -> None:
    reader = open_sse(app_with_token.port)
    reader.wait_for("hello")
    done = run_cli("publish", "--url", app_with_token.base_url, "--token", TOKEN)
    assert done.returncode == 0, done.stderr
    version = reader.wait_for("reload")[0].id
    assert done.stdout == (
        f"published reload {version} through {app_with_token.base_url}/---distreload---"
        f"/publish: received by 1 worker process\n"
    )

    done = run_cli(
        "publish",
        "--url",
        app_with_token.base_url + "/---distreload---",
        "--css",
        "/static/site.css",
        "--json",
        env={"DISTRELOAD_TOKEN": TOKEN},
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    css = reader.wait_for("reload", 2)[1]
    assert css.json() == {
        "version": answer["version"],
        "kind": "css",
        "paths": ["/static/site.css"],
        "spread": 0.0,
        "match": "",
    }
    assert answer["kind"] == "css" and answer["receivers"] == 1


def test_publish_over_http_with_a_wrong_token(app_with_token: ServerProcess) -> None:
    done = run_cli("publish", "--url", app_with_token.base_url, "--token", "not-it")
    assert done.returncode == 1
    assert done.stderr == (
        f"distreload publish: {app_with_token.base_url}/---distreload---/publish refused "
        f"the token (401): it is missing or not the app's DISTRELOAD_TOKEN\n"
    )


def test_publish_over_http_to_an_app_without_a_token(start_server: ServerFactory) -> None:
    server = start_server("tests.apps.cluster_app:app")
    done = run_cli("publish", "--url", server.base_url, "--token", TOKEN)
    assert done.returncode == 1
    assert "publish not found (404)" in done.stderr and "DISTRELOAD_TOKEN" in done.stderr
    assert done.stderr.count("\n") == 1


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
            f"listening on {channel_name(namespace)} at {shared_redis_url} (Ctrl-C to stop)\n"
        )
        with redis.Redis.from_url(shared_redis_url) as client:
            client.publish(channel_name(namespace), b"not json")
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
    assert lines[0].endswith(f" reload {first['version']}  ({channel_name(namespace)})")
    assert lines[1].endswith(f" css {second['version']} /a.css  ({channel_name(namespace)})")
    assert "ignored a message that distreload did not publish: not UTF-8 JSON" in err


@pytest.mark.redis
def test_listen_timeout_without_count_is_success(
    shared_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    target = ["--redis-url", shared_redis_url, "--namespace", namespace]
    assert main(["listen", *target, "--timeout", "0.5"]) == 0
    assert time.monotonic() - started < 5
    assert capsys.readouterr().out == ""


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


# --- watch -----------------------------------------------------------------------------------------------


def test_changes_map_to_the_lightest_kind_that_is_enough(tmp_path: Path) -> None:
    static, templates = tmp_path / "static", tmp_path / "templates"
    css, logo = str(static / "css" / "site.css"), str(static / "img" / "logo.PNG")
    page, code = str(templates / "page.html"), str(tmp_path / "app.py")

    def kind_of(
        *changed: str, static_dir: Path | None = static, url: str = "/static"
    ) -> tuple[str, tuple[str, ...]]:
        return classify_changes(
            changed,
            templates=str(templates),
            static_dir=str(static_dir) if static_dir else None,
            static_url=url,
        )

    assert kind_of(css) == ("css", ("/static/css/site.css",))
    assert kind_of(css, css, url="/") == ("css", ("/css/site.css",))
    assert kind_of(css, static_dir=None) == ("css", ())
    assert kind_of(str(tmp_path / "elsewhere.css")) == ("css", ())  # outside the mapping: all sheets
    assert kind_of(logo) == ("images", ("/static/img/logo.PNG",))
    assert kind_of(page) == ("morph", ())
    assert kind_of(page, str(templates / "base.html")) == ("morph", ())
    assert kind_of(code) == ("reload", ())
    # Several kinds in one batch: only a full reload covers them all.
    assert kind_of(css, logo) == ("reload", ())
    assert kind_of(page, css) == ("reload", ())
    assert kind_of(page, code) == ("reload", ())
    assert classify_changes([page], templates=None, static_dir=None, static_url="/static") == ("reload", ())
    assert kind_of() == ("reload", ())


@pytest.mark.redis
def test_watch_morphs_templates_and_swaps_stylesheets(
    spy: ChannelSpy, shared_redis_url: str, namespace: str, tmp_path: Path
) -> None:
    templates, static = tmp_path / "templates", tmp_path / "static"
    templates.mkdir()
    static.mkdir()
    (templates / "page.html").write_text("<p>one</p>")
    (static / "site.css").write_text("p { color: red }")
    watcher = spawn_cli(
        "watch",
        str(templates),
        str(static),
        "--redis-url",
        shared_redis_url,
        "--namespace",
        namespace,
        "--static-dir",
        str(static),
        "--static-url",
        "/static",
        "--templates",
        str(templates),
        "--debounce",
        "100",
        "--timeout",
        "60",
        "--json",
    )
    try:
        assert watcher.stderr is not None
        assert watcher.stderr.readline().startswith("watching ")
        template = parse_message(_change_until_published(spy, templates / "page.html", "<p>two</p>"))
        stylesheet = parse_message(_change_until_published(spy, static / "site.css", "p { color: blue }"))
        assert watcher.stdout is not None
        printed = [json.loads(watcher.stdout.readline())]
        while printed[-1]["kind"] != "css":  # read up to the swap's line before stopping the watcher
            printed.append(json.loads(watcher.stdout.readline()))
    finally:
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=15)
    assert watcher.returncode == 0, err
    assert (template.kind, template.paths) == ("morph", ())
    assert (stylesheet.kind, stylesheet.paths) == ("css", ("/static/site.css",))
    assert printed[0]["kind"] == "morph" and printed[0]["changed"] == [str(templates / "page.html")]
    assert printed[-1]["paths"] == ["/static/site.css"] and printed[-1]["version"] == str(stylesheet.version)


def _change_until_published(spy: ChannelSpy, path: Path, text: str) -> Any:
    """One change, made once the watcher said it watches: it must be published (no second try)."""
    path.write_text(text)
    return spy.next(timeout=5)


@pytest.mark.redis
def test_watch_stops_after_count_publishes(
    spy: ChannelSpy, shared_redis_url: str, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "page.html"
    page.write_text("one")
    outcome: list[int] = []
    thread = threading.Thread(
        target=lambda: outcome.append(
            main(
                [
                    "watch",
                    str(tmp_path),
                    "--redis-url",
                    shared_redis_url,
                    "--namespace",
                    namespace,
                    "--count",
                    "1",
                    "--debounce",
                    "50",
                    "--timeout",
                    "30",
                ]
            )
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while "watching" not in capsys.readouterr().err and time.monotonic() < deadline:
            time.sleep(0.02)
        _change_until_published(spy, page, "two")
    finally:
        thread.join(30)
    assert outcome == [0]
    assert "changed; published reload" in capsys.readouterr().out

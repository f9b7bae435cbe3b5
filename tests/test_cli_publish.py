"""``distreload publish``: to Redis and through an app (``--url``), and its mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from distreload.cli import main
from distreload.protocol import parse_message

from .cli_tools import (  # noqa: F401 - fixtures
    TOKEN,
    ChannelSpy,
    app_with_token_fixture,
    clean_cli_environment_fixture,
    run_cli,
    spy_fixture,
)
from .conftest import ServerFactory, ServerProcess, free_port
from .sse import SSEReader

pytestmark = pytest.mark.usefixtures("clean_cli_environment")


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

"""``distreload publish``: to Redis and through an app (``--url``), and its mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
from .conftest import ServerFactory, ServerProcess, free_port, missing
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


def test_publish_over_http_to_an_app_without_a_token_says_the_token_is_missing(
    start_server: ServerFactory,
) -> None:
    server = start_server("tests.apps.cluster_app:app")
    done = run_cli("publish", "--url", server.base_url, env={"DISTRELOAD_TOKEN": TOKEN})
    assert done.returncode == 1
    assert done.stderr == (
        f"distreload publish: {server.base_url}/---distreload---/publish not found (404): the app serves "
        f"it only when it runs with a token: set DISTRELOAD_TOKEN (or token=) where the app runs; "
        f"check --prefix\n"
    )
    assert "DISTRELOAD_ENABLED" not in done.stderr


# --- the token: never in argv, never to another origin --------------------------------------------------


def test_the_token_is_read_from_a_file(app_with_token: ServerProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as `echo` or a mounted secret writes it
    done = run_cli("publish", "--url", app_with_token.base_url, "--token-file", str(token_file), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["receivers"] == 1


def test_the_token_is_read_from_standard_input(app_with_token: ServerProcess) -> None:
    done = run_cli(
        "publish", "--url", app_with_token.base_url, "--token-file", "-", "--json", stdin=TOKEN + "\n"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["receivers"] == 1


def test_a_wrong_token_from_a_file_is_refused(app_with_token: ServerProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-it\n")
    done = run_cli("publish", "--url", app_with_token.base_url, "--token-file", str(token_file))
    assert done.returncode == 1 and "refused the token (401)" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--token-file", "EMPTY"], "--token-file: EMPTY holds no token"),
        (["--token-file", "-"], "--token-file: standard input holds no token"),
        (["--token", "x", "--token-file", "-"], "not allowed with argument"),
    ],
)
def test_token_file_mistakes_are_usage_errors(argv: list[str], message: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    done = run_cli("publish", "--url", "http://127.0.0.1:1", *argv, stdin="")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: distreload publish ")
    assert message.replace("EMPTY", str(empty)) in done.stderr.splitlines()[-1]


def test_help_shows_the_token_through_the_environment_or_a_file_never_in_argv(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["publish", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--token-file PATH" in text and "discouraged" in text
    commands = [line for line in text.split("examples:", 1)[1].splitlines() if "distreload publish" in line]
    assert not [line for line in commands if "--token " in line]
    assert any("DISTRELOAD_TOKEN=" in line for line in commands)
    assert any("--token-file -" in line for line in commands)


class RecordingServer:
    """A local HTTP server that answers every POST with one fixed status (and Location), recording what
    reached it: the app, or the host a redirect points to."""

    def __init__(
        self,
        status: int = 200,
        location: str | None = None,
        tls: tuple[Path, Path] | None = None,
        answer: dict[str, Any] | None = None,
    ):
        import http.server
        import ssl

        self.requests: list[dict[str, str]] = []
        recording = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                recording.requests.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                if location is not None:
                    self.send_header("location", location)
                published = {"version": "0123456789abcdef-1", "receivers": 1, **(answer or {})}
                body = json.dumps(published).encode() if status == 200 else b""
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def servers() -> Iterator[Callable[..., RecordingServer]]:
    started: list[RecordingServer] = []

    def start(*args: Any, **kwargs: Any) -> RecordingServer:
        started.append(RecordingServer(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_is_not_followed(
    status: int, servers: Callable[..., RecordingServer]
) -> None:
    elsewhere = servers()
    target = f"http://127.0.0.1:{elsewhere.port}/login?next=/"
    app = servers(status, target)
    done = run_cli("publish", "--url", f"http://127.0.0.1:{app.port}", env={"DISTRELOAD_TOKEN": TOKEN})
    assert done.returncode == 1
    assert done.stderr == (
        f"distreload publish: http://127.0.0.1:{app.port}/---distreload---/publish redirected ({status}) to "
        f"{target}: not followed, the token is sent only to the --url given (pass the app's own address)\n"
    )
    assert len(app.requests) == 1 and app.requests[0]["authorization"] == f"Bearer {TOKEN}"
    assert elsewhere.requests == []


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing("openssl (to make a certificate for a local https server)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_a_redirect_from_https_to_http_is_not_followed(
    servers: Callable[..., RecordingServer], self_signed: tuple[Path, Path]
) -> None:
    plain = servers()
    target = f"http://127.0.0.1:{plain.port}/---distreload---/publish"
    app = servers(301, target, tls=self_signed)
    done = run_cli(
        "publish",
        "--url",
        f"https://127.0.0.1:{app.port}",
        env={"DISTRELOAD_TOKEN": TOKEN, "SSL_CERT_FILE": str(self_signed[0])},
    )
    assert done.returncode == 1, done.stderr
    assert f"redirected (301) to {target}: not followed" in done.stderr
    assert done.stderr.count("\n") == 1
    assert len(app.requests) == 1 and plain.requests == []


def test_a_working_endpoint_still_publishes(servers: Callable[..., RecordingServer]) -> None:
    """The redirect refusal is no general refusal: the same server answering 200 is a publish."""
    app = servers(200)
    done = run_cli("publish", "--url", f"http://127.0.0.1:{app.port}", env={"DISTRELOAD_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert "published reload 0123456789abcdef-1 through" in done.stdout


# --- --wait -----------------------------------------------------------------------------------------------

WAITED = {
    "version": "0123456789abcdef-1",
    "expected": 3,
    "applied": 2,
    "p50_ms": 400,
    "p99_ms": 900,
    "failed": [{"path": "/tv/2", "worker": "kiosk-2:41", "reason": "the server answered 500"}],
    "failed_count": 1,
    "unanswered": [],
    "unanswered_count": 0,
    "paused": [{"path": "/tv/9", "worker": "kiosk-1:7"}],
    "paused_count": 1,
    "excluded": 2,
    "workers": 2,
    "workers_expected": 2,
}


@pytest.mark.parametrize(
    ("pages", "status"),
    [
        ({**WAITED, "failed": [], "failed_count": 0, "applied": 3}, 0),
        (WAITED, 3),
        (
            {
                **WAITED,
                "failed": [],
                "failed_count": 0,
                "unanswered": [{"path": "/tv/2", "worker": "kiosk-2:41", "state": "live"}],
                "unanswered_count": 1,
            },
            4,
        ),
    ],
)
def test_publish_wait_through_an_app_says_what_the_pages_did_in_its_exit_status(
    servers: Callable[..., RecordingServer], pages: dict[str, Any], status: int
) -> None:
    app = servers(200, answer={"pages": pages})
    url = f"http://127.0.0.1:{app.port}"
    done = run_cli("publish", "--url", url, "--wait", "5", env={"DISTRELOAD_TOKEN": TOKEN})
    assert done.returncode == status, done.stderr
    lines = done.stdout.splitlines()
    times = "(time to applied: p50 400 ms, p99 900 ms)"
    assert lines[1] == f"applied {pages['applied']} of 3 pages {times}"
    assert "  paused: /tv/9 on kiosk-1:7 (left out of the count)" in lines
    if status == 3:
        assert "  failed: /tv/2 on kiosk-2:41: the server answered 500" in lines
    if status == 4:
        assert "  unanswered: /tv/2 on kiosk-2:41: no answer" in lines and lines[-1] == "timed out after 5 s"
    as_json = run_cli("publish", "--url", url, "--wait", "5", "--json", env={"DISTRELOAD_TOKEN": TOKEN})
    assert as_json.returncode == status
    assert json.loads(as_json.stdout)["pages"]["applied"] == pages["applied"]


def test_publish_wait_through_an_app_that_does_not_wait_is_an_error(
    servers: Callable[..., RecordingServer],
) -> None:
    app = servers(200)  # an answer with no "pages": a distreload from before --wait
    url = f"http://127.0.0.1:{app.port}"
    done = run_cli("publish", "--url", url, "--wait", "5", env={"DISTRELOAD_TOKEN": TOKEN})
    assert done.returncode == 1 and "did not wait" in done.stderr


@pytest.mark.parametrize("seconds", ["0", "-1", "soon"])
def test_a_wait_that_is_no_positive_number_is_a_usage_error(seconds: str) -> None:
    done = run_cli("publish", "--redis-url", "redis://127.0.0.1:1/0", "--wait", seconds)
    assert done.returncode == 2 and "--wait" in done.stderr


# --- Redis URLs the user gets wrong ----------------------------------------------------------------------


def test_a_database_that_is_not_a_number_is_a_usage_error_in_the_user_s_terms() -> None:
    done = run_cli("publish", "--redis-url", "redis://127.0.0.1:6379/abc")
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("distreload publish: --redis-url: ") and "'redis://127.0.0.1:6379/abc'" in last
    assert "invalid literal" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.redis
@pytest.mark.parametrize("command", ["publish", "status", "listen"])
def test_tls_against_a_plain_redis_fails_fast_and_says_nothing_was_sent(
    command: str, shared_redis_url: str
) -> None:
    tls_url = shared_redis_url.replace("redis://", "rediss://", 1)
    done = run_cli(command, "--redis-url", tls_url, "--namespace", "cli-tls")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "TLS handshake" in done.stderr and "nothing was sent" in done.stderr, done.stderr
    assert "goes out if Redis runs it later" not in done.stderr


def test_the_progress_line_is_rewritten_on_a_terminal_and_absent_elsewhere() -> None:
    import io

    from distreload.cli.publish import ProgressLine
    from distreload.delivery import WaitSummary

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, piped = Terminal(), io.StringIO()
    for stream in (terminal, piped):
        line = ProgressLine(stream)
        line(WaitSummary("v", expected=3, applied=1, pending_count=2, elapsed=0.4))
        line(WaitSummary("v", expected=3, applied=2, failed_count=1, elapsed=0.9))
        line.end()
    assert terminal.getvalue() == (
        "\r\x1b[2Kwaiting: applied 1 of 3, 2 pending (0.4 s)"
        "\r\x1b[2Kwaiting: applied 2 of 3, 1 failed (0.9 s)"
        "\r\x1b[2K"
    )
    assert piped.getvalue() == ""

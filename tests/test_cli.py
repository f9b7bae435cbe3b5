"""The ``distreload`` command as a whole: help, usage errors, exit statuses, ``python -m``."""

from __future__ import annotations

import pytest

from distreload.cli import main

from .cli_tools import (
    clean_cli_environment_fixture,  # noqa: F401 - fixtures
    run_cli,
)

pytestmark = pytest.mark.usefixtures("clean_cli_environment")


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


def usage_and_error(err: str, command: str | None) -> str:
    """The one error line of a usage error, after checking that the usage shown is the command's own."""
    prog = f"distreload {command}" if command else "distreload"
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: {prog} "), err
    assert lines[-1].startswith(f"{prog}: ") and lines[-1].endswith(f"(see '{prog} --help')"), err
    assert all(line.startswith(" ") for line in lines[1:-1]), err  # the usage's own continuation lines
    assert "Traceback" not in err
    return lines[-1]


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], None),
        (["bogus"], None),
        (["publish", "--bogus"], "publish"),
        (["listen", "--count", "0"], "listen"),
        (["watch"], "watch"),
        (["demo", "--port", "70000"], "demo"),
        (["status", "--timeout", "1"], "status"),
        (["publish", "--spread", "abc"], "publish"),
    ],
)
def test_usage_errors_exit_2_with_the_command_s_usage(
    argv: list[str], command: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    usage_and_error(captured.err, command)


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["publish", "--mroph"], "did you mean --morph?"),
        (["publish", "--redis-ulr", "redis://127.0.0.1"], "did you mean --redis-url?"),
        (["watch", "--static_dir", "static", "."], "did you mean --static-dir?"),
        (["status", "--jsno"], "did you mean --json?"),
    ],
)
def test_a_mistyped_flag_gets_the_command_s_usage_and_a_suggestion(
    argv: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    line = usage_and_error(capsys.readouterr().err, argv[0])
    assert f"unrecognized argument: {argv[1]}" in line
    assert suggestion in line


def test_an_unknown_word_gets_no_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "extra"]) == 2
    line = usage_and_error(capsys.readouterr().err, "publish")
    assert "unrecognized argument: extra" in line and "did you mean" not in line


ARGUMENT_MISTAKES = [
    (["publish"], "no Redis given: pass --redis-url or set DISTRELOAD_REDIS_URL"),
    (["publish", "--redis-url", "http://localhost"], "--redis-url: 'http://localhost' has scheme 'http'"),
    (["publish", "--redis-url", "memory://"], "memory:// lives inside one app process"),
    (["publish", "--redis-url", "redis://127.0.0.1:6379", "--namespace", "no spaces"], "--namespace:"),
    (
        ["publish", "--redis-url", "redis://127.0.0.1:6379", "--css", "site.css"],
        "--css: 'site.css' is not a URL",
    ),
    (
        ["publish", "--redis-url", "redis://127.0.0.1:6379", "--css", "static/site.css"],
        "--css: 'static/site.css'",
    ),
    (
        ["publish", "--redis-url", "redis://127.0.0.1:6379", "--images", "x.png"],
        "--images: 'x.png' is not a URL",
    ),
    (
        ["publish", "--redis-url", "redis://127.0.0.1:6379", "--match", "lobby"],
        "--match 'lobby' must be a URL path",
    ),
    (["publish", "--redis-url", "redis://127.0.0.1:6379", "--spread", "99999"], "--spread must be a number"),
    (["publish", "--url", "ftp://example.com"], "is not an http:// or https:// URL"),
    (["publish", "--url", "http://127.0.0.1:1"], "--url needs the app's token"),
    (["publish", "--url", "http://127.0.0.1:1", "--redis-url", "redis://127.0.0.1"], "pass either --url"),
    (
        ["publish", "--url", "http://127.0.0.1:1", "--token-file", "/nonexistent/token"],
        "--token-file: cannot read",
    ),
    (["status"], "no Redis given"),
    (["listen", "--url", "http://127.0.0.1:1", "--redis-url", "redis://127.0.0.1"], "pass either --url"),
    (["watch", "/nonexistent/dir", "--redis-url", "redis://127.0.0.1"], "no such file or directory"),
    (["demo", "--namespace", "no spaces", "--redis-url", "redis://127.0.0.1:1"], "--namespace:"),
]


@pytest.mark.parametrize(("argv", "message"), ARGUMENT_MISTAKES)
def test_anything_wrong_in_the_arguments_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in usage_and_error(captured.err, argv[0])


def test_python_dash_m_and_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    from distreload import __version__

    assert done.stdout.strip() == f"distreload {__version__}"

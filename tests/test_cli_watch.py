"""``distreload watch``: what a batch of saved files publishes."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from distreload.cli import main
from distreload.cli.watch import classify_changes
from distreload.protocol import parse_message

from .cli_tools import ChannelSpy, clean_cli_environment_fixture, spawn_cli, spy_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("clean_cli_environment")


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

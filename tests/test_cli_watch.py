"""``distreload watch``: what a batch of saved files publishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from distreload.cli import main
from distreload.cli.watch import classify_changes, request_for, saved_files
from distreload.protocol import MAX_PATHS, parse_message, reload_request

from .cli_tools import ChannelSpy, clean_cli_environment_fixture, spawn_cli, spy_fixture  # noqa: F401 - fixtures
from .conftest import missing

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


# --- what editors write on the way to a save -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "sedA7Bjpw",
        ".site.css.swp",
        ".site.css.swx",
        ".site.css.swo",
        "4913",
        "site.css~",
        "site.css___jb_tmp___",
        "site.css___jb_old___",
        "site.css.tmp",
        ".#site.css",
        "#site.css#",
    ],
)
def test_editor_temporaries_are_not_what_the_user_saved(name: str, tmp_path: Path) -> None:
    saved = str(tmp_path / "static" / "site.css")
    assert saved_files([str(tmp_path / "static" / name), saved]) == [saved]


def test_ordinary_files_are_what_the_user_saved(tmp_path: Path) -> None:
    names = ["site.css", "app.py", "page.html", "sed.css", "v2.js", "template.tmpl", "notes.swift"]
    paths = [str(tmp_path / name) for name in names]
    assert saved_files(paths) == sorted(paths)


def test_a_directory_made_or_removed_is_no_save(tmp_path: Path) -> None:
    """A new directory of stylesheets is a stylesheet swap, not a full reload for the directory itself."""
    (tmp_path / "many").mkdir()
    sheet = str(tmp_path / "many" / "a.css")
    assert saved_files([str(tmp_path / "many"), sheet]) == [sheet]


def test_more_paths_than_one_reload_names_swap_all_of_that_kind() -> None:
    options = reload_request()
    paths = tuple(f"/static/{index}.css" for index in range(MAX_PATHS + 1))
    assert request_for("css", paths, options) == reload_request("css", ())
    assert request_for("css", paths[:MAX_PATHS], options).paths == paths[:MAX_PATHS]
    fleet = reload_request(spread=5, match="/screens/*")
    assert request_for("images", paths, fleet) == reload_request("images", (), 5, "/screens/*")


def _sed(path: Path) -> None:
    subprocess.run(["sed", "-i", "s/red/blue/", str(path)], check=True)


def _vim(path: Path) -> None:
    """vim itself (this one writes the file in place, with its swap files beside it)."""
    if shutil.which("vim") is None:
        missing("vim")
    command = ["vim", "-u", "NONE", "-i", "NONE", "-N", "-es", "-c", "%s/red/blue/", "-c", "wq", str(path)]
    subprocess.run(command, check=True, cwd=path.parent, timeout=30, stdin=subprocess.DEVNULL)


def _vim_backupcopy_no(path: Path) -> None:
    """What vim does with backupcopy=no (and its default "auto" on many files): it checks that it may
    create a file in the directory (4913, at once deleted), renames the file to its backup x~, writes a new
    x and deletes the backup; the swap file .x.swp is there all along."""
    swap = path.parent / f".{path.name}.swp"
    swap.write_bytes(b"b0VIM 9.0")
    probe = path.parent / "4913"
    probe.write_bytes(b"")
    probe.unlink()
    backup = Path(f"{path}~")
    os.rename(path, backup)
    path.write_text("p { color: blue }")
    backup.unlink()
    swap.unlink()


def _jetbrains(path: Path) -> None:
    """JetBrains "safe write": the text to x___jb_tmp___, x moved to x___jb_old___, the new one moved in."""
    temporary, old = Path(f"{path}___jb_tmp___"), Path(f"{path}___jb_old___")
    temporary.write_text("p { color: blue }")
    os.rename(path, old)
    os.rename(temporary, path)
    old.unlink()


def _vs_code(path: Path) -> None:
    """VS Code's save: the file truncated, then written (two changes of the one file)."""
    with open(path, "r+") as file:
        file.truncate(0)
        file.flush()
        os.fsync(file.fileno())
        file.write("p { color: blue }")


def _renamed_over(path: Path) -> None:
    """The atomic save of many tools: x.tmp written, then renamed over x."""
    temporary = Path(f"{path}.tmp")
    temporary.write_text("p { color: blue }")
    os.replace(temporary, path)


@pytest.mark.redis
@pytest.mark.parametrize("save", [_sed, _vim, _vim_backupcopy_no, _jetbrains, _vs_code, _renamed_over])
def test_a_stylesheet_saved_by_any_editor_is_a_stylesheet_swap(
    save: Callable[[Path], None], spy: ChannelSpy, shared_redis_url: str, namespace: str, tmp_path: Path
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    stylesheet = static / "site.css"
    stylesheet.write_text("p { color: red }")
    watcher = _start_watching(tmp_path, shared_redis_url, namespace)
    try:
        save(stylesheet)
        published = parse_message(spy.next(timeout=10))
        assert watcher.stdout is not None
        printed = json.loads(watcher.stdout.readline())  # before the stop: the line follows the publish
    finally:
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=15)
    assert watcher.returncode == 0, err
    assert (published.kind, published.paths) == ("css", ("/static/site.css",)), printed
    assert stylesheet.read_text().strip() == "p { color: blue }"
    assert printed["changed"] == [str(stylesheet)]


def _start_watching(root: Path, redis_url: str, namespace: str) -> subprocess.Popen[str]:
    static = root / "static"
    watcher = spawn_cli(
        "watch",
        str(static),
        "--redis-url",
        redis_url,
        "--namespace",
        namespace,
        "--static-dir",
        str(static),
        "--debounce",
        "200",
        "--timeout",
        "60",
        "--json",
    )
    assert watcher.stderr is not None
    assert watcher.stderr.readline().startswith("watching ")
    return watcher


@pytest.mark.redis
def test_a_batch_past_the_paths_limit_swaps_every_stylesheet_and_the_watch_goes_on(
    spy: ChannelSpy, shared_redis_url: str, namespace: str, tmp_path: Path
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    sheets = [static / f"sheet-{index:03d}.css" for index in range(MAX_PATHS + 1)]
    for sheet in sheets:
        sheet.write_text("p { color: red }")
    watcher = _start_watching(tmp_path, shared_redis_url, namespace)
    try:
        for sheet in sheets:
            sheet.write_text("p { color: blue }")
        batch = parse_message(spy.next(timeout=10))
        assert watcher.stdout is not None
        printed = json.loads(watcher.stdout.readline())
        sheets[0].write_text("p { color: green }")
        after = parse_message(spy.next(timeout=10))
        assert watcher.poll() is None
    finally:
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=15)
    assert watcher.returncode == 0, err
    assert (batch.kind, batch.paths) == ("css", ())  # every stylesheet, as many as changed
    assert (after.kind, after.paths) == ("css", ("/static/sheet-000.css",))
    assert len(printed["changed"]) == MAX_PATHS + 1

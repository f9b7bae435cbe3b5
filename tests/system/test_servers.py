"""Every major ASGI server, started for real, serving one small plain-ASGI app with distreload and Redis.

Each configuration (server, workers, options) gets one process for four checks (serving.py): exactly one
tag in a page, JSON untouched, every reload published long after the heartbeats began reaches every
stream, and SIGTERM with streams open stops the server within 2 s. The servers' reload modes are checked
by editing a copy of the app while streams are open.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import TESTS
from .serving import (
    STOP_BOUND,
    Configuration,
    Served,
    check_json_is_untouched,
    check_late_reloads_all_arrive,
    check_page_gets_exactly_one_tag,
    check_sigterm_stops_promptly,
    check_writes_ran_in_their_own_requests,
    get,
    readers_on_every_worker,
    serving,
    worker_of,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

APP = "tests.apps.server_app:app"
PAGE = (
    b"<!doctype html><html><head><title>plain ASGI</title></head>"
    b'<body><h1>plain ASGI</h1><p id="code">first</p></body></html>'
)
JSON = b'{"text":"</body> stays in JSON","numbers":[1,2,3]}'

CONFIGURATIONS = [
    Configuration("uvicorn-httptools-2-workers", APP, "uvicorn", 2, ("--http", "httptools")),
    Configuration("uvicorn-h11", APP, "uvicorn", 1, ("--http", "h11")),
    Configuration("gunicorn-uvicorn-worker-2-workers", APP, "gunicorn", 2),
    # hypercorn's worker processes hear of a stop through no signal: distreload waits on its stop event.
    Configuration("hypercorn-2-workers", APP, "hypercorn", 2),
    Configuration("hypercorn-in-process", APP, "hypercorn", 0),
    Configuration("granian-2-workers", APP, "granian", 2),
    Configuration("daphne", APP, "daphne", 1),
]


@pytest.fixture(scope="module", params=CONFIGURATIONS, ids=[c.name for c in CONFIGURATIONS])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_redis_url: str
) -> Iterator[Served]:
    configuration: Configuration = request.param
    with serving(configuration, tmp_path_factory.mktemp(configuration.name), shared_redis_url) as served:
        yield served


# The checks run in this order on each configuration's one server; the last one stops it.


def test_a_page_gets_exactly_one_tag(served: Served) -> None:
    check_page_gets_exactly_one_tag(served, PAGE)


def test_json_is_byte_identical_to_the_app_without_distreload(served: Served) -> None:
    check_json_is_untouched(served, JSON)


def test_reloads_published_long_after_the_heartbeats_began_reach_every_stream(served: Served) -> None:
    check_late_reloads_all_arrive(served)
    check_writes_ran_in_their_own_requests(served)


def test_sigterm_with_streams_open_stops_the_server_within_2_s(served: Served) -> None:
    check_sigterm_stops_promptly(served)


def test_gunicorn_sigint_stops_its_busy_and_its_idle_workers_within_2_s(
    tmp_path: Path, shared_redis_url: str
) -> None:
    """SIGINT to gunicorn's master reaches each worker as SIGQUIT, which uvicorn-worker answers only by
    marking the worker dead; distreload reads that mark and stops uvicorn, in the worker holding a stream
    and in the idle one alike (else the master SIGKILLs both after its graceful timeout, 30 s)."""
    configuration = Configuration("gunicorn-sigint-2-workers", APP, "gunicorn", 2)
    with serving(configuration, tmp_path, shared_redis_url) as served:
        reader = served.open_reader()
        worker_of(reader)  # one worker holds a stream, the other none
        took = served.server.stop(signal.SIGINT)
        log = served.server.log()
        assert took < STOP_BOUND, f"gunicorn took {took:.2f} s to stop after SIGINT:\n{log[-3000:]}"
        assert reader.closed.wait(2) and reader.of("shutdown") and reader.complete, reader.events
        assert "SIGKILL" not in log and served.server.leftovers() == [], log[-3000:]
        print(f"\ngunicorn SIGINT, one busy and one idle worker: exit {took:.2f} s")


# --- reload modes ----------------------------------------------------------------------------------------

RELOAD_MODES = [
    Configuration("uvicorn-reload", "reloadable:app", "uvicorn", 1, ("--reload",)),
    Configuration("gunicorn-reload-2-workers", "reloadable:app", "gunicorn", 2, ("--reload",)),
    Configuration("granian-reload-2-workers", "reloadable:app", "granian", 2, ("--reload",)),
]
# What each server logs when it notices the change: the restart is timed from there.
CHANGE_NOTICED = {
    "uvicorn": "WatchFiles detected changes",
    "gunicorn": "Worker reloading",
    "granian": "Changes detected",
}


@pytest.mark.parametrize("configuration", RELOAD_MODES, ids=[c.name for c in RELOAD_MODES])
def test_a_code_change_under_the_servers_reload_mode_restarts_it_promptly_with_streams_open(
    configuration: Configuration, tmp_path: Path, shared_redis_url: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    source = project / "reloadable.py"
    shutil.copy(TESTS / "apps" / "server_app.py", source)
    with serving(configuration, tmp_path, shared_redis_url, cwd=project) as served:
        readers = readers_on_every_worker(served)
        assert b'<p id="code">first</p>' in get(served.server.port, "/page").body
        log_before = len(served.server.log())

        # A reloader may set up its file watch only after its server answers (uvicorn's does): an edit
        # made before then goes unseen, as it would for a user. Edit again each second until it is seen.
        changed = source.read_text().replace('CODE = "first"', 'CODE = "second"')
        started = edited = time.monotonic()
        source.write_text(changed)
        edits = 1
        noticed = streams_ended = new_code = None
        while new_code is None and time.monotonic() - started < 30:
            now = time.monotonic()
            if noticed is None and CHANGE_NOTICED[configuration.server] in served.server.log()[log_before:]:
                noticed = now
            if noticed is None and now - edited > 1.0:
                edited = now
                source.write_text(f"{changed}\n# edit {edits}\n")
                edits += 1
            if streams_ended is None and all(reader.closed.is_set() for reader in readers):
                streams_ended = now
            try:
                if b'<p id="code">second</p>' in get(served.server.port, "/page", timeout=2).body:
                    new_code = now
            except OSError:
                pass  # between the old worker and the new one
            time.sleep(0.02)
        log = served.server.log()
        assert new_code is not None, f"the new code was never served:\n{log[-3000:]}"
        assert noticed is not None, log[-3000:]
        for reader in readers:
            assert reader.closed.wait(2) and reader.of("shutdown"), reader.events
            assert reader.complete, log[-3000:]
        restart = new_code - noticed
        figures = (
            f"{configuration.name}: change noticed {noticed - edited:.2f} s after the edit, streams ended "
            f"{(streams_ended or new_code) - edited:.2f} s, new code served {new_code - edited:.2f} s "
            f"({restart:.2f} s after the change was noticed; {edits} edit(s) until one was seen)"
        )
        print("\n" + figures)
        assert restart < STOP_BOUND, figures + "\n" + log[-3000:]

"""Every major ASGI server, started for real, serving one small plain-ASGI app with distreload and Redis.

Each configuration (server, workers, options) gets one process for four checks (serving.py): exactly one
tag in a page, JSON untouched, every reload published long after the heartbeats began reaches every
stream, and SIGTERM with streams open stops the server within 2 s. The servers' reload modes are checked
by editing a copy of the app while streams are open.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from distreload import send_reload_signal

from ..conftest import TESTS, ServerLauncher
from .serving import (
    PREFIX,
    SERVERS_WITHOUT_LIFESPAN,
    STOP_BOUND,
    STOP_SIGNALS,
    Configuration,
    Served,
    StopSignal,
    check_json_is_untouched,
    check_late_reloads_all_arrive,
    check_page_gets_exactly_one_tag,
    check_sigterm_stops_promptly,
    check_writes_ran_in_their_own_requests,
    every_worker_answering,
    get,
    readers_on_every_worker,
    serving,
    stop_and_time,
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


# One process of each server (and each of uvicorn's HTTP implementations), with heartbeats far apart.
LEAVING = [
    Configuration("uvicorn-httptools", APP, "uvicorn", 1, ("--http", "httptools")),
    Configuration("uvicorn-h11", APP, "uvicorn", 1, ("--http", "h11")),
    Configuration("hypercorn", APP, "hypercorn", 1),
    Configuration("granian", APP, "granian", 1),
    Configuration("daphne", APP, "daphne", 1),
]


@pytest.mark.parametrize("configuration", LEAVING, ids=[c.name for c in LEAVING])
def test_a_client_that_leaves_is_dropped_when_the_server_says_so_not_at_the_next_heartbeat(
    configuration: Configuration, tmp_path: Path, shared_redis_url: str
) -> None:
    """The stream's request waits in the server's receive(): a disconnect ends it there, with nothing
    written to the dead connection first."""
    with serving(configuration, tmp_path, shared_redis_url, heartbeat_interval=60.0) as served:
        reader = served.open_reader()
        reader.wait_for("hello")

        def open_streams() -> int:
            return sum(info["streams"] for info in every_worker_answering(served).values())

        assert open_streams() == 1
        reader.close()
        left = time.monotonic()
        while open_streams() and time.monotonic() - left < 10:
            time.sleep(0.02)
        took = time.monotonic() - left
        print(f"\n{configuration.name}: the stream was dropped {took:.2f} s after its client left")
        assert open_streams() == 0
        assert took < 5, "dropped only long after the client left: at a write, not at the disconnect"


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


# How long the old workers may take to go after SIGHUP: gunicorn replaces them all at once; granian one by
# one, each once its replacement has started (a new process importing the app: seconds on 2 busy cores).
HUP_BOUNDS = {"gunicorn": STOP_BOUND, "granian": 30.0}


@pytest.mark.parametrize("server", sorted(HUP_BOUNDS))
def test_a_graceful_reload_by_sighup_ends_the_old_workers_streams_and_the_new_workers_serve(
    server: str, tmp_path: Path, shared_redis_url: str
) -> None:
    """``systemctl reload`` (``ExecReload=kill -HUP $MAINPID``): the master starts new workers and stops the
    old ones gracefully, waiting for their open responses (gunicorn for its graceful timeout, 30 s; granian
    with no limit unless ``--workers-kill-timeout`` is given). Each old stream ends with ``event: shutdown``
    at once, the old workers go, and the new ones take streams and reloads."""
    configuration = Configuration(f"{server}-hup-2-workers", APP, server, 2)
    with serving(configuration, tmp_path, shared_redis_url) as served:
        readers = readers_on_every_worker(served, per_worker=1)
        old = {worker_of(reader) for reader in readers}
        started = time.monotonic()
        os.kill(served.server.process.pid, signal.SIGHUP)
        gone_pids = {int(worker.rsplit(":", 1)[1]) for worker in old}
        while any(psutil.pid_exists(pid) for pid in gone_pids):
            took = time.monotonic() - started
            assert took < HUP_BOUNDS[server], (
                f"old workers still up {took:.1f} s after SIGHUP:\n{served.server.log()}"
            )
            time.sleep(0.05)
        took = time.monotonic() - started
        for reader in readers:
            assert reader.closed.wait(1) and reader.of("shutdown") and reader.complete, reader.events
        new = every_worker_answering(served)
        assert not set(new) & old, (sorted(new), sorted(old))
        fresh = readers_on_every_worker(served, per_worker=1)
        send_reload_signal(redis_url=served.redis_url, namespace=served.namespace)
        for reader in fresh:
            assert reader.wait_for("reload"), reader.events
        assert served.server.process.poll() is None, served.server.log()
        print(f"\n{server} SIGHUP with streams open: old workers gone {took:.2f} s after the signal")


# --- reload modes ----------------------------------------------------------------------------------------

RELOAD_MODES = [
    Configuration("uvicorn-reload", "reloadable:app", "uvicorn", 1, ("--reload",)),
    Configuration("gunicorn-reload-2-workers", "reloadable:app", "gunicorn", 2, ("--reload",)),
    Configuration("granian-reload-2-workers", "reloadable:app", "granian", 2, ("--reload",)),
    Configuration("hypercorn-reload-2-workers", "reloadable:app", "hypercorn", 2, ("--reload",)),
]
# What each server logs when it notices the change: the restart is timed from there.
CHANGE_NOTICED = {
    "uvicorn": "WatchFiles detected changes",
    "gunicorn": "Worker reloading",
    "granian": "Changes detected",
}
# hypercorn logs nothing when it notices: it reads the files' times once a second, from a list made
# before it serves (so the first edit is seen). Its streams ending is the first sign it noticed, and the
# new code must be served within that second and the stop bound of the edit.
SILENT_RELOADER_PERIOD = {"hypercorn": 1.0}


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
        silent = configuration.server in SILENT_RELOADER_PERIOD

        def log_since() -> str:
            return served.server.log()[log_before:]

        while new_code is None and time.monotonic() - started < 30:
            now = time.monotonic()
            if streams_ended is None and all(reader.closed.is_set() for reader in readers):
                streams_ended = now
            if silent and noticed is None:
                noticed = streams_ended
            if noticed is None and not silent and CHANGE_NOTICED[configuration.server] in log_since():
                noticed = now
            if noticed is None and not silent and now - edited > 1.0:
                edited = now
                source.write_text(f"{changed}\n# edit {edits}\n")
                edits += 1
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
        if silent:
            bound = SILENT_RELOADER_PERIOD[configuration.server] + STOP_BOUND
            assert new_code - edited < bound, figures + "\n" + log[-3000:]


# --- every server, stopped every way ---------------------------------------------------------------------

RELOADABLE = "reloadable:app"  # a copy of server_app.py in a directory of its own, which a reloader watches
STOPPED = [
    Configuration("uvicorn", APP, "uvicorn", 1),
    Configuration("uvicorn-2-workers", APP, "uvicorn", 2),
    Configuration("uvicorn-reload", RELOADABLE, "uvicorn", 1, ("--reload",)),
    Configuration("gunicorn-2-workers", APP, "gunicorn", 2),
    Configuration("gunicorn-reload", RELOADABLE, "gunicorn", 1, ("--reload",)),
    Configuration("hypercorn", APP, "hypercorn", 1),  # its default: a supervisor and one worker process
    Configuration("hypercorn-2-workers", APP, "hypercorn", 2),
    Configuration("hypercorn-in-process", APP, "hypercorn", 0),
    Configuration("hypercorn-reload", RELOADABLE, "hypercorn", 1, ("--reload",)),
    Configuration("granian-2-workers", APP, "granian", 2),
    Configuration("granian-reload", RELOADABLE, "granian", 1, ("--reload",)),
    Configuration("daphne", APP, "daphne", 1),
]


@dataclass(frozen=True)
class StopCase:
    configuration: Configuration
    how: StopSignal

    @property
    def name(self) -> str:
        return f"{self.configuration.name}-{self.how.name}"


STOP_CASES = [StopCase(configuration, how) for configuration in STOPPED for how in STOP_SIGNALS]
STARTED_AHEAD = 3  # servers starting while earlier cases run: the matrix takes about as long as its starts


class ServersStartedAhead:
    """Each case's server, started a few cases ahead of its test in threads, so the matrix's run time is
    not the sum of its servers' start-up times. Each server is used by one case, which stops it."""

    def __init__(self, cases: list[StopCase], directory: Path, redis_url: str) -> None:
        self.cases = cases
        self.directory = directory
        self.redis_url = redis_url
        self.pool = ThreadPoolExecutor(max_workers=STARTED_AHEAD, thread_name_prefix="start")
        self.starting: dict[str, Future[Served]] = {}
        self.stacks: dict[str, contextlib.ExitStack] = {}
        self.stop_times: dict[str, float] = {}

    def take(self, case: StopCase) -> Served:
        index = self.cases.index(case)
        for ahead in self.cases[index : index + STARTED_AHEAD + 1]:
            if ahead.name not in self.starting:
                self.starting[ahead.name] = self.pool.submit(self._start, ahead)
        return self.starting[case.name].result(timeout=120)

    def _start(self, case: StopCase) -> Served:
        directory = self.directory / case.name
        directory.mkdir()
        cwd = None
        if case.configuration.app == RELOADABLE:
            cwd = directory / "project"
            cwd.mkdir()
            shutil.copy(TESTS / "apps" / "server_app.py", cwd / "reloadable.py")
        stack = contextlib.ExitStack()
        self.stacks[case.name] = stack
        return stack.enter_context(serving(case.configuration, directory, self.redis_url, cwd=cwd))

    def done(self, case: StopCase) -> None:
        stack = self.stacks.pop(case.name, None)
        if stack is not None:
            stack.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for name in list(self.stacks):
            self.stacks.pop(name).close()


@pytest.fixture(scope="module")
def started_ahead(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_redis_url: str
) -> Iterator[ServersStartedAhead]:
    selected = [
        item.callspec.params["case"]  # type: ignore[attr-defined]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params
    ]
    servers = ServersStartedAhead(selected, tmp_path_factory.mktemp("stops"), shared_redis_url)
    yield servers
    servers.close()
    rows = [f"{'server':<24}" + "".join(f"{how.name:>16}" for how in STOP_SIGNALS)]
    for configuration in STOPPED:
        times = [servers.stop_times.get(StopCase(configuration, how).name) for how in STOP_SIGNALS]
        if any(took is not None for took in times):
            cells = "".join(f"{'-' if took is None else f'{took:.2f} s':>16}" for took in times)
            rows.append(f"{configuration.name:<24}{cells}")
    print("\nstop times with streams open:\n" + "\n".join(rows))


@pytest.mark.parametrize("case", STOP_CASES, ids=[case.name for case in STOP_CASES])
def test_every_server_stops_within_2_s_with_streams_open_however_it_is_signalled(
    case: StopCase, started_ahead: ServersStartedAhead
) -> None:
    served = started_ahead.take(case)
    try:
        readers = readers_on_every_worker(served, per_worker=1)
        took = stop_and_time(served.server, case.how)
        started_ahead.stop_times[case.name] = took
        log = served.server.log()
        print(f"\n{case.name}: {len(readers)} streams open, every process gone {took:.2f} s after the signal")
        assert took < STOP_BOUND, f"{case.name} took {took:.2f} s to stop:\n{log[-3000:]}"
        for reader in readers:
            assert reader.closed.wait(1), reader.events
        assert served.server.leftovers(grace=0) == [], log[-3000:]
    finally:
        started_ahead.done(case)


# --- the warnings each server prints -----------------------------------------------------------------------

SEVERAL_WORKERS_WARNING = "running under several workers with no Redis URL"
WARNED = [
    # name, server, workers, extra arguments, whether it runs several worker processes
    ("uvicorn", "uvicorn", 1, (), False),
    ("uvicorn-reload", "uvicorn", 1, ("--reload",), False),
    ("uvicorn-reload-workers-2", "uvicorn", 2, ("--reload",), False),  # its reloader runs one worker
    ("uvicorn-workers-2", "uvicorn", 2, (), True),
    ("gunicorn-w-1", "gunicorn", 1, (), False),
    ("gunicorn-w2", "gunicorn", 1, ("-w2",), True),
    ("gunicorn-workers=2", "gunicorn", 1, ("--workers=2",), True),
    ("gunicorn-reload", "gunicorn", 1, ("--reload",), False),
    ("hypercorn", "hypercorn", 1, (), False),
    ("hypercorn-in-process", "hypercorn", 0, (), False),
    ("hypercorn-workers-2", "hypercorn", 2, (), True),
    ("granian", "granian", 1, (), False),
    ("granian-reload", "granian", 1, ("--reload",), False),
    ("granian-workers-2", "granian", 2, (), True),
    ("daphne", "daphne", 1, (), False),
]


@pytest.fixture(scope="module")
def warnings_at_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[str]]]:
    """Every server of WARNED started without Redis, in parallel; what distreload logged in each once
    every worker process has started it."""
    directory = tmp_path_factory.mktemp("warnings")
    project = directory / "project"  # the reloaders watch this directory, not the repository
    project.mkdir()
    shutil.copy(TESTS / "apps" / "server_app.py", project / "reloadable.py")
    launcher = ServerLauncher(directory)

    def start(name: str, server: str, workers: int, extra: tuple[str, ...], several: bool) -> list[str]:
        started = launcher.start(
            RELOADABLE,
            server=server,
            workers=workers,
            env={"DISTRELOAD_REDIS_URL": ""},
            extra_args=list(extra),
            cwd=project,
        )
        processes = 2 if several else 1
        deadline = time.monotonic() + 30
        while started.log().count("distreload active") < processes:
            assert time.monotonic() < deadline, f"{name}: distreload did not start:\n{started.log()}"
            if server in SERVERS_WITHOUT_LIFESPAN:
                get(started.port, PREFIX)  # distreload starts on a worker's first request there
            time.sleep(0.05)
        time.sleep(0.2)  # a warning is logged right after the line it follows
        logged = started.log().splitlines()
        return [
            line for line in logged if "distreload" in line and f"GET {PREFIX}" not in line
        ]  # no access log

    try:
        with ThreadPoolExecutor(max_workers=STARTED_AHEAD) as pool:
            futures = {case[0]: pool.submit(start, *case) for case in WARNED}
            yield {name: future.result() for name, future in futures.items()}
    finally:
        launcher.stop_all()


@pytest.mark.parametrize(
    ("name", "several"), [(case[0], case[4]) for case in WARNED], ids=[case[0] for case in WARNED]
)
def test_the_several_workers_warning_is_printed_exactly_where_several_workers_run(
    name: str, several: bool, warnings_at_start: dict[str, list[str]]
) -> None:
    lines = warnings_at_start[name]
    warned = [line for line in lines if SEVERAL_WORKERS_WARNING in line]
    others = [
        line for line in lines if "distreload active" not in line and SEVERAL_WORKERS_WARNING not in line
    ]
    assert bool(warned) is several, lines
    assert others == [], lines


# --- a bad setting in the environment -----------------------------------------------------------------------

BAD_SETTINGS = [
    ("DISTRELOAD_ENABLED", "maybe", "'maybe' is not one of 1/0, true/false, yes/no, on/off"),
    ("DISTRELOAD_REDIS_URL", "127.0.0.1:6391", "'127.0.0.1:6391' has scheme ''; use redis://"),
    ("DISTRELOAD_NAMESPACE", "two words", "'two words' is not a valid namespace"),
]


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
@pytest.mark.parametrize(("variable", "value", "reason"), BAD_SETTINGS, ids=[bad[0] for bad in BAD_SETTINGS])
def test_a_bad_environment_value_is_one_line_and_the_server_does_not_start(
    server: str, variable: str, value: str, reason: str, tmp_path: Path
) -> None:
    launcher = ServerLauncher(tmp_path)
    try:
        started = launcher.start(APP, server=server, env={variable: value}, wait=False)
        status = started.process.wait(30)
        log = started.log()
    finally:
        launcher.stop_all()
    lines = [line for line in log.splitlines() if "distreload" in line]
    assert len(lines) == 1 and lines[0].startswith(f"distreload: {variable}: {reason}"), log
    assert lines[0].endswith("; not starting") and "Traceback" not in log, log
    assert status != 0, log
    print(
        f"\n{server} with {variable}={value}: exit status {status}, {len(log.splitlines())} lines of output"
    )

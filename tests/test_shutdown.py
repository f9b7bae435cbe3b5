"""Noticing that the server stops: chained signal handlers, server flags, and cleaning up after itself."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType, SimpleNamespace
from typing import Any

import pytest

from distreload import shutdown
from distreload.shutdown import ExitWatch

pytestmark = pytest.mark.anyio


class Hub:
    """A stand-in for an app's stream hub."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    def close_all(self, reason: str = "shutdown") -> None:
        self.closed.append(reason)

    def __len__(self) -> int:
        return 1


class Server:
    """What uvicorn's Server looks like from its signal handler: a bound method and a flag."""

    def __init__(self) -> None:
        self.should_exit = False
        self.signals: list[int] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)
        self.should_exit = True


@pytest.fixture
def server() -> Iterator[Server]:
    """A server's handlers installed for SIGINT and SIGTERM, and the originals put back afterwards."""
    originals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    running = Server()
    for signum in originals:
        signal.signal(signum, running.handle_exit)
    yield running
    for signum, original in originals.items():
        signal.signal(signum, original)


async def test_a_signal_ends_the_streams_first_then_reaches_the_server(server: Server) -> None:
    watch, hub = ExitWatch(), Hub()
    watch.attach(hub)
    signal.raise_signal(signal.SIGTERM)
    await asyncio.sleep(0.01)
    assert hub.closed == ["shutdown"] and server.signals == [signal.SIGTERM]
    watch.detach(hub)


async def test_the_servers_exit_flag_is_noticed_without_a_signal(server: Server) -> None:
    """uvicorn's supervisor (--reload, --workers) may set the flag; gunicorn's reloader likewise."""
    watch, hub = ExitWatch(), Hub()
    watch.attach(hub)
    server.should_exit = True
    await asyncio.sleep(shutdown.POLL_INTERVAL * 2 + 0.05)
    assert hub.closed == ["shutdown"] and server.signals == []
    watch.detach(hub)


async def test_the_servers_handlers_are_put_back_when_the_last_app_shuts_down(server: Server) -> None:
    watch, first, second = ExitWatch(), Hub(), Hub()
    watch.attach(first)
    watch.attach(second)
    assert signal.getsignal(signal.SIGTERM) != server.handle_exit  # ours is in front
    watch.detach(first)
    assert signal.getsignal(signal.SIGTERM) != server.handle_exit  # the other app still needs it
    watch.detach(second)
    assert signal.getsignal(signal.SIGTERM) == server.handle_exit
    assert signal.getsignal(signal.SIGINT) == server.handle_exit


async def test_handlers_a_server_restored_itself_are_left_as_they_are(server: Server) -> None:
    watch, hub = ExitWatch(), Hub()
    watch.attach(hub)

    def newer(sig: int, frame: FrameType | None) -> None: ...

    signal.signal(signal.SIGTERM, newer)  # as uvicorn does when it exits
    watch.detach(hub)
    assert signal.getsignal(signal.SIGTERM) is newer
    assert signal.getsignal(signal.SIGINT) == server.handle_exit


async def test_a_hypercorn_worker_process_hears_of_the_stop_through_its_supervisors_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hypercorn's worker processes get no signal: the supervisor sets an event the worker polls."""

    def asyncio_worker() -> None: ...

    asyncio_worker.__module__ = "hypercorn.asyncio.run"
    stop = threading.Event()  # a multiprocessing.Event in hypercorn; the same wait() and set()
    worker_process = SimpleNamespace(_target=asyncio_worker, _kwargs={"shutdown_event": stop})
    monkeypatch.setattr(shutdown.multiprocessing, "current_process", lambda: worker_process)
    watch, hub = ExitWatch(), Hub()
    watch.attach(hub)
    await asyncio.sleep(0.05)
    assert hub.closed == []
    stop.set()
    await asyncio.sleep(0.05)
    assert hub.closed == ["shutdown"]
    watch.detach(hub)


def watch_the_stop_event_until_killed(stop: Any, watching: Any) -> None:
    """A hypercorn worker process as distreload sees it: an app started, its supervisor's event watched."""
    shutdown._hypercorn_stop_event = lambda: stop

    async def serve() -> None:
        ExitWatch().attach(Hub())
        watching.set()
        await asyncio.sleep(60)

    asyncio.run(serve())


def test_a_worker_killed_while_watching_the_stop_event_never_holds_up_the_supervisor() -> None:
    """SIGTERM to hypercorn's process group kills its workers at once (they keep the default action);
    the supervisor then sets the stop event. A worker that died inside the event's wait() would leave
    that set() waiting forever for it to wake, and hypercorn would never exit."""
    spawn = multiprocessing.get_context("spawn")  # as hypercorn starts its workers
    stop, watching = spawn.Event(), spawn.Event()
    worker = spawn.Process(target=watch_the_stop_event_until_killed, args=(stop, watching), daemon=True)
    worker.start()
    try:
        assert watching.wait(30)
        time.sleep(shutdown.POLL_INTERVAL)  # the worker's watch is under way
    finally:
        worker.kill()
        worker.join(10)
    supervisor = threading.Thread(target=stop.set, daemon=True)  # daemon: a hang must not hold pytest
    supervisor.start()
    supervisor.join(10)
    assert not supervisor.is_alive(), "the supervisor's set() is stuck on the killed worker"


def server_callbacks_on_uvloop(chained: bool, results: Any) -> None:
    """A server on uvloop whose SIGINT and SIGTERM callbacks went through ``loop.add_signal_handler`` (as
    granian's workers' do), in a process of its own: a SIGTERM comes while the loop takes in a SIGINT (a
    supervisor stopping its workers as Ctrl-C reaches the whole group). Puts the callbacks run, in order."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    callbacks: list[str] = []
    loop.add_signal_handler(signal.SIGINT, callbacks.append, "SIGINT")
    loop.add_signal_handler(signal.SIGTERM, callbacks.append, "SIGTERM")
    uvloops_own = signal.getsignal(signal.SIGINT)
    assert callable(uvloops_own)

    def sigint_then_sigterm(sig: int, frame: FrameType | None) -> None:
        # Run by the loop as it takes in the SIGINT, after it read its wakeup fd: the SIGTERM's byte comes
        # after that read, and its Python-level handler runs at once, inside this one.
        signal.raise_signal(signal.SIGTERM)
        uvloops_own(sig, frame)

    signal.signal(signal.SIGINT, sigint_then_sigterm)
    hub = Hub()

    async def serve() -> None:
        if chained:
            ExitWatch().attach(hub)
        # From another thread, so that the SIGINT reaches the loop while it waits, as a real one does.
        threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
        await asyncio.sleep(1)

    loop.run_until_complete(serve())
    results.put((callbacks, hub.closed))


def test_on_uvloop_a_signal_that_comes_while_another_is_taken_in_runs_the_servers_callback_once() -> None:
    """uvloop alone runs the SIGTERM callback twice here; granian's blocks the worker for good on a third
    call (its stop signal's set() waits, holding the GIL), so its worker never stopped, about once in a
    hundred stops by SIGINT to the group. Through distreload's handler each callback runs once."""
    spawn = multiprocessing.get_context("spawn")
    outcomes = {}
    for chained in (False, True):
        results = spawn.Queue()
        process = spawn.Process(target=server_callbacks_on_uvloop, args=(chained, results), daemon=True)
        process.start()
        outcomes[chained] = results.get(timeout=30)
        process.join(10)
    assert outcomes[False] == (["SIGINT", "SIGTERM", "SIGTERM"], []), (
        "uvloop no longer runs a callback twice: shutdown._uvloops_signal_recorder can go"
    )
    assert outcomes[True] == (["SIGINT", "SIGTERM"], ["shutdown"])


def test_no_stop_event_is_looked_for_outside_hypercorn_workers() -> None:
    assert shutdown._hypercorn_stop_event() is None  # the test process itself


def test_a_handler_left_behind_never_fails_after_its_loop_closed(server: Server) -> None:
    """pytest sessions, notebooks: the loop is gone, Ctrl-C must still reach the server's handler."""
    watch, hub = ExitWatch(), Hub()

    async def run_app() -> None:
        watch.attach(hub)  # and never detached: the app had no lifespan shutdown

    asyncio.run(run_app())
    signal.raise_signal(signal.SIGINT)
    assert server.signals == [signal.SIGINT] and hub.closed == []


def test_outside_the_main_thread_nothing_is_chained() -> None:
    before = signal.getsignal(signal.SIGTERM)
    errors: list[BaseException] = []

    def run() -> None:
        async def app() -> None:
            watch = ExitWatch()
            watch.attach(Hub())
            await asyncio.sleep(0.01)

        try:
            asyncio.run(app())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(5)
    assert errors == [] and signal.getsignal(signal.SIGTERM) == before


def test_owners_are_found_behind_bound_and_chained_handlers() -> None:
    running = Server()

    def chained(sig: int, frame: Any, previous: Any = running.handle_exit) -> None: ...

    assert list(shutdown._handler_owners(running.handle_exit)) == [running]
    assert list(shutdown._handler_owners(chained)) == [running]
    assert list(shutdown._handler_owners(signal.SIG_DFL)) == []


class UvicornUnderGunicorn(Server):
    """uvicorn's ``Server`` as uvicorn-worker runs it: its config holds the worker's bound notifier."""

    def __init__(self, worker: object) -> None:
        super().__init__()
        self.config = SimpleNamespace(callback_notify=worker.notify)  # type: ignore[attr-defined]


UvicornUnderGunicorn.__module__ = "uvicorn.server"


def gunicorn_worker(*, alive: bool) -> Any:
    from gunicorn.workers.base import Worker

    worker = Worker.__new__(Worker)  # its state only: nothing of it runs here
    worker.alive = alive
    worker.reloader = None
    return worker


@pytest.fixture
def handled_by() -> Iterator[Any]:
    """Install a server's SIGTERM/SIGINT handler; the originals are put back afterwards."""
    originals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def install(running: Server) -> Server:
        for signum in originals:
            signal.signal(signum, running.handle_exit)
        return running

    yield install
    for signum, original in originals.items():
        signal.signal(signum, original)


def test_uvicorn_is_stopped_only_once_gunicorn_marked_its_worker_dead(handled_by: Any) -> None:
    """gunicorn's --reload and SIGQUIT mark the worker dead without telling uvicorn: distreload finishes
    that stop, and only that one."""
    worker = gunicorn_worker(alive=True)
    running = handled_by(UvicornUnderGunicorn(worker))
    assert not shutdown._server_is_exiting() and running.should_exit is False
    worker.alive = False
    assert shutdown._server_is_exiting() and running.should_exit is True


def test_a_server_whose_notifier_is_not_a_gunicorn_worker_is_never_stopped(handled_by: Any) -> None:
    """Anything else with an ``alive`` flag behind a server's config (an app's own health object, a
    different process manager) says nothing about gunicorn stopping: the server keeps running."""

    class HealthCheck:
        alive = False

        def notify(self) -> None: ...

    running = handled_by(UvicornUnderGunicorn(HealthCheck()))
    assert not shutdown._server_is_exiting()
    assert running.should_exit is False


def test_a_server_that_is_not_uvicorns_is_never_written_to(handled_by: Any) -> None:
    class OtherServer(Server):
        def __init__(self, worker: object) -> None:
            super().__init__()
            self.config = SimpleNamespace(callback_notify=worker.notify)  # type: ignore[attr-defined]

    running = handled_by(OtherServer(gunicorn_worker(alive=False)))
    assert shutdown._server_is_exiting()  # its streams end: gunicorn is stopping this worker
    assert running.should_exit is False

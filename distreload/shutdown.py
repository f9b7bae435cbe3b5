"""Noticing that the server is stopping, so open event streams end at once instead of holding it up.

Servers wait for open responses before they exit ("Waiting for connections to close"), and most tell the
app nothing until every connection is gone: the ASGI lifespan shutdown comes after. There is no public
ASGI way to learn earlier, so distreload listens where the server itself does:

- the SIGINT/SIGTERM handlers a server installs with ``signal.signal`` (uvicorn, gunicorn's workers):
  distreload chains a handler in front that ends the streams, then calls the server's own. The chained
  handlers are put back when the last app using them shuts down, and never touch a closed event loop. On
  uvloop, a server's handlers registered with ``loop.add_signal_handler`` (granian's workers) are reached
  through the loop's wakeup fd, and the chained handler does not call the loop's own Python-level one,
  found by its internal name (see ``_uvloops_signal_recorder``);
- uvicorn's ``Server.should_exit`` flag, read from the object behind its signal handler, which also covers
  ``uvicorn --reload`` and ``--workers`` (the supervisor's signal reaches the worker as a flag);
- gunicorn's worker ``alive`` flag, which its ``--reload`` clears without any signal;
- the event hypercorn's supervisor sets to stop its worker processes, which get no signal at all (a thread
  reads it, so every worker hears of the stop at once: hypercorn kills the remaining workers as soon as
  one has exited). The thread reads the event's value without waiting on it: a process blocked in the
  event's ``wait()`` is counted as a sleeper the setter must wake, and when SIGTERM reaches the whole
  process group the worker dies in that wait, so the supervisor's ``set()`` waits forever for it to wake
  and hypercorn never stops.

The flags, the event and uvloop's handler's name are not documented interfaces: this is where distreload
relies on a server's internals, because no public mechanism exists (the README lists what each server does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.1  # a flag read ten times a second: a few microseconds each
# hypercorn's stop event is read more often: its supervisor kills the other workers as soon as one has
# exited, so each must end its streams well before the quickest one is gone.
STOP_EVENT_INTERVAL = 0.02
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Closable(Protocol):
    def close_all(self, reason: str = "shutdown") -> None: ...

    def __len__(self) -> int: ...


class ExitWatch:
    """Ends the streams of every attached hub when the server starts to stop. One per process, since
    signal handlers are."""

    def __init__(self) -> None:
        self._hubs: weakref.WeakSet[Closable] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chained: dict[int, tuple[Callable[..., Any], Callable[..., Any]]] = {}  # ours, theirs
        self._poll: asyncio.Task[None] | None = None
        self._fired = False  # the signal and the flag both tell of one stop: end the streams once
        self._event_waiter: threading.Thread | None = None
        self._event_waiter_done = threading.Event()  # set when the last app is gone: the thread ends

    def attach(self, hub: Closable) -> None:
        """Watch for the server stopping on the running loop, on behalf of ``hub``."""
        loop = asyncio.get_running_loop()
        self._hubs.add(hub)
        self._fired = False
        if self._loop is not loop:
            self._restore_handlers()
            self._loop = loop
        self._chain_handlers(loop)
        if self._poll is None or self._poll.done():
            self._poll = loop.create_task(self._watch_flags(), name="distreload exit watch")
        if self._event_waiter is None:
            self._wait_for_stop_event()

    def detach(self, hub: Closable) -> None:
        """``hub``'s app shut down; the last one out puts the server's handlers back."""
        self._hubs.discard(hub)
        if self._hubs:
            return
        self._restore_handlers()
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        if self._event_waiter is not None:
            self._event_waiter_done.set()
            self._event_waiter = None
        self._loop = None

    def close_all(self) -> None:
        if self._fired:
            return
        self._fired = True
        for hub in list(self._hubs):
            hub.close_all()

    def _chain_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in _SIGNALS:
            if signum in self._chained:
                continue
            try:
                previous = signal.getsignal(signum)
            except ValueError:  # not the main thread: a server started in a thread has no handlers here
                return
            if not callable(previous):
                continue  # no server handler to chain: the default action ends the process anyway

            def handler(
                sig: int,
                frame: FrameType | None,
                previous: Callable[..., Any] = previous,
                pass_on: bool = not _uvloops_signal_recorder(previous, loop),
            ) -> None:
                if not loop.is_closed():
                    with contextlib.suppress(RuntimeError):  # the loop closed in between
                        loop.call_soon_threadsafe(self.close_all)
                if pass_on:
                    previous(sig, frame)

            try:
                signal.signal(signum, handler)
            except ValueError:
                return
            self._chained[signum] = (handler, previous)

    def _restore_handlers(self) -> None:
        for signum, (ours, theirs) in list(self._chained.items()):
            try:
                # Only where ours is still in place: a server that restored its own handlers meanwhile
                # (uvicorn does at exit) must keep them.
                if signal.getsignal(signum) is ours:
                    signal.signal(signum, theirs)
            except ValueError:
                continue
            del self._chained[signum]

    def _wait_for_stop_event(self) -> None:
        event = _hypercorn_stop_event()
        if event is None:
            return

        done = self._event_waiter_done = threading.Event()

        def wait() -> None:
            while not _event_is_set(event):
                if done.wait(STOP_EVENT_INTERVAL):
                    return  # every app shut down (or never started): nothing left to end
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed in between
                    loop.call_soon_threadsafe(self.close_all)

        # A daemon thread: it never holds the process up, and lives as long as the worker does.
        self._event_waiter = threading.Thread(target=wait, name="distreload stop event", daemon=True)
        self._event_waiter.start()

    async def _watch_flags(self) -> None:
        while self._hubs or _gunicorn_reloader_on():
            if _server_is_exiting():
                self.close_all()
                return
            await asyncio.sleep(POLL_INTERVAL)


def _uvloops_signal_recorder(handler: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``handler`` is what uvloop's ``add_signal_handler`` installs: a method of the running loop
    that only notes the signal for the loop, which hears of it through its wakeup fd anyway.

    distreload's handler does not call it on. When a second signal comes while uvloop is taking in a first
    (SIGINT to the group, then the supervisor's SIGTERM: granian), the note makes uvloop run the server's
    callback for the second one twice, once from the note and once from the fd. granian's callback blocks
    for good when it runs a third time, holding the GIL, and its worker never stops. The recorder's name
    is uvloop's internal, not an interface (no public one exists); if it changes, the handler calls it on as
    it calls any other, and uvloop behaves as it does without distreload.
    """
    return (
        getattr(handler, "__self__", None) is loop
        and getattr(handler, "__name__", "") == "_Loop__sighandler"
        and type(loop).__module__.startswith("uvloop")
    )


_exit_watch = ExitWatch()


def exit_watch() -> ExitWatch:
    return _exit_watch


def server_objects() -> Iterator[Any]:
    """The objects (uvicorn's ``Server``, a gunicorn worker) whose methods handle SIGTERM and SIGINT."""
    for signum in _SIGNALS:
        try:
            handler = signal.getsignal(signum)
        except ValueError:  # not the main thread
            return
        yield from _handler_owners(handler)


def _handler_owners(handler: Any) -> Iterator[Any]:
    owner = getattr(handler, "__self__", None)
    if owner is not None:
        yield owner
    for value in getattr(handler, "__defaults__", None) or ():  # our chained handler keeps theirs there
        inner = getattr(value, "__self__", None)
        if inner is not None:
            yield inner


def _server_is_exiting() -> bool:
    """Read uvicorn's ``should_exit`` (and gunicorn's ``alive``) from the objects behind the handlers."""
    for candidate in server_objects():
        if getattr(candidate, "should_exit", False) is True:
            return True
        if getattr(candidate, "alive", True) is False:
            return True
        worker = gunicorn_worker_behind(candidate)
        if worker is not None and worker.alive is False:
            _finish_gunicorns_stop(candidate)
            return True
    return False


def _finish_gunicorns_stop(server: Any) -> None:
    """Stop the uvicorn ``Server`` of a gunicorn worker that gunicorn has already marked dead.

    gunicorn clears a worker's ``alive`` only to stop it: its reloader (``--reload``, which then ends only
    its own thread with sys.exit), SIGQUIT (sent for SIGINT to the master) and SIGTERM. uvicorn-worker
    hears of the first two not at all, so its server goes on serving the old code (benoitc/gunicorn#2339)
    until the master kills it. Setting ``should_exit`` is what uvicorn's own SIGTERM handler does. It is
    written only to a uvicorn ``Server`` whose flag is still False and whose gunicorn worker is marked
    dead, so distreload never stops a server gunicorn is not stopping.
    """
    if type(server).__module__.startswith("uvicorn.") and server.should_exit is False:
        server.should_exit = True


def gunicorn_worker_behind(server: Any) -> Any:
    """The gunicorn worker running a uvicorn ``Server`` (uvicorn-worker passes its bound
    ``callback_notify`` into the server's config), or None."""
    callback = getattr(getattr(server, "config", None), "callback_notify", None)
    worker = getattr(callback, "__self__", None)
    gunicorn_worker = getattr(sys.modules.get("gunicorn.workers.base"), "Worker", None)
    if isinstance(gunicorn_worker, type) and isinstance(worker, gunicorn_worker):
        return worker
    return None


def _gunicorn_reloader_on() -> bool:
    for candidate in server_objects():
        worker = gunicorn_worker_behind(candidate)
        if worker is not None and getattr(worker, "reloader", None) is not None:
            return True
    return False


def _hypercorn_stop_event() -> Any:
    """The event hypercorn's supervisor sets to stop this worker process, or None elsewhere.

    hypercorn stops its worker processes with no signal: the supervisor sets a ``multiprocessing`` event,
    which the worker polls, and then waits ``graceful_timeout`` (3 s by default) for open responses. It
    hands the event to the worker function as ``shutdown_event``; the worker's ``Process`` object keeps
    the call's arguments (``_target``, ``_kwargs``). Both are internals: no public way exists.
    """
    event = (hypercorn_worker_arguments() or {}).get("shutdown_event")
    return event if callable(getattr(event, "wait", None)) else None


def hypercorn_worker_arguments() -> dict[str, Any] | None:
    """The arguments hypercorn's supervisor started this worker process with (``config``,
    ``shutdown_event``, ``sockets``), or None outside a hypercorn worker process."""
    process = multiprocessing.current_process()
    target = getattr(process, "_target", None)
    if not str(getattr(target, "__module__", "")).startswith("hypercorn."):
        return None
    arguments = getattr(process, "_kwargs", None)
    return arguments if isinstance(arguments, dict) else None


def _event_is_set(event: Any) -> bool:
    """A ``multiprocessing.Event``'s state, read without its lock where the platform allows: a process
    killed while holding that lock would leave the supervisor's ``set()`` waiting for it forever."""
    try:
        return bool(event._flag.get_value())  # the event is set while its semaphore is 1
    except (AttributeError, NotImplementedError):  # macOS has no sem_getvalue; hypercorn itself polls so
        return bool(event.is_set())

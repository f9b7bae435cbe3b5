"""The open event streams of one app in this worker, and how an event reaches all of them at once.

An open stream is its request's task waiting in the server's ``receive()`` (the one way a server tells of a
disconnect, which so ends the request as soon as the server says it), and a small object in the hub: no
other task, future or queue while nothing happens. An event is one task that goes over the streams and, for
each, makes the write there and then: it calls the stream's ``send`` and runs the awaitable it hands back up
to its first wait, in a copy of the stream request's context (a request-id or tracing middleware sees the
write as part of the stream's request, not of whatever triggered the reload). A server takes almost every
write at once, so most writes are over in that one step: no task, no turn of the loop per stream. A write the
server makes wait (the client's connection is full) keeps the task it started in, which drives it to its
end, still in the stream's context, and a new task carries on with the streams after it: whatever a send
wrapper tied to the running task (an ``asyncio.timeout``, an anyio cancel scope) is tied to that write and
nothing else, and no slow client holds up another. What is said to a client meanwhile queues behind its
write, up to a limit, after which it is given up.

A stream ends when its last message is written (shutdown: ``event: shutdown``), when a write fails, or when
the client leaves; the request then returns normally (the stream cancels its wait in ``receive()`` and takes
the cancellation back), so no server is left waiting for a response that would never finish. When the
server cancels the request instead (it is stopping, and done waiting), the stream still says goodbye
(``event: shutdown``, the last body), within a bound, before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Iterator, Sequence
from typing import Any

from starlette.types import Receive, Send

from .protocol import ClusterVersion, Reload
from .timeouts import within

logger = logging.getLogger(__name__)

HEARTBEAT = b": heartbeat\n\n"
# A client whose write has waited this long (its connection's buffers are full: it stopped reading) is given
# up when there is more to say to it; so is one with this many messages queued, whatever the time.
STALL_SECONDS = 30.0
MAX_BACKLOG = 1000
# The longest a server that cancels an open stream (it is stopping) is held up while the page is told why.
FAREWELL_SECONDS = 0.5


def sse_event(event: str, data: str, event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def reload_event(reload: Reload) -> bytes:
    return sse_event("reload", reload.to_json(), str(reload.version))


def shutdown_event(reason: str) -> bytes:
    return sse_event("shutdown", json.dumps({"reason": reason}))


# A stream's writer while its write is being made here and now, before it is over or has to wait.
WRITING_NOW = object()

if sys.version_info >= (3, 12):

    def _start(writes: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # An eager task makes its first step here and now: the writes the server takes at once are made
        # before the call returns, without a turn of the loop.
        return asyncio.eager_task_factory(asyncio.get_running_loop(), writes)

else:

    def _start(writes: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Python 3.11 has no eager tasks: the writes start on the loop's next turn.
        return asyncio.get_running_loop().create_task(writes)


async def _write_each(streams: Sequence[Stream], body: bytes, more_body: bool, start: int = 0) -> None:
    """Write ``body`` to each of ``streams`` (each already marked as being written to) from ``start`` on.
    The first write the server makes wait keeps this task, which drives it and what queues behind it to
    the end; a new task carries on with the streams after it (on the loop's next turn: never nested, however
    many clients are slow)."""
    for index in range(start, len(streams)):
        stream = streams[index]
        waiting = stream._write_now(body, more_body)
        if waiting is not None:
            if index + 1 < len(streams):
                asyncio.get_running_loop().create_task(_write_each(streams, body, more_body, index + 1))
            await stream._finish(waiting)
            return


def _first_step(send: Send, body: bytes, more_body: bool) -> tuple[Iterator[Any], Any] | None:
    """Call ``send`` and run what it hands back up to its first wait: None when the write is over, else
    the write's steps and what it waits on. Stepped as ``await`` steps an awaitable: granian's hands back an
    iterator with no ``send`` or ``throw``."""
    steps = send({"type": "http.response.body", "body": body, "more_body": more_body}).__await__()
    try:
        return steps, next(steps)
    except StopIteration:
        return None


class _Waiting:
    """A write the server made wait, resumed in its stream request's context by the task that awaits it."""

    __slots__ = ("steps", "waited_on", "more_body", "context")

    def __init__(
        self, steps: Iterator[Any], waited_on: Any, more_body: bool, context: contextvars.Context
    ) -> None:
        self.steps = steps
        self.waited_on = waited_on  # what the write waits on (a future), handed to the task awaiting this
        self.more_body = more_body
        self.context = context

    def __await__(self) -> Generator[Any, Any, None]:
        # What ``yield from`` does with the write's steps, each step run in the request's context.
        steps, context, waited_on = self.steps, self.context, self.waited_on
        self.waited_on = None
        while True:
            try:
                result = yield waited_on
            except GeneratorExit:
                close = getattr(steps, "close", None)
                if close is not None:
                    close()
                raise
            except BaseException as exc:  # a cancellation (a timeout's, the stream given up) is the write's
                throw = getattr(steps, "throw", None)
                if throw is None:
                    raise
                try:
                    waited_on = context.run(throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    if result is None:
                        waited_on = context.run(next, steps)
                    else:
                        waited_on = context.run(steps.send, result)  # type: ignore[attr-defined]
                except StopIteration:
                    return


class Stream:
    """One open event-stream response. Its request's task waits in the server's ``receive()`` (the one way a
    server tells of a disconnect); what the hub writes goes to the server's ``send`` in a copy of the
    request's context, one write after another: made at once by the task that writes an event to every
    stream, or, once the server makes one wait, by a task that is that write's own."""

    __slots__ = (
        "client_ahead",
        "key",
        "_send",
        "_hub",
        "_context",
        "_task",
        "_queue",
        "_writer",
        "_serving",
        "_ending",
        "_ended",
        "_writing_since",
    )

    def __init__(self, hub: StreamHub, send: Send, client_ahead: ClusterVersion | None = None) -> None:
        # A version the client already holds that this worker had not reached when the stream opened.
        self.client_ahead = client_ahead
        self.key = ""  # what the hub's on_close is told of the stream (the endpoint's stream id)
        self._hub = hub
        self._send = send
        # The request's context (a request-id or tracing middleware's variables) for the writes: a copy, as a
        # write may start inside the request's own task (its farewell), where its context is already entered.
        self._context = contextvars.copy_context()
        self._task = asyncio.current_task()
        # (body, more_body) not yet handed to the server, behind a write in flight; made when needed.
        self._queue: list[tuple[bytes, bool]] | None = None
        # While a write is in flight: the task driving one the server made wait, else WRITING_NOW (being made,
        # or waiting for its task's first turn).
        self._writer: asyncio.Task[None] | object | None = None
        # The request has written its first events and waits in the server's receive(): the stream's writes
        # are its own to make, and the stream may end the request by cancelling that wait.
        self._serving = False
        self._ending = False  # no more writes: the last one is queued, or the stream is given up
        self._ended = False  # the stream is over on this side: the request's cancellation is the stream's
        self._writing_since: float | None = None  # when the write in flight was handed to the server

    def write(self, body: bytes, *, last: bool = False) -> None:
        """Queue ``body`` for this stream; ``last`` ends the response after it."""
        if self._take(body, last):
            _start(_write_each((self,), body, not last))

    def _take(self, body: bytes, last: bool) -> bool:
        """Queue ``body``; True (the stream marked as being written to) when nothing is in flight and the
        caller is to write it now, through ``_write_each``."""
        if self._ending:
            return False
        queue = self._queue
        if queue and self._stalled(queue):
            self._give_up()
            return False
        if last:
            self._ending = True
        if self._writer is None and self._serving:
            self._writer = WRITING_NOW  # writes made while this one runs queue behind it
            return True
        if queue is None:
            self._queue = [(body, not last)]
        else:
            queue.append((body, not last))
        return False

    def _stalled(self, queue: list[tuple[bytes, bool]]) -> bool:
        writing_since = self._writing_since
        waited = 0.0 if writing_since is None else asyncio.get_running_loop().time() - writing_since
        if waited <= STALL_SECONDS and len(queue) < MAX_BACKLOG:
            return False
        logger.debug(
            "distreload: a client stopped reading its event stream (a write waited %.0f s); "
            "dropping the stream",
            waited,
        )
        return True

    def _give_up(self) -> None:
        """A write is stuck behind a client that stopped reading: stop it and end the request."""
        self._ending = True
        self._queue = None
        writer = self._writer
        if isinstance(writer, asyncio.Task):
            writer.cancel()
        self._end_request()

    def _end_request(self) -> None:
        """The stream is over on this side: the request, waiting in ``receive()``, returns."""
        if self._ended:
            return  # cancelled once: a second cancel would not be taken back
        self._ended = True
        self._hub.discard(self)
        task = self._task
        if self._serving and task is not None:
            task.cancel()  # serve() takes this cancellation back and returns normally

    def _write_now(self, body: bytes, more_body: bool) -> _Waiting | None:
        """Hand ``body``, then what queues behind it, to the server here and now, in the request's context;
        the write the server makes wait (this task then has to drive it: ``_finish``), or None."""
        if self._ended:
            self._writer = None  # the request is over (its client left before this task's turn came)
            return None
        while True:
            try:
                started = self._context.run(_first_step, self._send, body, more_body)
            except (Exception, asyncio.CancelledError) as exc:
                self._failed(exc)
                return None
            if started is not None:
                self._writer = asyncio.current_task()
                self._writing_since = asyncio.get_running_loop().time()
                return _Waiting(*started, more_body, self._context)
            if self._written(more_body):
                return None
            body, more_body = self._queue.pop(0)  # type: ignore[union-attr]  # _written() saw it

    async def _finish(self, waiting: _Waiting | None) -> None:
        """Drive a write the server made wait to its end, then write what queued behind it."""
        while waiting is not None:
            try:
                await waiting
            except (Exception, asyncio.CancelledError) as exc:
                # The server refused the write, or it was cancelled: given up, its client left, or a send
                # wrapper's timeout. This task is the write's own, so the cancellation ends here.
                self._failed(exc)
                return
            self._writing_since = None
            if self._written(waiting.more_body):
                return
            waiting = self._write_now(*self._queue.pop(0))  # type: ignore[union-attr]  # _written() saw it

    def _written(self, more_body: bool) -> bool:
        """A write is over: True when nothing more is to be written now."""
        if not more_body:
            # The response is complete. One turn of the loop before the request returns lets the server
            # flush it: daphne, stopping, closes at once the connections of requests that have returned.
            self._writer = None
            asyncio.get_running_loop().call_soon(self._end_request)
            return True
        if not self._queue:
            self._queue = None  # an idle stream keeps no list
            self._writer = None
            return True
        return False

    def _failed(self, exc: BaseException) -> None:
        logger.debug("distreload: event stream write failed (%r); dropping the stream", exc)
        self._writing_since = None
        self._writer = None
        self._ending = True
        self._queue = None
        self._end_request()

    async def serve(self, receive: Receive, opening: Awaitable[bool] | None = None) -> None:
        """Wait in the server's ``receive()`` until the client leaves or the stream ends; the hub's writes
        are made meanwhile as they come. ``opening``, awaited first, registers the stream and writes what
        comes before (False: the stream is refused), so that an open stream keeps this one frame."""
        if opening is not None:
            opened = await opening
            opening = None  # the finished coroutine is not kept for the stream's life
            if not opened:
                return
        try:
            if self._ended:
                return
            self._serving = True
            queue = self._queue
            if queue:
                self._write_alone(queue)
            while (await receive())["type"] != "http.disconnect":
                pass  # the request itself (its empty body): listen on
        except asyncio.CancelledError:
            task = self._task
            if self._ended and task is not None and task.uncancel() == 0:
                return  # the stream's own doing: its last message is written, or its client given up
            # The server cancels the request, as servers do when they stop (daphne at once, uvicorn and
            # hypercorn when their graceful timeout runs out). Tell the page why its stream ends, within a
            # bound, then let the cancellation through.
            self._serving = False
            await self._say_farewell()
            raise
        except Exception as exc:
            logger.debug("distreload: the server's receive() failed (%s); dropping the stream", exc)
        finally:
            self._serving = False
            self._ending = True
            writer = self._writer
            if isinstance(writer, asyncio.Task):
                writer.cancel()  # the client left: a write waiting on its connection never completes
            self._hub.closed(self)

    def _write_alone(self, queue: list[tuple[bytes, bool]]) -> asyncio.Task[None]:
        """Start writing ``queue`` (nothing in flight): its first message in a task for this stream alone,
        the rest behind it."""
        self._queue = queue[1:] or None
        self._writer = WRITING_NOW
        return _start(_write_each((self,), *queue[0]))

    async def _say_farewell(self) -> None:
        self._hub.discard(self)
        queue = self._queue or []
        self._queue = None
        if not self._ending:
            queue.append((shutdown_event("shutdown"), False))
            self._ending = True
        writer = self._writer
        if writer is None:
            if not queue:
                return  # the last message is already written
            writer = self._write_alone(queue)
        else:
            self._queue = queue
        if not isinstance(writer, asyncio.Task) or writer.done():
            return  # written at once
        try:
            await within(writer, FAREWELL_SECONDS)
        except (Exception, asyncio.CancelledError):
            logger.debug("distreload: the server cancelled a stream whose client is not reading")


class StreamHub:
    """All open streams of one app in this process, written together by one broadcast."""

    def __init__(
        self, *, heartbeat_interval: float = 15.0, on_reload: Callable[[Reload], Any] | None = None
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.closing = False
        self._on_reload = on_reload
        self._streams: set[Stream] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        # Told of each stream that was added once its request is over (the endpoint's page reports).
        self.on_close: Callable[[Stream], None] | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def stream(self, send: Send) -> Stream:
        """A stream for the running request (its task and context), not yet registered: see ``add``."""
        return Stream(self, send)

    def add(self, stream: Stream, *, client_ahead: ClusterVersion | None = None) -> None:
        """Register ``stream`` for what the hub writes; ``client_ahead``: a version its client already
        holds that this worker has not reached (the client came from a worker further on)."""
        stream.client_ahead = client_ahead
        self._streams.add(stream)
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat())

    def open(self, send: Send, *, client_ahead: ClusterVersion | None = None) -> Stream:
        """Register the stream of the running request (``stream`` and ``add`` at once)."""
        stream = Stream(self, send)
        self.add(stream, client_ahead=client_ahead)
        return stream

    def discard(self, stream: Stream) -> None:
        self._streams.discard(stream)

    def closed(self, stream: Stream) -> None:
        """The request of ``stream`` is over."""
        self._streams.discard(stream)
        if self.on_close is not None:
            self.on_close(stream)

    def broadcast(self, body: bytes) -> None:
        self._write_all(list(self._streams), body)

    def _write_all(self, streams: Iterable[Stream], body: bytes, *, last: bool = False) -> None:
        """Write ``body`` to ``streams`` (not the hub's set itself: a stream given up on the way leaves it):
        one task for all (see ``_write_each``)."""
        ready = [stream for stream in streams if stream._take(body, last)]
        if ready:
            _start(_write_each(ready, body, not last))

    def deliver(self, reload: Reload) -> None:
        """A new version reached this worker (called by the broker): tell every stream whose client does
        not have it yet, then the app."""
        behind = []
        for stream in self._streams:
            ahead = stream.client_ahead
            if ahead is not None:
                if not ahead.is_behind(reload.version):
                    continue  # the worker is catching up with what this client already has
                stream.client_ahead = None
            behind.append(stream)
        self._write_all(behind, reload_event(reload))
        if self._on_reload is not None:
            self._on_reload(reload)

    def close_all(self, reason: str = "shutdown") -> None:
        """End every stream now, so a server that is stopping does not wait for open pages."""
        self.closing = True
        farewell = shutdown_event(reason)
        streams, self._streams = self._streams, set()
        self._write_all(streams, farewell, last=True)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None

    async def _beat(self) -> None:
        # One timer for every stream: keeps proxies from timing the streams out.
        while self._streams:
            await asyncio.sleep(self.heartbeat_interval)
            self.broadcast(HEARTBEAT)

"""The open event streams of one app in this worker, and how an event reaches all of them at once.

An open stream costs no task, queue or timer of its own while nothing happens: its request coroutine parks
in ``receive()``, which the server wakes only on disconnect. When the hub has something to say, each stream
gets a short task that awaits the server's ``send`` (whatever awaitable the server hands back, as ASGI
asks), created in the stream's own request context, so a request-id or tracing middleware sees the write as
part of that stream's request, not of whatever triggered the reload. A client that stops reading holds up
only its own task; what is said to it meanwhile queues behind, up to a limit.

When the hub ends a stream (shutdown, a failed write, a client too far behind), it writes the last message
and then wakes the parked request coroutine by cancelling its task; the coroutine takes that as the end of
the stream and returns normally, so no server is left waiting for a response that would never finish.
When the server cancels the request instead (it is stopping, and done waiting), the stream still says
goodbye (``event: shutdown``, the last body) before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.types import Message, Receive, Send

from .protocol import Reload

logger = logging.getLogger(__name__)

HEARTBEAT = b": heartbeat\n\n"
# A client whose write has waited this long (its connection's buffers are full: it stopped reading) is given
# up when there is more to say to it; so is one with this many messages queued, whatever the time.
STALL_SECONDS = 30.0
MAX_BACKLOG = 1000
# The longest a server that cancels an open stream (it is stopping) is held up while the page is told why.
FAREWELL_SECONDS = 0.5


if sys.version_info >= (3, 12):

    def _start_write(
        loop: asyncio.AbstractEventLoop, write: Coroutine[Any, Any, None], context: contextvars.Context
    ) -> asyncio.Task[None]:
        # Eager: a write the server finishes at once (the usual case) completes here, without a trip
        # through the loop; one that has to wait goes on as an ordinary task.
        return asyncio.Task(write, loop=loop, context=context, eager_start=True)

else:

    def _start_write(
        loop: asyncio.AbstractEventLoop, write: Coroutine[Any, Any, None], context: contextvars.Context
    ) -> asyncio.Task[None]:
        return loop.create_task(write, context=context)


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


class Stream:
    """One open event-stream response."""

    __slots__ = (
        "_send",
        "_context",
        "_task",
        "_loop",
        "_hub",
        "_writer",
        "_backlog",
        "_parked",
        "_ending",
        "_released",
        "_waiting_since",
        "__weakref__",
    )

    def __init__(self, hub: StreamHub, send: Send) -> None:
        self._hub = hub
        self._send = send
        self._context = contextvars.copy_context()
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._writer: asyncio.Task[None] | None = None  # the write in flight, if it has to wait
        self._backlog: list[Message] | None = None  # not None while a write is in flight
        self._parked = False
        self._ending = False  # no more writes: the last one is queued, or the stream is given up
        self._released = False  # the parked request coroutine was told to return
        self._waiting_since = 0.0  # when the write in flight was handed to the server

    def write(self, body: bytes, *, last: bool = False) -> None:
        """Queue ``body`` for this stream; ``last`` ends the response after it."""
        if self._ending:
            return
        message: Message = {"type": "http.response.body", "body": body, "more_body": not last}
        if last:
            self._ending = True
        if self._backlog is not None:
            waited = self._loop.time() - self._waiting_since
            if waited > STALL_SECONDS or len(self._backlog) >= MAX_BACKLOG:
                logger.debug(
                    "distreload: a client stopped reading its event stream (a write waited %.0f s); "
                    "dropping the stream",
                    waited,
                )
                self._backlog.clear()
                self._end()
                return
            self._backlog.append(message)
            return
        self._backlog = []
        self._waiting_since = self._loop.time()
        writer = _start_write(self._loop, self._drain(message), self._context)
        if not writer.done():
            self._writer = writer

    async def _drain(self, message: Message) -> None:
        try:
            await self._send(message)
            while self._backlog:
                self._waiting_since = self._loop.time()
                await self._send(self._backlog.pop(0))
        except Exception as exc:  # the server refused the write: the client is gone or the response broken
            logger.debug("distreload: event stream write failed (%s); dropping the stream", exc)
            self._end()
        finally:
            self._backlog = None
            self._writer = None
        if self._ending:
            self._end()

    def _end(self) -> None:
        """Stop writing to this stream and let its request coroutine return (once)."""
        self._ending = True
        self._hub.discard(self)
        if self._parked and not self._released and self._task is not None:
            self._released = True
            self._task.cancel()

    async def park(self, receive: Receive) -> None:
        """Hold the request until the client leaves or the hub ends the stream."""
        task = self._task
        self._parked = True
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except asyncio.CancelledError:
            self._parked = False
            if self._released and task is not None and task.uncancel() == 0:
                return  # the hub ended the stream: the response is complete, or the client gone
            if not self._released:
                # Not the hub's doing: the server cancels the request, as servers do when they stop (daphne
                # at once, uvicorn and hypercorn when their graceful timeout runs out). Tell the page why
                # its stream ends, within a bound, then let the cancellation through.
                await self._say_farewell()
            raise
        finally:
            self._parked = False
            self._hub.discard(self)

    async def _say_farewell(self) -> None:
        self._hub.discard(self)
        self.write(shutdown_event("shutdown"), last=True)  # after whatever is already on its way
        writer = self._writer
        if writer is not None and not writer.done():
            done, _ = await asyncio.wait({writer}, timeout=FAREWELL_SECONDS)
            if not done:
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

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, send: Send) -> Stream:
        """Register the stream of the running request (its first bytes are already sent)."""
        stream = Stream(self, send)
        self._streams.add(stream)
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat())
        return stream

    def discard(self, stream: Stream) -> None:
        self._streams.discard(stream)

    def broadcast(self, body: bytes) -> None:
        for stream in list(self._streams):
            stream.write(body)

    def deliver(self, reload: Reload) -> None:
        """A new version reached this worker (called by the broker): tell every stream, then the app."""
        self.broadcast(reload_event(reload))
        if self._on_reload is not None:
            self._on_reload(reload)

    def close_all(self, reason: str = "shutdown") -> None:
        """End every stream now, so a server that is stopping does not wait for open pages."""
        self.closing = True
        farewell = shutdown_event(reason)
        streams, self._streams = list(self._streams), set()
        for stream in streams:
            stream.write(farewell, last=True)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None

    async def _beat(self) -> None:
        # One timer for every stream: keeps proxies from timing the streams out.
        while self._streams:
            await asyncio.sleep(self.heartbeat_interval)
            self.broadcast(HEARTBEAT)

"""The open event streams of one app in this worker, and how an event reaches all of them at once.

Each stream is written by its own request's task, so every write runs in that request's context (a
request-id or tracing middleware sees it as part of the stream's request, not of whatever triggered the
reload) and awaits whatever the server's ``send`` hands back, as ASGI asks. While nothing happens the request
waits on a future of its own; the only other thing an open stream holds is a small task waiting in the
server's ``receive()``, the one way a server tells of a disconnect. An event is one pass over the streams
that queues it and resolves each stream's future: no task, queue or timer is made per event. A client that
stops reading holds up only its own request; what is said to it meanwhile queues behind, up to a limit,
after which it is given up.

A stream ends when its last message is written (shutdown: ``event: shutdown``), when a write fails, or when
the client leaves; the request then returns normally, so no server is left waiting for a response that
would never finish. When the server cancels the request instead (it is stopping, and done waiting), the
stream still says goodbye (``event: shutdown``, the last body), within a bound, before the cancellation
goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import Message, Receive, Send

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


class Stream:
    """One open event-stream response, written by its own request's task."""

    __slots__ = (
        "client_ahead",
        "_send",
        "_hub",
        "_loop",
        "_task",
        "_queue",
        "_doorbell",
        "_ending",
        "_given_up",
        "_writing_since",
        "_receiving",
        "__weakref__",
    )

    def __init__(self, hub: StreamHub, send: Send, client_ahead: ClusterVersion | None = None) -> None:
        # A version the client already holds that this worker had not reached when the stream opened.
        self.client_ahead = client_ahead
        self._hub = hub
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._queue: list[tuple[bytes, bool]] = []  # (body, more_body), waiting for the request's task
        self._doorbell: asyncio.Future[None] | None = None  # resolved to wake the waiting request
        self._ending = False  # no more writes: the last one is queued, or the stream is given up
        self._given_up = False  # the hub cancelled a write stuck behind a client that stopped reading
        self._writing_since: float | None = None  # when the write in flight was handed to the server
        self._receiving: asyncio.Future[Message] | None = None  # the wait in the server's receive()

    def write(self, body: bytes, *, last: bool = False) -> None:
        """Queue ``body`` for this stream; ``last`` ends the response after it."""
        if self._ending:
            return
        if self._queue and self._stalled():
            self._give_up()
            return
        self._queue.append((body, not last))
        if last:
            self._ending = True
        self._ring()

    def _stalled(self) -> bool:
        writing_since = self._writing_since
        waited = 0.0 if writing_since is None else self._loop.time() - writing_since
        if waited <= STALL_SECONDS and len(self._queue) < MAX_BACKLOG:
            return False
        logger.debug(
            "distreload: a client stopped reading its event stream (a write waited %.0f s); "
            "dropping the stream",
            waited,
        )
        return True

    def _give_up(self) -> None:
        """A write is stuck behind a client that stopped reading: end the request where it waits."""
        self._ending = self._given_up = True
        self._queue.clear()
        self._hub.discard(self)
        if self._task is not None:
            self._task.cancel()

    async def serve(self, receive: Receive) -> None:
        """Write what the hub queues, in this request's task, until the stream ends or the client leaves."""
        try:
            await self._write_until_done(receive)
        except asyncio.CancelledError:
            task = self._task
            if self._given_up and task is not None and task.uncancel() == 0:
                return  # the hub gave the stream up: the client is not reading
            if not self._given_up:
                # Not the hub's doing: the server cancels the request, as servers do when they stop (daphne
                # at once, uvicorn and hypercorn when their graceful timeout runs out). Tell the page why
                # its stream ends, within a bound, then let the cancellation through.
                await self._say_farewell()
            raise
        except Exception as exc:  # the server refused a write: the client is gone or the response broken
            logger.debug("distreload: event stream write failed (%s); dropping the stream", exc)
        finally:
            self._ending = True
            self._hub.discard(self)
            receiving = self._receiving
            if receiving is not None:
                receiving.remove_done_callback(self._ring)
                receiving.cancel()

    def _listen(self, receive: Receive) -> asyncio.Future[Message]:
        """Wait in the server's ``receive()`` (the one way it tells of a disconnect); ring when it answers."""
        receiving = self._receiving = asyncio.ensure_future(receive())
        receiving.add_done_callback(self._ring)
        return receiving

    async def _write_until_done(self, receive: Receive) -> None:
        queue = self._queue
        receiving = self._listen(receive)
        while True:
            while queue:
                body, more_body = queue.pop(0)
                self._writing_since = self._loop.time()
                await self._send({"type": "http.response.body", "body": body, "more_body": more_body})
                self._writing_since = None
                if not more_body:
                    # The response is complete. One turn of the loop before returning lets the server flush
                    # it: daphne, stopping, closes at once the connections of requests that have returned.
                    await asyncio.sleep(0)
                    return
            if receiving.done():
                if receiving.cancelled() or receiving.result()["type"] == "http.disconnect":
                    return
                receiving = self._listen(receive)  # the request itself (its empty body): listen on
                continue
            self._doorbell = self._loop.create_future()
            await self._doorbell
            self._doorbell = None

    def _ring(self, _: object = None) -> None:
        doorbell = self._doorbell
        if doorbell is not None and not doorbell.done():
            doorbell.set_result(None)

    async def _say_farewell(self) -> None:
        self._hub.discard(self)
        if self._ending and not self._queue:
            return  # the last message is already written (or being written)
        try:
            await within(self._send_farewell(), FAREWELL_SECONDS)
        except (Exception, asyncio.CancelledError):
            logger.debug("distreload: the server cancelled a stream whose client is not reading")

    async def _send_farewell(self) -> None:
        queue, self._queue = self._queue, []
        if not self._ending:
            queue.append((shutdown_event("shutdown"), False))
        for body, more_body in queue:
            await self._send({"type": "http.response.body", "body": body, "more_body": more_body})


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

    def open(self, send: Send, *, client_ahead: ClusterVersion | None = None) -> Stream:
        """Register the stream of the running request; ``client_ahead``: a version its client already
        holds that this worker has not reached (the client came from a worker further on)."""
        stream = Stream(self, send, client_ahead)
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
        """A new version reached this worker (called by the broker): tell every stream whose client does
        not have it yet, then the app."""
        body = reload_event(reload)
        for stream in list(self._streams):
            ahead = stream.client_ahead
            if ahead is not None:
                if not ahead.is_behind(reload.version):
                    continue  # the worker is catching up with what this client already has
                stream.client_ahead = None
            stream.write(body)
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

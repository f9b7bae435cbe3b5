"""The stream hub: how events reach every open stream, through servers' ``send`` of every shape."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import pytest
from starlette.types import Message

from distreload import hub as hub_module
from distreload.hub import HEARTBEAT, StreamHub, shutdown_event
from distreload.protocol import ClusterVersion, Reload

pytestmark = pytest.mark.anyio

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


class Ready:
    """An awaitable that is not a coroutine, made by a generator."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from asyncio.sleep(0).__await__()


class PlainIterator:
    """What granian's ``send`` hands back: an awaitable whose ``__await__`` is itself, a plain iterator (no
    ``send``, no ``throw``), here one that waits a turn of the loop before it is done."""

    def __init__(self) -> None:
        self.waited = False

    def __await__(self) -> PlainIterator:
        return self

    def __iter__(self) -> PlainIterator:
        return self

    def __next__(self) -> None:
        if self.waited:
            raise StopIteration
        self.waited = True
        return None  # a bare yield: the task runs again on the loop's next turn


class FakeServer:
    """One request on a server: ``send`` records (and can stall or fail), ``receive`` parks until told."""

    def __init__(self, *, awaitable: Callable[[], Awaitable[None]] | None = None) -> None:
        self.bodies: list[bytes] = []
        self.request_ids: list[str] = []
        self.finished = False
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.disconnect = asyncio.Event()
        self._awaitable = awaitable

    def send(self, message: Message) -> Awaitable[None]:
        if self._awaitable is not None:  # record now, hand back the server's own kind of awaitable
            self._record(message)
            return self._awaitable()
        return self._send(message)

    async def _send(self, message: Message) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("connection reset by peer")
        self._record(message)

    def _record(self, message: Message) -> None:
        self.bodies.append(message["body"])
        self.request_ids.append(REQUEST_ID.get())
        self.finished = not message.get("more_body", False)

    async def receive(self) -> Message:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}


def open_stream(
    hub: StreamHub, server: FakeServer, request_id: str = "r", client_ahead: ClusterVersion | None = None
) -> asyncio.Task[None]:
    """Run a request that opens a stream and parks in it, as the endpoint does."""

    async def request() -> None:
        REQUEST_ID.set(request_id)
        await hub.open(server.send, client_ahead=client_ahead).serve(server.receive)

    return asyncio.ensure_future(request())


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def reload(number: int) -> Reload:
    return Reload(ClusterVersion("0123456789abcdef", number))


@pytest.mark.parametrize("shape", ["coroutine", "awaitable object", "future", "plain iterator"])
async def test_every_reload_arrives_whatever_awaitable_send_returns(shape: str) -> None:
    """Including reloads published long after the heartbeats began (granian's send is no coroutine)."""

    def done_future() -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    awaitable = {
        "coroutine": None,
        "awaitable object": Ready,
        "future": done_future,
        "plain iterator": PlainIterator,
    }[shape]
    hub = StreamHub(heartbeat_interval=0.01)
    server = FakeServer(awaitable=awaitable)
    task = open_stream(hub, server)
    await settle()
    await asyncio.sleep(0.05)
    for number in (1, 2, 3):
        hub.deliver(reload(number))
        await asyncio.sleep(0.03)
    assert server.bodies.count(HEARTBEAT) >= 3
    reloads = [body for body in server.bodies if body.startswith(b"event: reload")]
    assert [body.split(b"\n")[1] for body in reloads] == [
        b"id: 0123456789abcdef-1",
        b"id: 0123456789abcdef-2",
        b"id: 0123456789abcdef-3",
    ]
    hub.close_all()
    await asyncio.wait_for(task, 2)
    assert server.finished and server.bodies[-1] == shutdown_event("shutdown")


async def test_a_client_from_a_worker_further_on_is_not_told_again_what_it_has() -> None:
    hub = StreamHub(heartbeat_interval=60)
    behind, ahead = FakeServer(), FakeServer()
    tasks = [open_stream(hub, behind), open_stream(hub, ahead, client_ahead=reload(2).version)]
    await settle()
    for number in (1, 2, 3):
        hub.deliver(reload(number))
        await settle()
    ids = [[body.split(b"\n")[1] for body in server.bodies] for server in (behind, ahead)]
    assert ids[0] == [b"id: 0123456789abcdef-1", b"id: 0123456789abcdef-2", b"id: 0123456789abcdef-3"]
    assert ids[1] == [b"id: 0123456789abcdef-3"]
    hub.close_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)


async def test_writes_run_in_the_streams_own_request_context() -> None:
    hub = StreamHub(heartbeat_interval=60)
    servers = [FakeServer(), FakeServer()]
    tasks = [open_stream(hub, server, request_id=f"stream-{i}") for i, server in enumerate(servers)]
    await settle()

    async def publishing_request() -> None:
        REQUEST_ID.set("the-publisher")
        hub.deliver(reload(1))

    await asyncio.ensure_future(publishing_request())
    await settle()
    assert [server.request_ids for server in servers] == [["stream-0"], ["stream-1"]]
    hub.close_all()
    await asyncio.gather(*tasks)


async def test_a_failing_write_ends_that_stream_visibly_and_lets_its_request_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = StreamHub(heartbeat_interval=60)
    broken, healthy = FakeServer(), FakeServer()
    broken_task, healthy_task = open_stream(hub, broken), open_stream(hub, healthy)
    await settle()
    broken.fail = True
    with caplog.at_level(logging.DEBUG, logger="distreload.hub"):
        hub.deliver(reload(1))
        await asyncio.wait_for(broken_task, 2)  # not left parked, deaf, for ever
    assert len(hub) == 1 and "write failed" in caplog.text
    assert broken_task.exception() is None  # the request returned normally
    hub.deliver(reload(2))
    await settle()
    assert len([b for b in healthy.bodies if b.startswith(b"event: reload")]) == 2
    hub.close_all()
    await healthy_task


async def test_a_client_that_stops_reading_delays_no_one_and_is_given_up_when_stalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "STALL_SECONDS", 0.2)
    hub = StreamHub(heartbeat_interval=60)
    slow, fast = FakeServer(), FakeServer()
    slow.gate = asyncio.Event()
    slow_task, fast_task = open_stream(hub, slow), open_stream(hub, fast)
    await settle()
    for number in range(1, 4):
        hub.deliver(reload(number))
    await settle()
    assert len(fast.bodies) == 3 and slow.bodies == []
    slow.gate.set()  # the client reads again: everything arrives, in order
    await settle(20)
    assert [b.split(b"\n")[1] for b in slow.bodies] == [b.split(b"\n")[1] for b in fast.bodies]
    slow.gate.clear()
    for number in range(4, 104):  # a burst within one turn of the loop is no stall
        hub.deliver(reload(number))
    await settle()
    assert len(hub) == 2 and len(fast.bodies) == 103
    await asyncio.sleep(0.3)
    hub.deliver(reload(104))
    assert len(hub) == 1  # the stalled one was given up; the other goes on
    await settle()
    assert len(fast.bodies) == 104
    await asyncio.wait_for(slow_task, 2)
    hub.close_all()
    await fast_task


async def test_closing_ends_streams_whose_receive_never_returns() -> None:
    """Some servers never answer ``receive()`` once the response is complete: the hub still ends it."""
    hub = StreamHub(heartbeat_interval=60)
    servers = [FakeServer() for _ in range(5)]
    tasks = [open_stream(hub, server) for server in servers]
    await settle()
    hub.close_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert all(server.finished for server in servers) and len(hub) == 0
    assert hub.closing


async def test_a_server_that_cancels_the_request_gets_the_farewell_written_then_its_cancellation() -> None:
    """A stopping server cancels open requests (daphne at once, uvicorn and hypercorn after their graceful
    timeout): the page still learns why its stream ends, and the server's cancellation is not overruled."""
    hub = StreamHub(heartbeat_interval=60)
    server = FakeServer()
    task = open_stream(hub, server)
    await settle()
    hub.deliver(reload(1))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(hub) == 0
    assert [body.split(b"\n")[0] for body in server.bodies] == [b"event: reload", b"event: shutdown"]
    assert server.finished and server.bodies[-1] == shutdown_event("shutdown")


async def test_a_client_that_stopped_reading_holds_a_stopping_server_up_only_for_the_farewell_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "FAREWELL_SECONDS", 0.1)
    hub = StreamHub(heartbeat_interval=60)
    stuck = FakeServer()
    stuck.gate = asyncio.Event()
    task = open_stream(hub, stuck)
    await settle()
    hub.deliver(reload(1))  # its write waits: the client's buffers are full
    await settle()
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert 0.1 <= loop.time() - cancelled_at < 0.5 and stuck.bodies == []
    stuck.gate.set()  # the client reads again, too late: the server has cut the response
    await settle()
    assert stuck.bodies == [] and len(hub) == 0


async def test_a_client_that_leaves_is_forgotten_and_on_reload_runs_once_per_reload() -> None:
    told: list[Reload] = []
    hub = StreamHub(heartbeat_interval=60, on_reload=told.append)
    server = FakeServer()
    task = open_stream(hub, server)
    await settle()
    assert len(hub) == 1
    server.disconnect.set()
    await asyncio.wait_for(task, 2)
    assert len(hub) == 0
    hub.deliver(reload(1))
    assert told == [reload(1)]


async def test_an_idle_stream_holds_no_task_but_its_request() -> None:
    """What an open stream costs while nothing happens: its request's task waiting in receive(), and no
    other task or pending callback of its own (the hub's one heartbeat timer serves every stream)."""
    hub = StreamHub(heartbeat_interval=60)
    before = asyncio.all_tasks()
    servers = [FakeServer() for _ in range(20)]
    tasks = [open_stream(hub, server) for server in servers]
    await settle()
    hub.deliver(reload(1))  # a write made and finished leaves nothing behind either
    await settle()
    added = asyncio.all_tasks() - before
    assert added == set(tasks) | {hub._heartbeat_task}
    assert all(server.bodies and server.bodies[-1].startswith(b"event: reload") for server in servers)
    hub.close_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)


async def test_a_write_is_made_in_deliver_where_eager_tasks_exist_else_on_the_next_turn() -> None:
    hub = StreamHub(heartbeat_interval=60)
    server = FakeServer()
    task = open_stream(hub, server, request_id="the-stream")
    await settle()
    REQUEST_ID.set("the-publisher")
    hub.deliver(reload(1))
    if sys.version_info >= (3, 12):
        assert len(server.bodies) == 1  # an eager task: no turn of the loop needed
    else:
        assert server.bodies == []
        await asyncio.sleep(0)
        assert len(server.bodies) == 1
    assert server.request_ids == ["the-stream"] and REQUEST_ID.get() == "the-publisher"
    hub.close_all()
    await asyncio.wait_for(task, 2)


async def test_a_send_wrappers_timeout_cancels_only_its_own_write() -> None:
    """A middleware may wrap send in asyncio.timeout: what the timeout cancels is the write's own task,
    never the task that delivered the reload (in a worker, the one that listens to Redis)."""
    hub = StreamHub(heartbeat_interval=60)
    stalled, healthy = FakeServer(), FakeServer()
    stalled.gate = asyncio.Event()  # never opened: this client stopped reading

    async def send_within_a_timeout(message: Message) -> None:
        async with asyncio.timeout(0.05):
            await stalled.send(message)

    async def stalled_request() -> None:
        await hub.open(send_within_a_timeout).serve(stalled.receive)

    stalled_task = asyncio.ensure_future(stalled_request())
    healthy_task = open_stream(hub, healthy)
    await settle()

    async def deliver_then_carry_on() -> str:
        hub.deliver(reload(1))
        await asyncio.sleep(0.2)  # past the send's timeout
        return "carried on"

    assert await deliver_then_carry_on() == "carried on"
    await asyncio.wait_for(stalled_task, 2)  # the timed-out write ended its stream and request
    assert stalled_task.exception() is None and stalled.bodies == []
    assert len(hub) == 1 and healthy.bodies[-1].startswith(b"event: reload")
    hub.close_all()
    await asyncio.wait_for(healthy_task, 2)


async def test_a_write_the_server_makes_wait_goes_on_in_the_request_context_with_later_ones_behind() -> None:
    hub = StreamHub(heartbeat_interval=60)
    server = FakeServer()
    server.gate = asyncio.Event()
    task = open_stream(hub, server, request_id="the-stream")
    await settle()

    async def publishing_request() -> None:
        REQUEST_ID.set("the-publisher")
        for number in (1, 2, 3):
            hub.deliver(reload(number))

    await asyncio.ensure_future(publishing_request())
    await settle()
    assert server.bodies == []
    server.gate.set()
    await settle()
    assert [body.split(b"\n")[1] for body in server.bodies] == [
        b"id: 0123456789abcdef-1",
        b"id: 0123456789abcdef-2",
        b"id: 0123456789abcdef-3",
    ]
    assert server.request_ids == ["the-stream"] * 3
    hub.close_all()
    await asyncio.wait_for(task, 2)
    assert server.finished


async def test_a_client_that_leaves_while_a_write_waits_ends_its_request_at_once() -> None:
    """The disconnect is noticed when the server says it, not at the next write or heartbeat; the write
    that waited on the dead connection is stopped."""
    hub = StreamHub(heartbeat_interval=60)
    server = FakeServer()
    server.gate = asyncio.Event()
    task = open_stream(hub, server)
    await settle()
    before = asyncio.all_tasks()
    hub.deliver(reload(1))
    await settle()
    writers = asyncio.all_tasks() - before
    assert len(writers) == 1  # the waiting write goes on in a task of its own
    server.disconnect.set()
    await settle()
    assert task.done() and task.exception() is None and len(hub) == 0
    assert all(writer.done() for writer in writers)
    server.gate.set()
    await settle()
    assert server.bodies == []


async def test_a_write_that_fails_after_waiting_ends_that_stream_and_lets_its_request_return() -> None:
    hub = StreamHub(heartbeat_interval=60)
    server = FakeServer()
    server.gate = asyncio.Event()
    task = open_stream(hub, server)
    await settle()
    hub.deliver(reload(1))
    hub.deliver(reload(2))
    server.fail = True
    server.gate.set()
    await asyncio.wait_for(task, 2)
    assert task.exception() is None and len(hub) == 0 and server.bodies == []


async def test_a_write_made_while_a_send_runs_is_queued_behind_it() -> None:
    """A send that, in passing, makes the hub write again (a middleware that logs through the hub, say)
    does not start a second writer on the same response."""
    hub = StreamHub(heartbeat_interval=60)
    server = FakeServer()
    original_record = server._record

    def record_and_broadcast(message: Message) -> None:
        original_record(message)
        if message["body"].startswith(b"event: reload"):
            hub.broadcast(b": nested\n\n")

    server._record = record_and_broadcast  # type: ignore[method-assign]
    task = open_stream(hub, server)
    await settle()
    hub.deliver(reload(1))
    await settle()
    assert [body.split(b"\n")[0] for body in server.bodies] == [b"event: reload", b": nested"]
    hub.close_all()
    await asyncio.wait_for(task, 2)


async def test_a_send_that_raises_cancelled_at_once_drops_its_stream_and_no_other() -> None:
    """A server whose send raises CancelledError (its way of saying the response is gone) ends that
    stream without stopping the delivery to the others."""
    hub = StreamHub(heartbeat_interval=60)
    broken, healthy = FakeServer(), FakeServer()

    def cancelled_send(message: Message) -> Awaitable[None]:
        async def refuse() -> None:
            raise asyncio.CancelledError

        return refuse()

    async def broken_request() -> None:
        await hub.open(cancelled_send).serve(broken.receive)

    broken_task = asyncio.ensure_future(broken_request())
    healthy_task = open_stream(hub, healthy)
    await settle()
    hub.deliver(reload(1))
    hub.deliver(reload(2))
    await asyncio.wait_for(broken_task, 2)
    assert broken_task.exception() is None and len(hub) == 1
    assert len(healthy.bodies) == 2
    hub.close_all()
    await asyncio.wait_for(healthy_task, 2)


async def test_writes_the_server_takes_at_once_cost_no_task_and_each_waiting_one_keeps_one() -> None:
    """An event is one pass over the streams: a write the server takes at once is over in it; a write the
    server makes wait keeps a task of its own (and its request's context) while the streams after it are
    written without waiting for it."""
    hub = StreamHub(heartbeat_interval=60)
    servers = [FakeServer() for _ in range(20)]
    slow = (servers[4], servers[11])
    for server in slow:
        server.gate = asyncio.Event()
    tasks = [open_stream(hub, server, request_id=f"r{index}") for index, server in enumerate(servers)]
    await settle()
    before = asyncio.all_tasks()
    hub.deliver(reload(1))
    # No task per stream: one for the event (Python 3.11: its turn comes next), or one per write that
    # waits and one carrying on after it (eager, from 3.12).
    assert len(asyncio.all_tasks() - before) <= len(slow) + 1
    await settle()
    assert [len(server.bodies) for server in servers] == [0 if server in slow else 1 for server in servers]
    assert len(asyncio.all_tasks() - before) == len(slow)  # one per waiting write, none for the others
    hub.deliver(reload(2))  # queued behind the waiting writes, written at once to the others
    await settle()
    for server in slow:
        server.gate.set()
    await settle()
    assert asyncio.all_tasks() - before == set()
    for index, server in enumerate(servers):
        assert [body.split(b"\n")[1] for body in server.bodies] == [
            b"id: 0123456789abcdef-1",
            b"id: 0123456789abcdef-2",
        ]
        assert server.request_ids == [f"r{index}"] * 2
    hub.close_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert all(server.finished for server in servers)

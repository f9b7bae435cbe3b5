"""within(): a deadline on one await that never swallows a cancel."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from distreload.timeouts import within

pytestmark = pytest.mark.anyio


async def test_the_result_comes_back_in_time() -> None:
    assert await within(asyncio.sleep(0, result="done"), 1.0) == "done"


async def test_past_the_deadline_it_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        await within(asyncio.Event().wait(), 0.01)


async def test_a_loop_around_it_stops_when_cancelled_as_the_awaited_thing_finishes() -> None:
    """The shape of a worker's page writer: wait for a doorbell, do the work, wait again. A cancel that
    arrives in the same loop turn as the doorbell must end the loop (asyncio.wait_for on Python 3.11
    returned the doorbell's result instead, and the loop went on for ever)."""
    doorbell = asyncio.Event()
    rounds = 0

    async def writer() -> None:
        nonlocal rounds
        while True:
            with contextlib.suppress(TimeoutError):
                await within(doorbell.wait(), 5.0)
            doorbell.clear()
            rounds += 1

    task = asyncio.get_running_loop().create_task(writer())
    await asyncio.sleep(0)  # the writer waits at its doorbell
    doorbell.set()
    await asyncio.sleep(0)  # the doorbell's waiter is done; the writer is about to wake
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert done == {task} and task.cancelled()

"""A deadline on one await, the same on every Python distreload supports."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable``, or TimeoutError after ``seconds``.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancel that arrives just as the awaited thing
    finishes (CPython gh-86296, fixed in 3.12 by rebuilding it on ``asyncio.timeout``), so a loop around it
    (a worker's page writer, its subscription) went on after shutdown cancelled it, and the shutdown that
    awaited it never ended."""
    async with asyncio.timeout(seconds):
        return await awaitable

"""Waiting for something a real process, server or browser does in its own time: one poll loop for all."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    pump: Callable[[], None] | None = None,
) -> float:
    """Poll ``check`` until it is true and return the seconds it took; raise TimeoutError naming ``what``.

    Between tries, ``pump`` runs (a browser's event loop, a client's socket reads) or else the poll sleeps
    ``interval``. An error from ``check`` counts as "not yet" (a server still starting refuses connections)
    and the last one is reported on timeout.
    """
    started = time.monotonic()
    last_error: BaseException | None = None
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception as exc:
            last_error = exc
        if time.monotonic() - started >= timeout:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"{what}: not within {timeout:g} s{detail}")
        if pump is not None:
            pump()
        else:
            time.sleep(interval)

"""The worker's own exception for the page that asked: what the overlay shows when the page's server fails.

The browser client's check fetch (made before a reload or a morph) sends ``x-distreload-check``. For that
request only, a server error (status 500 and up) is answered with a JSON report of the exception that
caused it instead of whatever body the framework sent (FastAPI's plain "Internal Server Error", Django's
or Litestar's generic page): its type, message, the frames in the user's code and, for a template or
syntax error, the file and line. The report travels in the response to that request, so it reaches the page
whichever worker served it; no worker keeps it. Every other request, and every answer below 500, passes
through untouched and unbuffered.

Frameworks differ in where the exception goes, so three ways find it, in this order:

- it propagates out of the app (Starlette and FastAPI send their 500, then re-raise; a bare ASGI app
  raises before sending anything);
- it is being handled while the app sends its 500 (Litestar and Starlette answer inside their ``except``);
- it is logged with ``exc_info`` during the request (Django logs it from another thread, before it sends
  the response); log records are noted through the record factory, so a logger that does not propagate
  is seen too, and a context variable ties each record to the request it came from.
"""

from __future__ import annotations

import json
import linecache
import logging
import os
import site
import sys
import sysconfig
import traceback
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from starlette.types import Message, Receive, Scope, Send

CHECK_HEADER = b"x-distreload-check"
REPORT_CONTENT_TYPE = "application/vnd.distreload.error+json"
MAX_FRAMES = 12  # the innermost ones: where it went wrong
MAX_MESSAGE = 4000
MAX_CODE_LINE = 240
MAX_CAUSES = 3

ASGIAppCall = Callable[[Scope, Receive, Send], Awaitable[None]]

# The exceptions logged during a check request, for the request that logged them (None: not in one).
_logged_exceptions: ContextVar[list[BaseException] | None] = ContextVar(
    "distreload_logged_exceptions", default=None
)
_noting_logged_exceptions = False


def details_requested(scope: Scope) -> bool:
    """Whether this request is the client's check fetch, which is told the exception behind an error."""
    # A loop, not any(...): this runs for every request of the app, and takes two thirds of any()'s time.
    for name, _ in scope["headers"]:  # noqa: SIM110
        if name == CHECK_HEADER:
            return True
    return False


async def serve_reporting_errors(app: ASGIAppCall, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app`` for the client's check request: a server error caused by an exception is answered with
    the exception's report (same status); any other answer goes out as the app sends it."""
    if not _from_the_page_itself(scope):
        await app(scope, receive, send)
        return
    note_logged_exceptions()
    response = _HeldErrorResponse(send)
    noted = _logged_exceptions.set([])
    try:
        try:
            await app(scope, receive, response.send)
        except Exception as exc:
            if response.passed_through:
                raise  # an answer below 500 is already out: the server deals with the rest
            await response.finish(exc)
            raise  # the server logs it, as it would without distreload
        await response.finish(None)
    finally:
        _logged_exceptions.reset(noted)


def _from_the_page_itself(scope: Scope) -> bool:
    """Whether a browser says the request came from a page of this origin (the client's check does).
    Another site's page cannot send the header without the app's CORS leave, but an app that allows any
    header from any origin would let it read the tracebacks; a request from outside a browser (no
    ``sec-fetch-site``) is a developer's own."""
    for name, value in scope["headers"]:
        if name == b"sec-fetch-site":
            return value in (b"same-origin", b"none")
    return True


class _HeldErrorResponse:
    """One check request's answer: held back from a status of 500 on, until the app is done with it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.passed_through = False
        self._held: list[Message] = []
        self._status = 0
        self._handled_while_sending: BaseException | None = None

    async def send(self, message: Message) -> None:
        if self.passed_through:
            await self._send(message)
            return
        if message["type"] == "http.response.start" and not self._held:
            if message["status"] < 500:
                self.passed_through = True
                await self._send(message)
                return
            self._status = message["status"]
            # The exception a framework is answering from inside its ``except``, if it is.
            self._handled_while_sending = sys.exc_info()[1]
        self._held.append(message)

    async def finish(self, raised: BaseException | None) -> None:
        if self.passed_through:
            return
        logged = _logged_exceptions.get() or []
        cause = raised or self._handled_while_sending or (logged[-1] if logged else None)
        if cause is None:
            for message in self._held:  # an error status the app chose itself: its own answer
                await self._send(message)
            return
        body = json.dumps(describe(cause)).encode()
        await self._send(
            {
                "type": "http.response.start",
                "status": self._status or 500,
                "headers": [
                    (b"content-type", REPORT_CONTENT_TYPE.encode() + b"; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": body})


def note_logged_exceptions() -> None:
    """From now on, note every exception logged during a check request (installed once per process)."""
    global _noting_logged_exceptions
    if _noting_logged_exceptions:
        return
    _noting_logged_exceptions = True
    make_record = logging.getLogRecordFactory()

    def noting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        logged = _logged_exceptions.get()
        if logged is not None and record.exc_info and record.exc_info[1] is not None:
            logged.append(record.exc_info[1])
        return record

    logging.setLogRecordFactory(noting_factory)


# --- the report --------------------------------------------------------------------------------------


def describe(exc: BaseException) -> dict[str, Any]:
    """What the overlay shows of ``exc``: its type, message, what caused it, where in a template or source
    file it lies (if it says), and the frames of its traceback that are in the user's code, innermost last.
    A group of one exception (a task group's) is described by that exception."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    frames = traceback.extract_tb(exc.__traceback__)
    own = [frame for frame in frames if is_user_code(frame.filename)]
    return {
        "type": type_name(exc),
        "message": str(exc)[:MAX_MESSAGE],
        "causes": causes(exc),
        "location": location(exc),
        "frames": [
            {
                "file": shown_path(frame.filename),
                "line": frame.lineno,
                "function": frame.name,
                "code": (frame.line or "").strip()[:MAX_CODE_LINE],
            }
            for frame in own[-MAX_FRAMES:]
        ],
        "other_frames": len(frames) - len(own[-MAX_FRAMES:]),
    }


def type_name(exc: BaseException) -> str:
    """The exception's name as Python's own traceback prints it: qualified unless built in."""
    kind = type(exc)
    if kind.__module__ in ("builtins", "__main__"):
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def causes(exc: BaseException) -> list[str]:
    """What ``exc`` was explicitly raised from (``raise ... from``), nearest first, as one line each: a
    wrapper's message often says less than what it wraps."""
    found: list[str] = []
    cause = exc.__cause__
    while cause is not None and len(found) < MAX_CAUSES:
        found.append(f"{type_name(cause)}: {cause}"[:MAX_MESSAGE] if str(cause) else type_name(cause))
        cause = cause.__cause__
    return found


def location(exc: BaseException) -> dict[str, Any] | None:
    """The template (or source) file and line an exception points at, from it or what caused it:
    Django's ``template_debug``, or the ``filename``/``lineno`` of Jinja2's TemplateSyntaxError and
    Python's SyntaxError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _django_template_location(current) or _file_and_line(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def _django_template_location(exc: BaseException) -> dict[str, Any] | None:
    debug = getattr(exc, "template_debug", None)
    if not isinstance(debug, dict) or not isinstance(debug.get("line"), int):
        return None
    line: int = debug["line"]
    code = next((text for number, text in debug.get("source_lines", ()) if number == line), "")
    return {"file": shown_path(str(debug.get("name", ""))), "line": line, "code": _code(code)}


def _file_and_line(exc: BaseException) -> dict[str, Any] | None:
    line = getattr(exc, "lineno", None)
    file = getattr(exc, "filename", None) or getattr(exc, "name", None)
    if not isinstance(line, int) or not isinstance(file, str) or not file:
        return None
    source = getattr(exc, "source", None)  # Jinja2 keeps the template's text
    if isinstance(source, str):
        lines = source.splitlines()
        code = lines[line - 1] if 0 < line <= len(lines) else ""
    else:
        code = getattr(exc, "text", None) or linecache.getline(file, line)  # SyntaxError has its line
    return {"file": shown_path(file), "line": line, "code": _code(str(code))}


def _code(text: str) -> str:
    return text.strip()[:MAX_CODE_LINE]


def _library_roots() -> tuple[str, ...]:
    """Where code that is not the user's lives: the standard library, installed packages, distreload."""
    paths = sysconfig.get_paths()
    roots = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib") if name in paths}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if isinstance(user_site, str):
        roots.add(user_site)
    roots.add(str(Path(__file__).resolve().parent))
    return tuple(os.path.normcase(os.path.join(os.path.realpath(root), "")) for root in roots if root)


_LIBRARY_ROOTS = _library_roots()


def is_user_code(filename: str) -> bool:
    """Whether a frame's file is the user's: not the standard library's, an installed package's or
    distreload's, and a real file (not ``<frozen ...>`` or ``<string>``)."""
    if not filename or filename.startswith("<"):
        return False
    return not os.path.normcase(os.path.realpath(filename)).startswith(_LIBRARY_ROOTS)  # Windows: any case


def shown_path(filename: str) -> str:
    """A file as the user knows it: relative to the working directory when it is under it."""
    if not filename or filename.startswith("<"):
        return filename
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive, on Windows
        return filename
    return filename if relative.startswith(os.pardir) else relative

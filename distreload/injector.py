"""Pure ASGI middleware that puts the script tag into HTML pages, streaming as the page streams.

The tag goes before a page's last ``</body>``. Nothing is buffered: the injector holds back at most the tail
of the page from its last ``</body>`` on (or the few bytes that might start one), and every other chunk
passes through as the very same message. Only the last ``SCAN_WINDOW`` bytes of a page's last chunk (and of
what is held) are searched for ``</body>``, and the last ``CHUNK_WINDOW`` bytes of each chunk before it: the
last ``</body>`` of a page sits at its end, split from it at most by a chunk boundary. Every chunk is
looked through for a tag that is already there (``tag.holds_tag``: the tag as distreload writes it, not its
attribute's name in any text), so a page never gets a second one wherever the first sits.

Only ``text/html`` and ``application/xhtml+xml`` are pages (the media type itself, not "html" anywhere in
the header: ``application/vnd.github.html+json`` is JSON). Left alone, byte for byte: anything else,
compressed bodies, downloads, partial content (206, ``Content-Range``), bodies-less statuses, and pages in a
charset the ASCII tag cannot be written in as is (UTF-16, UTF-32: said at debug level).
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Awaitable, Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .tag import ANCHOR, TAG_SPAN, holds_tag

logger = logging.getLogger(__name__)

BODY_MARKER = b"</body"
_MARKER_STARTS = tuple(BODY_MARKER[:length] for length in range(1, len(BODY_MARKER)))  # "<" to "</bod"
SCAN_WINDOW = 1024
# Past this many bytes before the tag, a page's head is joined from a view of it rather than a slice: one
# copy instead of two, where a copy costs more than the view's few calls.
_COPY_ONCE_ABOVE = 8 * 1024
# Lowering a chunk's end to look for </body> in any case costs about 10 instructions a byte: as much for a
# kilobyte as looking through a whole 64 KiB chunk for a tag. Chunks that go by untouched get a shorter look.
CHUNK_WINDOW = 256
HOLD_LIMIT = 64 * 1024  # the most of a page's tail held back while waiting to see whether </body> was last
INJECTED_METHODS = ("GET", "HEAD")
SCOPE_FLAG = "distreload.injected"  # set on the scope by the outermost injector: inner ones stand aside
_BYTE_ORDER_MARKS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-16 and UTF-32 (LE starts FF FE)

_PAGE_MEDIA_TYPES = (b"text/html", b"application/xhtml+xml")
# What each response header means to the injector, by its name as sent (any case: ASGI asks for lower case,
# not every app obeys). Most names mean nothing here: one dictionary lookup tells, without lowering the name.
_OTHER, _TYPE, _LENGTH, _ENCODING, _DISPOSITION, _RANGE, _VALIDATOR = range(1, 8)  # all true: see below
_ROLES_BY_LOWER_NAME = {
    b"content-type": _TYPE,
    b"content-length": _LENGTH,
    b"content-encoding": _ENCODING,
    b"content-disposition": _DISPOSITION,
    b"content-range": _RANGE,
    b"etag": _VALIDATOR,
    b"last-modified": _VALIDATOR,
}
_header_roles: dict[bytes, int] = dict(_ROLES_BY_LOWER_NAME)
_NAMES_KEPT = 512  # distinct header names remembered beyond the ones above: never an unbounded table
_VERDICTS_KEPT = 64  # distinct Content-Type values remembered: a few in practice; never an unbounded table

TagSource = Callable[[Scope], bytes]
Header = tuple[bytes, bytes]
Headers = Sequence[Header]


class HtmlInjector:
    """``HtmlInjector(app, tag_for)``: pages of ``app`` get ``tag_for(scope)`` before their ``</body>``."""

    def __init__(self, app: ASGIApp, tag_for: TagSource) -> None:
        self.app = app
        self.tag_for = tag_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        wrapped = injecting(scope, send, self.tag_for)
        if wrapped is None:
            await self.app(scope, receive, send)
        else:
            await self.app(wrapped[0], receive, wrapped[1])


def injecting(scope: Scope, send: Send, tag_for: TagSource) -> tuple[Scope, Send] | None:
    """The scope and ``send`` to hand the app so that its pages get the tag, or None for a request whose
    answer is never touched. A function rather than a middleware layer: every request of the app passes
    here, and a coroutine frame fewer is a measurable part of a small response's cost."""
    if scope["type"] != "http" or SCOPE_FLAG in scope or scope["method"] not in INJECTED_METHODS:
        return None
    scope[SCOPE_FLAG] = True
    extensions = scope.get("extensions")
    if extensions and "http.response.pathsend" in extensions:
        # A file sent by path never passes through here, so ask for it as body chunks instead.
        scope = {
            **scope,
            "extensions": {
                key: value for key, value in extensions.items() if key != "http.response.pathsend"
            },
        }
    return scope, Injection(send, tag_for, scope).send


_ascii_compatible_charsets: dict[str, bool] = {}


def _writes_ascii_as_is(charset: str) -> bool:
    """Whether a page in ``charset`` spells the tag and ``</body>`` with the same bytes as ASCII."""
    known = _ascii_compatible_charsets.get(charset)
    if known is None:
        try:
            sample = "<script a='/-_.?='></body"
            known = codecs.lookup(charset).encode(sample)[0] == sample.encode()
        except (LookupError, UnicodeError):
            known = False
        if len(_ascii_compatible_charsets) < _VERDICTS_KEPT:
            _ascii_compatible_charsets[charset] = known
    return known


_page_content_types: dict[bytes, bool] = {}


def _is_page_type(content_type: bytes) -> bool:
    """Whether a Content-Type value is an HTML page's, in a charset the tag can be written in as is.
    Remembered per value: an app sends the same few values over and over."""
    verdict = _page_content_types.get(content_type)
    if verdict is None:
        verdict = _judge_content_type(content_type)
        if len(_page_content_types) < _VERDICTS_KEPT:
            _page_content_types[content_type] = verdict
    return verdict


def _judge_content_type(content_type: bytes) -> bool:
    media_type, *parameters = content_type.split(b";")
    if media_type.strip().lower() not in _PAGE_MEDIA_TYPES:
        return False
    for parameter in parameters:
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() == b"charset":
            charset = value.strip().strip(b"\"'").decode("latin-1").lower()
            if charset != "utf-8" and not _writes_ascii_as_is(charset):
                logger.debug("distreload: a page in charset %r left without the tag", charset)
                return False
    return True


def _header_role(name: bytes) -> int:
    role = _ROLES_BY_LOWER_NAME.get(name.lower(), _OTHER)
    if len(_header_roles) < _NAMES_KEPT:
        _header_roles[name] = role
    return role


def _page_headers(message: Message) -> tuple[Headers, Header | None] | None:
    """For an HTML page to inject into: its headers minus the validators (the page will carry a
    per-render tag: a 304 would bring back a stale copy of it), and its Content-Length header if it has
    one; None for anything that is not to be touched. Every response of the app comes through here."""
    status = message.get("status", 200)
    if status < 200 or status in (204, 206, 304):
        return None
    headers: Headers = message.get("headers", ())
    page: bool | None = False
    length = None
    validators = False
    for header in headers:
        role = _header_roles.get(header[0]) or _header_role(header[0])
        # The roles in the order HTML pages and JSON answers bring them (Starlette: length, then type).
        if role == _LENGTH:
            length = header
        elif role == _TYPE:
            value = header[1]
            page = _page_content_types.get(value)  # the function's own first step, saving a call
            if page is None:
                page = _is_page_type(value)
            if not page:
                return None  # most answers are no page: this is the header that tells
        elif role == _OTHER:
            continue
        elif role == _VALIDATOR:
            validators = True
        elif role == _ENCODING:
            if header[1].strip().lower() not in (b"", b"identity"):
                return None
        elif role == _DISPOSITION:
            if b"attachment" in header[1].lower():
                return None
        else:  # Content-Range
            return None
    if not page:
        return None
    if validators:
        headers = [header for header in headers if _header_roles.get(header[0]) != _VALIDATOR]
    return headers, length


def _with_length(headers: Headers, length: Header, added: int) -> tuple[list[Header], bool]:
    """A copy of ``headers`` (the app's own may be sent again) with the Content-Length header ``length``
    grown by ``added``; and whether the response declared a length that now counts the added bytes."""
    copied = list(headers)
    at = copied.index(length)
    try:
        copied[at] = (length[0], str(int(length[1]) + added).encode())
    except ValueError:
        del copied[at]  # not a number: let the server frame the body itself
        return copied, False
    return copied, True


# Where a response stands. Small ints: send() compares them on every message of every response.
_DECIDING = 0  # nothing seen yet
_HOLDING_START = 1  # a page's start message, held until its first body tells whether it streams
_STREAMING = 2  # a page in several body messages: the tag goes in as the last </body> goes by
_PASSING = 3  # not a page, or the tag is in: every message goes out as it came


class Injection:
    """Per-response state: decides from the headers, then places one tag before the last ``</body>``."""

    _start: Message
    _headers: tuple[Headers, Header | None]
    _present: bool
    _seen_tail: bytes
    _tail_anchored: bool

    __slots__ = (
        "_send",
        "_tag_for",
        "_scope",
        "_state",
        "_start",
        "_headers",
        "_tag",
        "_held",
        "_holding_marker",
        "_present",
        "_seen_tail",
        "_tail_anchored",
        "_declared_length",
    )

    def __init__(self, send: Send, tag_for: TagSource, scope: Scope) -> None:
        # Most responses are not HTML pages: set up only what deciding needs; the rest when one is.
        self._send = send
        self._tag_for = tag_for
        self._scope = scope
        self._state = _DECIDING

    def send(self, message: Message) -> Awaitable[None]:
        # Not a coroutine itself: it hands back the server's own send() for whatever goes out as it came (a
        # coroutine frame costs more than everything else done here for a JSON answer), a coroutine of its
        # own only where one message becomes two.
        state = self._state
        # In the order a page's messages come: its start, its body, or the chunks of a long one.
        if state == _DECIDING:
            if message["type"] == "http.response.start":
                decided = _page_headers(message)
                if decided is not None:
                    if self._scope["method"] == "HEAD":
                        # The headers GET would have: the length grown by the tag; HEAD has no body to change.
                        headers, length = decided
                        if length is not None:
                            headers = _with_length(headers, length, len(self._tag_for(self._scope)))[0]
                        self._state = _PASSING
                        return self._send({**message, "headers": headers})
                    self._state, self._start, self._headers = _HOLDING_START, message, decided
                    return _nothing()
            self._state = _PASSING
        elif state == _HOLDING_START:
            if message["type"] == "http.response.body":
                body: bytes = message.get("body", b"")
                if not message.get("more_body", False) and not body.startswith(_BYTE_ORDER_MARKS):
                    # The common case, a page in one message: place the tag and send, nothing held.
                    # Here rather than in a method of its own: a call fewer on every page.
                    self._state = _PASSING
                    headers, length = self._headers
                    # Looked for only where the page has a "?" at all (memchr): most pages are skipped whole.
                    anchor = body.find(ANCHOR)
                    if anchor == -1 or not holds_tag(body, anchor):
                        tag = self._tag_for(self._scope)
                        # _last_marker() inline, for the common page: its last </body> found as it is spelt,
                        # with nothing after it in capitals that could be a later one in another case.
                        index = body.rfind(BODY_MARKER, -SCAN_WINDOW)
                        if index == -1 or not body[index + 1 :].islower():
                            index = _last_marker(body, 0)
                        if index == -1:
                            body += tag
                        elif index > _COPY_ONCE_ABOVE:
                            # The page's head joined from a view of it: copied once, not sliced and copied.
                            body = b"".join((memoryview(body)[:index], tag, body[index:]))
                        else:
                            body = b"".join((body[:index], tag, body[index:]))
                        if length is not None:
                            headers = _with_length(headers, length, len(tag))[0]
                    return _send_both(
                        self._send,
                        # A copy: an app may send the same start message for every response.
                        {**self._start, "headers": headers},
                        {"type": "http.response.body", "body": body, "more_body": False},
                    )
            return self._first_message(message)
        elif state == _STREAMING and message["type"] == "http.response.body":
            body = message.get("body", b"")
            more_body: bool = message.get("more_body", False)
            if not self._present:
                anchor = body.find(ANCHOR)
                if anchor == -1 and not self._tail_anchored:
                    # No "?" in it nor at the end of the page before it: no tag starts in or across it.
                    tail = self._seen_tail
                    self._seen_tail = body[-TAG_SPAN:] if len(body) >= TAG_SPAN else (tail + body)[-TAG_SPAN:]
                else:
                    self._present = self._tag_seen_in(body, anchor)
            if more_body and not self._held:
                # The common chunk: nothing held, and unless its end holds (the start of) a </body>,
                # it goes out as the very same message. One lowered copy of the window, one search.
                window = (body[-CHUNK_WINDOW:] if len(body) > CHUNK_WINDOW else body).lower()
                if window.find(BODY_MARKER) == -1 and not window.endswith(_MARKER_STARTS):
                    return self._send(message)
            out = self._place(body, final=not more_body)
            if out is body and more_body:
                return self._send(message)
            if out or not more_body:
                return self._send({"type": "http.response.body", "body": out, "more_body": more_body})
            return _nothing()
        return self._send(message)

    async def _first_message(self, message: Message) -> None:
        """The first message after a page's start, unless it is the whole page's body."""
        if message["type"] == "http.response.body" and message.get("body", b"").startswith(_BYTE_ORDER_MARKS):
            await self._leave_alone(message)
            return
        await self._flush_start()
        await self.send(message)  # the first chunk of a streamed page like every other; or no body at all

    async def _leave_alone(self, message: Message) -> None:
        """A page whose bytes say it is UTF-16 or UTF-32: send it as the app made it."""
        logger.debug("distreload: a page with a UTF-16/32 byte order mark left without the tag")
        self._state = _PASSING
        await self._send(self._start)
        await self._send(message)

    async def _flush_start(self) -> None:
        """Send the held response start with headers fixed for the tag (a streamed page)."""
        self._state = _STREAMING
        self._tag = self._tag_for(self._scope)
        self._held, self._holding_marker, self._seen_tail, self._tail_anchored = b"", False, b"", False
        self._present = False
        headers, length = self._headers
        # Only a length that promised room for the tag needs padding should a tag turn up later.
        self._declared_length = False
        if length is not None:
            headers, self._declared_length = _with_length(headers, length, len(self._tag))
        await self._send({**self._start, "headers": headers})

    def _tag_seen_in(self, chunk: bytes, anchor: int) -> bool:
        """Whether a tag already sits in ``chunk`` (whose first "?" is at ``anchor``), or across its
        boundary with the chunks before it."""
        tail = self._seen_tail
        if tail and (self._tail_anchored or -1 < anchor < TAG_SPAN) and holds_tag(tail + chunk[:TAG_SPAN]):
            return True
        if anchor != -1 and holds_tag(chunk):
            return True
        tail = chunk[-TAG_SPAN:] if len(chunk) >= TAG_SPAN else (tail + chunk)[-TAG_SPAN:]
        self._seen_tail, self._tail_anchored = tail, ANCHOR in tail
        return False

    def _place(self, chunk: bytes, *, final: bool) -> bytes:
        held = self._held
        if held:
            data = held + chunk
            index = _last_marker(data, 1 if self._holding_marker else 0)
            if index == -1 and not self._holding_marker:
                # A marker split across the two chunks starts in the few held bytes, maybe far from the
                # window.
                index = _last_marker(data[: len(held) + len(BODY_MARKER)], 0)
        else:
            data = chunk
            index = _last_marker(data, 0)
        if index != -1:
            out, self._held, self._holding_marker = data[:index], data[index:], True
        elif self._holding_marker:
            out, self._held = b"", data
        else:
            keep = _partial_marker_length(data)
            out, self._held = (data[:-keep], data[-keep:]) if keep else (data, b"")
        if self._holding_marker and len(self._held) > HOLD_LIMIT:
            # A long tail after a </body>: let it go; the tag goes before a later </body>, else at the end.
            out, self._held, self._holding_marker = out + self._held, b"", False
        if final:
            tag = self._tag_bytes()
            out += tag + self._held if self._holding_marker else self._held + tag
            self._held, self._state = b"", _PASSING
        return out

    def _tag_bytes(self) -> bytes:
        if not self._present:
            return self._tag
        # The page carried the script already. A streamed response that declared its length up front
        # was promised the tag's bytes: keep that length true with white space in place of the tag.
        return b" " * len(self._tag) if self._declared_length else b""


async def _nothing() -> None:
    """What send() hands back for a message it keeps (a page's start, held until its body is seen)."""


async def _send_both(send: Send, first: Message, second: Message) -> None:
    await send(first)
    await send(second)


def _last_marker(data: bytes, after: int) -> int:
    """Index of the last ``</body`` (any case) starting at ``after`` or later within the scan window."""
    low = len(data) - SCAN_WINDOW
    if low < after:
        low = after
    # Searched backwards in place, the common spelling is found a few bytes from the end (a page ends
    # "</body></html>"); only what follows it is lowered to rule out a later one in another case. A page
    # without it pays for lowering the window.
    found = data.rfind(BODY_MARKER, low)
    if found == -1:
        found = (data[low:] if low > 0 else data).lower().rfind(BODY_MARKER)
        return -1 if found == -1 else low + found
    later = data[found + 1 :].lower().rfind(BODY_MARKER)
    return found if later == -1 else found + 1 + later


def _partial_marker_length(data: bytes) -> int:
    """How many bytes at the end of ``data`` could be the start of ``</body`` (0 to 5)."""
    if data.find(b"<", max(0, len(data) - (len(BODY_MARKER) - 1))) == -1:
        return 0
    tail = data[-(len(BODY_MARKER) - 1) :].lower()
    for length in range(len(tail), 0, -1):
        if tail[-length:] == BODY_MARKER[:length]:
            return length
    return 0

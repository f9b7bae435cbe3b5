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
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .tag import ANCHOR, TAG_SPAN, holds_tag

logger = logging.getLogger(__name__)

BODY_MARKER = b"</body"
_MARKER_STARTS = tuple(BODY_MARKER[:length] for length in range(1, len(BODY_MARKER)))  # "<" to "</bod"
SCAN_WINDOW = 1024
# Lowering a chunk's end to look for </body> in any case costs about 10 instructions a byte: as much for a
# kilobyte as looking through a whole 64 KiB chunk for a tag. Chunks that go by untouched get a shorter look.
CHUNK_WINDOW = 256
HOLD_LIMIT = 64 * 1024  # the most of a page's tail held back while waiting to see whether </body> was last
SCOPE_FLAG = "distreload.injected"  # set on the scope by the outermost injector: inner ones stand aside
_BYTE_ORDER_MARKS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-16 and UTF-32 (LE starts FF FE)

_PAGE_MEDIA_TYPES = (b"text/html", b"application/xhtml+xml")
_HEADERS_LOOKED_AT = frozenset(
    (
        b"content-length",
        b"content-encoding",
        b"content-disposition",
        b"content-range",
        b"etag",
        b"last-modified",
    )
)
_VERDICTS_KEPT = 64  # distinct Content-Type values remembered: a few in practice; never an unbounded table

TagSource = Callable[[Scope], bytes]


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
    if scope["type"] != "http" or SCOPE_FLAG in scope or scope["method"] not in ("GET", "HEAD"):
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
    return scope, _Injection(send, tag_for, scope).send


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


def _headers_to_keep(message: Message) -> tuple[list[tuple[bytes, bytes]], int] | None:
    """The headers of an HTML page to inject into, minus the validators (the page will carry a per-render
    tag: a 304 would bring back a stale copy of it), and where its Content-Length is among them (-1: none);
    None for anything that is not to be touched. Every response of the app comes through here."""
    status = message.get("status", 200)
    if status < 200 or status in (204, 206, 304):
        return None
    headers = message.get("headers", ())
    for name, value in headers:  # most answers are no page: tell from the type alone, first
        if name.lower() == b"content-type":
            page = _page_content_types.get(value)  # the function's own first step, saving a call
            if not (_is_page_type(value) if page is None else page):
                return None
            break
    else:
        return None
    length_at = -1
    kept: list[tuple[bytes, bytes]] = []
    for header in headers:
        name = header[0].lower()
        if name not in _HEADERS_LOOKED_AT:  # one set lookup for most headers, not a chain of compares
            pass
        elif name == b"content-length":
            length_at = len(kept)
        elif name == b"content-encoding":
            if header[1].strip().lower() not in (b"", b"identity"):
                return None
        elif name == b"content-disposition":
            if b"attachment" in header[1].lower():
                return None
        elif name == b"content-range":
            return None
        elif name == b"etag" or name == b"last-modified":
            continue
        kept.append(header)
    return kept, length_at


def _grow_length(headers: list[tuple[bytes, bytes]], length_at: int, added: int) -> bool:
    """Grow the Content-Length at ``length_at`` (in place: the list is the injector's own) by ``added``;
    whether the response declared a length that now counts the tag."""
    if length_at < 0:
        return False
    name, value = headers[length_at]
    try:
        headers[length_at] = (name, str(int(value) + added).encode())
    except ValueError:
        del headers[length_at]  # not a number: let the server frame the body itself
        return False
    return True


# Where a response stands. Small ints: send() compares them on every message of every response.
_DECIDING = 0  # nothing seen yet
_HOLDING_START = 1  # a page's start message, held until its first body tells whether it streams
_STREAMING = 2  # a page in several body messages: the tag goes in as the last </body> goes by
_PASSING = 3  # not a page, or the tag is in: every message goes out as it came


class _Injection:
    """Per-response state: decides from the headers, then places one tag before the last ``</body>``."""

    _start: Message
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
        "_length_at",
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

    async def send(self, message: Message) -> None:
        state = self._state
        if state == _STREAMING:  # first: a long page's chunks are most of the messages that come here
            if message["type"] == "http.response.body":
                body: bytes = message.get("body", b"")
                more_body: bool = message.get("more_body", False)
                if not self._present:
                    anchor = body.find(ANCHOR)
                    if anchor == -1 and not self._tail_anchored:
                        # No "?" in it nor at the end of the page before it: no tag starts in or across it.
                        tail = self._seen_tail
                        self._seen_tail = (
                            body[-TAG_SPAN:] if len(body) >= TAG_SPAN else (tail + body)[-TAG_SPAN:]
                        )
                    else:
                        self._present = self._tag_seen_in(body, anchor)
                if more_body and not self._held:
                    # The common chunk: nothing held, and unless its end holds (the start of) a </body>,
                    # it goes out as the very same message. One lowered copy of the window, one search.
                    window = (body[-CHUNK_WINDOW:] if len(body) > CHUNK_WINDOW else body).lower()
                    if window.find(BODY_MARKER) == -1 and not window.endswith(_MARKER_STARTS):
                        await self._send(message)
                        return
                out = self._place(body, final=not more_body)
                if out is body and more_body:
                    await self._send(message)
                elif out or not more_body:
                    await self._send({"type": "http.response.body", "body": out, "more_body": more_body})
                return
        elif state == _DECIDING:
            if message["type"] == "http.response.start":
                decided = _headers_to_keep(message)
                if decided is not None:
                    headers, length_at = decided
                    if self._scope["method"] == "HEAD":
                        # The headers GET would have: the length grown by the tag; HEAD has no body to change.
                        _grow_length(headers, length_at, len(self._tag_for(self._scope)))
                        self._state = _PASSING
                        await self._send({**message, "headers": headers})
                        return
                    self._state, self._start = _HOLDING_START, message
                    self._headers, self._length_at = headers, length_at
                    return
            self._state = _PASSING
        elif state == _HOLDING_START:
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if not message.get("more_body", False) and not body.startswith(_BYTE_ORDER_MARKS):
                    # The common case, a page in one message: place the tag and send, nothing held.
                    # Here rather than in a method of its own: one coroutine frame fewer on every page.
                    self._state = _PASSING
                    if holds_tag(body):
                        tag = b""
                    else:
                        tag = self._tag_for(self._scope)
                        index = _last_marker(body, 0)
                        body = body + tag if index == -1 else b"".join((body[:index], tag, body[index:]))
                    _grow_length(self._headers, self._length_at, len(tag))
                    # A copy: an app may send the same start message for every response.
                    await self._send({**self._start, "headers": self._headers})
                    await self._send({"type": "http.response.body", "body": body, "more_body": False})
                    return
            await self._first_message(message)
            return
        await self._send(message)

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
        # Only a length that promised room for the tag needs padding should a tag turn up later.
        self._declared_length = _grow_length(self._headers, self._length_at, len(self._tag))
        await self._send({**self._start, "headers": self._headers})

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

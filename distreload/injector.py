"""Pure ASGI middleware that puts the script tag into HTML pages, streaming as the page streams.

The tag goes before a page's last ``</body>``. Nothing is buffered: the injector holds back at most the tail
of the page from its last ``</body>`` on (or the few bytes that might start one), and every other chunk
passes through as the very same message. Only the last ``SCAN_WINDOW`` bytes of each chunk are searched for
``</body>`` (the last one of a page sits at its end); every chunk is searched for a tag that is already
there, so a page never gets a second one wherever the first sits.

Left alone, byte for byte: anything but an HTML page, compressed bodies, downloads, partial content (206,
``Content-Range``), bodies-less statuses, and pages in a charset the ASCII tag cannot be written in as is
(UTF-16, UTF-32: said at debug level).
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .tag import PRESENT_MARKER

logger = logging.getLogger(__name__)

BODY_MARKER = b"</body"
_UPPER_BODY_MARKER = b"</BODY"
SCAN_WINDOW = 1024
HOLD_LIMIT = 64 * 1024  # the most of a page's tail held back while waiting to see whether </body> was last
SCOPE_FLAG = "distreload.injected"  # set on the scope by the outermost injector: inner ones stand aside
_BYTE_ORDER_MARKS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-16 and UTF-32 (LE starts FF FE)

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
        if len(_ascii_compatible_charsets) < 64:  # a few charsets in practice; never an unbounded table
            _ascii_compatible_charsets[charset] = known
    return known


def _headers_to_keep(message: Message) -> tuple[list[tuple[bytes, bytes]], int] | None:
    """The headers of an HTML page to inject into, minus the validators (the page will carry a per-render
    tag: a 304 would bring back a stale copy of it), and where its Content-Length is among them (-1: none);
    None for anything that is not to be touched. One pass: every response of the app comes through here."""
    status = message.get("status", 200)
    if status < 200 or status in (204, 206, 304):
        return None
    headers = message.get("headers", ())
    for name, value in headers:  # most answers are no page: tell from the type alone, first
        if name.lower() == b"content-type":
            if b"html" not in value.lower():
                return None
            break
    else:
        return None
    is_html = False
    length_at = -1
    kept: list[tuple[bytes, bytes]] = []
    for header in headers:
        name = header[0].lower()
        if name == b"content-type":
            value = header[1].lower()
            is_html = b"html" in value  # text/html, application/xhtml+xml
            if is_html and b"charset=" in value and not value.endswith(b"charset=utf-8"):
                charset = value.split(b"charset=", 1)[1].split(b";", 1)[0].strip(b" \"'").decode("latin-1")
                if not _writes_ascii_as_is(charset):
                    logger.debug("distreload: a page in charset %r left without the tag", charset)
                    return None
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
    return (kept, length_at) if is_html else None


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


class _Injection:
    """Per-response state: decides from the headers, then places one tag before the last ``</body>``."""

    _start: Message | None

    __slots__ = (
        "_send",
        "_tag_for",
        "_scope",
        "_start",
        "_headers",
        "_length_at",
        "_active",
        "_done",
        "_tag",
        "_held",
        "_holding_marker",
        "_present",
        "_seen_tail",
        "_declared_length",
    )

    def __init__(self, send: Send, tag_for: TagSource, scope: Scope) -> None:
        # Most responses are not HTML pages: set up only what deciding needs; the rest when one is.
        self._send = send
        self._tag_for = tag_for
        self._scope = scope
        self._active = False

    async def send(self, message: Message) -> None:
        if not self._active:
            if message["type"] == "http.response.start":
                decided = _headers_to_keep(message)
                if decided is not None:
                    headers, length_at = decided
                    if self._scope["method"] == "HEAD":
                        # The headers GET would have: the length grown by the tag; HEAD has no body to change.
                        _grow_length(headers, length_at, len(self._tag_for(self._scope)))
                        await self._send({**message, "headers": headers})
                        return
                    self._active, self._done, self._start = True, False, message
                    self._headers, self._length_at = headers, length_at
                    return
            await self._send(message)
            return
        if self._done:
            await self._send(message)
            return
        if message["type"] != "http.response.body":
            await self._flush_start(None)
            await self._send(message)
            return
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        if self._start is not None:
            if body.startswith(_BYTE_ORDER_MARKS):
                await self._leave_alone(message)
                return
            if not more_body:
                # The common case, a page in one message: place the tag and send, nothing held.
                start, self._start, self._done = self._start, None, True
                if PRESENT_MARKER in body:
                    tag = b""
                else:
                    tag = self._tag_for(self._scope)
                    index = _last_marker(body, after=0)
                    body = body + tag if index == -1 else body[:index] + tag + body[index:]
                _grow_length(self._headers, self._length_at, len(tag))
                # A copy: an app may send the same start message for every response.
                await self._send({**start, "headers": self._headers})
                await self._send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await self._flush_start(body)
        out = self._place(body, final=not more_body)
        if out is body and more_body:
            await self._send(message)
        elif out or not more_body:
            await self._send({"type": "http.response.body", "body": out, "more_body": more_body})

    async def _leave_alone(self, message: Message) -> None:
        """A page whose bytes say it is UTF-16 or UTF-32: send it as the app made it."""
        logger.debug("distreload: a page with a UTF-16/32 byte order mark left without the tag")
        start, self._start, self._done = self._start, None, True
        assert start is not None
        await self._send(start)
        await self._send(message)

    async def _flush_start(self, first_body: bytes | None) -> None:
        """Send the held response start with headers fixed for the tag (a streamed page)."""
        start, self._start = self._start, None
        if start is None:
            return
        self._tag = self._tag_for(self._scope)
        self._held, self._holding_marker, self._seen_tail = b"", False, b""
        self._present = False
        # Only a length that promised room for the tag needs padding should a tag turn up later.
        self._declared_length = _grow_length(self._headers, self._length_at, len(self._tag))
        await self._send({**start, "headers": self._headers})

    def _note_present(self, chunk: bytes) -> None:
        """Look for a tag already in the page, also across the boundary with the previous chunk."""
        if self._present:
            return
        edge = len(PRESENT_MARKER) - 1
        if PRESENT_MARKER in chunk or (self._seen_tail and PRESENT_MARKER in self._seen_tail + chunk[:edge]):
            self._present = True
            return
        self._seen_tail = (self._seen_tail + chunk)[-edge:] if len(chunk) < edge else chunk[-edge:]

    def _place(self, chunk: bytes, *, final: bool) -> bytes:
        self._note_present(chunk)
        held = self._held
        data = held + chunk if held else chunk
        index = _last_marker(data, after=1 if self._holding_marker else 0)
        if index == -1 and held and not self._holding_marker:
            # A marker split across the two chunks starts in the few held bytes, maybe far from the window.
            index = _last_marker(data[: len(held) + len(BODY_MARKER)], after=0)
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
            self._held, self._done = b"", True
        return out

    def _tag_bytes(self) -> bytes:
        if not self._present:
            return self._tag
        # The page carried the script already. A streamed response that declared its length up front
        # was promised the tag's bytes: keep that length true with white space in place of the tag.
        return b" " * len(self._tag) if self._declared_length else b""


def _last_marker(data: bytes, *, after: int) -> int:
    """Index of the last ``</body`` (any case) starting at ``after`` or later within the scan window."""
    low = max(after, len(data) - SCAN_WINDOW)
    # Pages spell it </body or </BODY: look for those without copying anything, then make sure no other
    # spelling follows in the (short) rest; only a page with neither pays for lowering the whole window.
    found = max(data.rfind(BODY_MARKER, low), data.rfind(_UPPER_BODY_MARKER, low))
    if found == -1:
        found = data[low:].lower().rfind(BODY_MARKER)
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

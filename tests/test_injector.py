"""The HTML injector, driven through ASGI with a ``send`` that records every message."""

from __future__ import annotations

import asyncio
import codecs

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distreload.injector import CHUNK_WINDOW, HOLD_LIMIT, SCAN_WINDOW, HtmlInjector
from distreload.protocol import ClusterVersion
from distreload.tag import ScriptTag

from .asgi import body_of, call, header, headers_of, raw_app

pytestmark = pytest.mark.anyio

TAG = b'<script src="/---distreload---/client.js?v=1" data-distreload="/---distreload---" async></script>'


def wrap(app: ASGIApp) -> HtmlInjector:
    return HtmlInjector(app, lambda scope: TAG)


async def test_tag_goes_before_body_close_and_content_length_follows() -> None:
    page = b"<html><body><h1>hi</h1></body></html>"
    app = wrap(
        raw_app(
            headers=[
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(page)).encode()),
            ],
            chunks=[page],
        )
    )
    sent = await call(app)
    assert body_of(sent) == b"<html><body><h1>hi</h1>" + TAG + b"</body></html>"
    assert header(sent, b"content-length") == [str(len(page) + len(TAG)).encode()]


async def test_an_app_that_sends_the_same_start_message_every_time_keeps_it_as_it_was() -> None:
    page = b"<html><body>hi</body></html>"
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/html"), (b"content-length", str(len(page)).encode())],
    }
    original = {**start, "headers": list(start["headers"])}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start)
        await send({"type": "http.response.body", "body": page, "more_body": False})

    for _ in range(3):
        sent = await call(wrap(app))
        assert header(sent, b"content-length") == [str(len(page) + len(TAG)).encode()]
    assert start == original


async def test_marker_split_across_chunks_is_found() -> None:
    chunks = [b"<html><body>a</bo", b"dy></html>"]
    app = wrap(raw_app(chunks=chunks))
    sent = await call(app)
    assert body_of(sent) == b"<html><body>a" + TAG + b"</body></html>"


async def test_tag_goes_before_the_last_body_close_in_any_case() -> None:
    chunks = [b"<body><pre>&lt;/body&gt; </body> sample</pre>", b"</BODY>\n</html>\n"]
    app = wrap(raw_app(chunks=chunks))
    sent = await call(app)
    expected = b"<body><pre>&lt;/body&gt; </body> sample</pre>" + TAG + b"</BODY>\n</html>\n"
    assert body_of(sent) == expected


async def test_page_without_body_close_gets_the_tag_appended() -> None:
    app = wrap(raw_app(chunks=[b"<h1>fragment</h1>"]))
    sent = await call(app)
    assert body_of(sent) == b"<h1>fragment</h1>" + TAG


async def test_a_body_close_far_from_the_end_leaves_the_tag_at_the_end() -> None:
    """Only each chunk's last 1 KiB is searched: a </body> followed by more than that (unusual: the
    last one ends a page) puts the tag at the end, where browsers still run it."""
    page = b"<html><body>x</body>" + b"<!-- trailing -->" * 1000 + b"</html>"
    app = wrap(raw_app(chunks=[page]))
    assert body_of(await call(app)) == page + TAG


@pytest.mark.parametrize("after", [CHUNK_WINDOW - len(b"</body>"), CHUNK_WINDOW + 100])
async def test_a_body_close_near_the_end_of_a_chunk_before_the_last_gets_the_tag(after: int) -> None:
    """A chunk before the last is searched for </body> in its last CHUNK_WINDOW bytes: a page cut right
    after its </body> (a file read in blocks) gets the tag there; one further back gets it at the end."""
    middle = b"<html><body>" + b"x" * 5000 + b"</body>" + b"y" * after
    sent = await call(wrap(raw_app(chunks=[middle, b"</html>"])))
    if after + len(b"</body>") <= CHUNK_WINDOW:
        assert body_of(sent) == middle.replace(b"</body>", TAG + b"</body>") + b"</html>"
    else:
        assert body_of(sent) == middle + b"</html>" + TAG


async def test_chunks_with_nothing_to_change_are_forwarded_as_they_are() -> None:
    middle = {"type": "http.response.body", "body": b"<p>" + b"x" * 100_000 + b"</p>", "more_body": True}
    forwarded: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        html_type = [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": 200, "headers": html_type})
        await send({"type": "http.response.body", "body": b"<html><body>", "more_body": True})
        await send(middle)
        await send({"type": "http.response.body", "body": b"</body></html>", "more_body": False})

    async def send(message: Message) -> None:
        forwarded.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    await wrap(app)(scope, receive, send)
    assert forwarded[2] is middle  # no copy, no new message


def render_tag(tag: ScriptTag, *, base: str) -> bytes:
    return tag.render(
        {"type": "http"}, base=base, version=ClusterVersion("0123456789abcdef", 7), build_id="b"
    )


# A tag another distreload wrote (another base, another version): a proxied page, a saved one.
EXISTING = render_tag(ScriptTag(script_version="0ther"), base="/app/---distreload---")


async def test_page_that_already_carries_the_script_gets_no_second_tag() -> None:
    page = b"<html><body>" + EXISTING + b"</body></html>"
    headers = [(b"content-type", b"text/html"), (b"content-length", str(len(page)).encode())]
    app = wrap(raw_app(headers=headers, chunks=[page]))
    sent = await call(app)
    assert body_of(sent) == page
    assert header(sent, b"content-length") == [str(len(page)).encode()]


@pytest.mark.parametrize(
    "text",
    [
        b"<!-- the script is the one with data-distreload -->",
        b'<pre>&lt;script data-distreload="/---distreload---"&gt;</pre>',
        b'<p data-distreload="mine">?v=1 ?v=2 client.js?v=3</p>',
    ],
)
async def test_a_page_that_only_mentions_the_attribute_still_gets_the_tag(text: bytes) -> None:
    page = b"<html><body>" + text + b"</body></html>"
    for chunks in ([page], [page[:20], page[20:]]):
        sent = await call(wrap(raw_app(chunks=chunks)))
        assert body_of(sent) == b"<html><body>" + text + TAG + b"</body></html>"


async def test_a_tag_after_many_question_marks_is_still_seen() -> None:
    links = b"".join(b'<a href="/list?page=%d&amp;q=x?">%d</a>' % (i, i) for i in range(50))
    page = b"<html><body>" + links + EXISTING + links + b"</body></html>"
    sent = await call(wrap(raw_app(chunks=[page])))
    assert body_of(sent) == page


async def test_applying_the_middleware_twice_injects_once() -> None:
    sent = await call(wrap(wrap(raw_app())))
    assert body_of(sent).count(TAG) == 1


# --- What is left alone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        ("POST", 200, [(b"content-type", b"text/html")]),
        ("GET", 204, [(b"content-type", b"text/html")]),
        ("GET", 304, [(b"content-type", b"text/html")]),
        ("GET", 200, [(b"content-type", b"application/json")]),
        ("GET", 200, [(b"content-type", b"application/vnd.github.html+json")]),
        ("GET", 200, [(b"content-type", b'application/json; profile="https://example.test/html"')]),
        ("GET", 200, [(b"content-type", b"text/plain; charset=html")]),
        ("GET", 200, [(b"content-type", b"text/htmlx")]),
        ("GET", 200, [(b"content-type", b"text/event-stream")]),
        ("GET", 200, [(b"content-type", b"text/html"), (b"content-encoding", b"gzip")]),
        (
            "GET",
            200,
            [(b"content-type", b"text/html"), (b"content-disposition", b"attachment; filename=a.html")],
        ),
        ("GET", 200, []),
        ("GET", 206, [(b"content-type", b"text/html"), (b"content-range", b"bytes 0-27/100")]),
        ("GET", 200, [(b"content-type", b"text/html"), (b"content-range", b"bytes 0-27/28")]),
        ("GET", 200, [(b"content-type", b"text/html; charset=utf-16")]),
        ("GET", 200, [(b"content-type", b"text/html; charset=UTF-32LE")]),
        ("GET", 200, [(b"content-type", b"text/html; charset=no-such-charset")]),
    ],
)
async def test_responses_that_are_not_html_pages_pass_untouched(
    method: str, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    chunks = [b"<html><body>", b"x</body></html>"]
    inner = raw_app(status=status, headers=headers, chunks=chunks)
    direct = await call(inner, method)
    wrapped = await call(wrap(inner), method)
    assert wrapped == direct


@pytest.mark.parametrize(
    "content_type",
    [b"text/html", b"Text/HTML ; charset=UTF-8", b"application/xhtml+xml", b' text/html;charset="utf-8"'],
)
async def test_html_and_xhtml_media_types_get_the_tag(content_type: bytes) -> None:
    sent = await call(wrap(raw_app(headers=[(b"content-type", content_type)], chunks=[b"<body>x</body>"])))
    assert body_of(sent) == b"<body>x" + TAG + b"</body>"


async def test_repeated_headers_are_all_kept() -> None:
    headers = [
        (b"content-type", b"text/html"),
        (b"set-cookie", b"a=1; Path=/"),
        (b"set-cookie", b"b=2; Path=/"),
        (b"x-custom", b"one"),
        (b"x-custom", b"two"),
    ]
    sent = await call(wrap(raw_app(headers=headers)))
    assert header(sent, b"set-cookie") == [b"a=1; Path=/", b"b=2; Path=/"]
    assert header(sent, b"x-custom") == [b"one", b"two"]


async def test_validators_are_dropped_from_injected_pages() -> None:
    # A 304 would bring back a cached copy with a stale version in its tag.
    headers = [(b"content-type", b"text/html"), (b"etag", b'"abc"'), (b"last-modified", b"Mon, 01 Jan 2024")]
    sent = await call(wrap(raw_app(headers=headers)))
    assert header(sent, b"etag") == [] and header(sent, b"last-modified") == []


async def test_streaming_stays_streaming() -> None:
    """Each chunk goes out before the app has produced the next one; no Content-Length is invented."""
    gate = asyncio.Event()
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        html_type = [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": 200, "headers": html_type})
        await send({"type": "http.response.body", "body": b"<html><body>" + b"a" * 1000, "more_body": True})
        await gate.wait()
        await send({"type": "http.response.body", "body": b"</body></html>", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    task = asyncio.create_task(wrap(app)(scope, receive, send))
    await asyncio.sleep(0.05)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"].startswith(b"<html><body>aaa") and sent[1]["more_body"] is True
    assert header(sent, b"content-length") == []
    gate.set()
    await task
    assert sent[-1]["more_body"] is False


async def test_file_responses_sent_by_path_are_asked_for_as_chunks() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await raw_app()(scope, receive, send)

    extensions = {"http.response.pathsend": {}, "other": {}}
    await call(wrap(app), extra_scope={"extensions": extensions})
    assert seen[0]["extensions"] == {"other": {}}


async def test_head_answers_with_the_headers_get_would_have() -> None:
    page = b"<html><body>x</body></html>"
    headers = [
        (b"content-type", b"text/html"),
        (b"content-length", str(len(page)).encode()),
        (b"etag", b'"v1"'),
    ]
    get = await call(wrap(raw_app(headers=headers, chunks=[page])), "GET")

    async def head_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    head = await call(wrap(head_app), "HEAD")
    assert headers_of(head) == headers_of(get)
    assert body_of(head) == b""


@pytest.mark.parametrize("charset", ["utf-8", "ISO-8859-1", "windows-1252", "shift_jis", '"euc-kr"'])
async def test_pages_in_ascii_compatible_charsets_get_the_tag_correctly_encoded(charset: str) -> None:
    text = "<html><body>caf\u00e9 \u2014 ok</body></html>"
    codec = codecs.lookup(charset.strip('"'))
    page = codec.encode(text, "replace")[0]
    sent = await call(
        wrap(raw_app(headers=[(b"content-type", f"text/html; charset={charset}".encode())], chunks=[page]))
    )
    assert codec.decode(body_of(sent))[0] == codec.decode(page)[0].replace(
        "</body>", TAG.decode() + "</body>"
    )


@pytest.mark.parametrize("mark", [b"\xff\xfe", b"\xfe\xff"])
async def test_a_page_whose_bytes_say_utf16_is_left_alone(mark: bytes) -> None:
    page = mark + "<html><body>x</body></html>".encode("utf-16-le" if mark == b"\xff\xfe" else "utf-16-be")
    for chunks in ([page], [page[:10], page[10:]]):
        inner = raw_app(chunks=chunks)
        assert await call(wrap(inner)) == await call(inner)


@pytest.mark.parametrize("where", ["first", "middle", "split", "split at ?", "last", "tiny chunks"])
async def test_a_tag_already_in_the_page_is_seen_in_any_chunk(where: str) -> None:
    existing = EXISTING
    filler = b"<p>" + b"x" * 5000 + b"</p>"
    chunks = [b"<html><head>", filler, filler, b"</body></html>"]
    if where == "first":
        chunks[0] += existing
    elif where == "middle":
        chunks[1] = filler[:100] + existing + filler[100:]
    elif where.startswith("split"):
        cut = existing.index(b"?") + 1 if where == "split at ?" else 20
        chunks[1] += existing[:cut]
        chunks[2] = existing[cut:] + chunks[2]
    else:
        chunks[3] = existing + chunks[3]
    page = b"".join(chunks)
    if where == "tiny chunks":
        page = b"<html><head>" + filler[:3000] + existing + filler[:3000] + b"</body></html>"
        chunks = [page[i : i + 7] for i in range(0, len(page), 7)]
    for declared in (False, True):
        headers = [(b"content-type", b"text/html")]
        if declared:
            headers.append((b"content-length", str(len(page)).encode()))
        sent = await call(wrap(raw_app(headers=headers, chunks=chunks)))
        body = body_of(sent)
        assert body.count(b"data-distreload=") == 1
        if declared:  # the length promised room for a tag: white space keeps it true
            assert len(body) == int(header(sent, b"content-length")[0])
            assert body.rstrip() == page.replace(b"</body>", b" " * len(TAG) + b"</body>").rstrip()
        else:
            assert body == page


async def test_a_long_tail_after_body_close_is_not_held_back() -> None:
    """More than HOLD_LIMIT after a </body> streams on; the tag then goes at the very end."""
    tail = b"<!-- x -->" * (HOLD_LIMIT // 10 + 100)
    chunks = [b"<html><body>a</body>", tail[: len(tail) // 2], tail[len(tail) // 2 :], b"</html>"]
    sent = await call(wrap(raw_app(chunks=chunks)))
    assert max(len(m.get("body", b"")) for m in sent if m["type"] == "http.response.body") < HOLD_LIMIT + 1024
    assert body_of(sent) == b"".join(chunks) + TAG


# --- Any page, any chunking -----------------------------------------------------------------------------

html_text = st.lists(
    st.sampled_from(
        [
            b"<p>",
            b"</p>",
            b"</body>",
            b"</BODY>",
            b"</bo",
            b"dy>",
            b"<body>",
            b"x",
            b"\xc3\xa9",
            b" ",
            b"\n",
            b"<",
            b"/",
            b">",
            b"</html>",
        ]
    ),
    max_size=CHUNK_WINDOW // 7,  # pages no longer than a chunk's window: every </body> is seen
).map(b"".join)


def expected_with_tag(page: bytes, tag: bytes) -> bytes:
    """Before the last </body> when what follows it is short enough to hold; else at the end."""
    index = page.lower().rfind(b"</body")
    if index == -1 or len(page) - index > SCAN_WINDOW:
        return page + tag
    return page[:index] + tag + page[index:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    page=html_text,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    declare_length=st.booleans(),
    cookies=st.integers(min_value=0, max_value=3),
)
def test_any_page_in_any_chunks_keeps_every_byte_plus_one_tag(
    page: bytes, cuts: list[int], declare_length: bool, cookies: int
) -> None:
    points = sorted({min(c, len(page)) for c in cuts})
    chunks = [page[a:b] for a, b in zip([0, *points], [*points, len(page)], strict=True)]
    headers = [(b"content-type", b"text/html; charset=utf-8")]
    headers += [(b"set-cookie", f"c{i}=1".encode()) for i in range(cookies)]
    if declare_length:
        headers.append((b"content-length", str(len(page)).encode()))
    app = wrap(raw_app(headers=headers, chunks=chunks))
    sent = asyncio.run(call(app))
    tag = TAG
    assert body_of(sent) == expected_with_tag(page, tag)
    assert header(sent, b"set-cookie") == [f"c{i}=1".encode() for i in range(cookies)]
    if declare_length:
        assert header(sent, b"content-length") == [str(len(page) + len(tag)).encode()]
    else:
        assert header(sent, b"content-length") == []
    assert sent[-1]["more_body"] is False


big_html = st.lists(
    st.sampled_from(
        [
            b"<p>" + b"word " * 50 + b"</p>\n",
            b"<div class='row'>",
            b"</div>",
            b"</body>",
            b"</bo",
            b"dy>",
            b"</BODY>",
            b"\xc3\xa9" * 10,
            b"<",
            b"/",
        ]
    ),
    min_size=20,
    max_size=400,
).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(page=big_html, cut_count=st.integers(min_value=0, max_value=30), data=st.data())
def test_pages_of_many_kilobytes_in_many_splits(page: bytes, cut_count: int, data: st.DataObject) -> None:
    """Pages up to ~100 KB cut anywhere: the tail window and the marker carried across chunks at work."""
    cuts = data.draw(
        st.lists(st.integers(min_value=0, max_value=len(page)), min_size=cut_count, max_size=cut_count)
    )
    points = sorted(set(cuts))
    chunks = [page[a:b] for a, b in zip([0, *points], [*points, len(page)], strict=True)]
    sent = asyncio.run(call(wrap(raw_app(chunks=chunks))))
    body = body_of(sent)
    assert body.replace(TAG, b"", 1) == page and body.count(TAG) == 1
    index = page.lower().rfind(b"</body")
    if index != -1 and len(page) - index <= min(SCAN_WINDOW, len(chunks[-1]) if chunks else 0):
        assert body == expected_with_tag(page, TAG)


@pytest.mark.parametrize(
    "headers",
    [
        [[b"Content-Type", b"text/html"], [b"Content-Length", b"28"]],  # lists, names in capitals
        [(b"x-first", b"1"), (b"CONTENT-LENGTH", b"28"), (b"content-type", b"text/html"), (b"x-last", b"2")],
    ],
)
async def test_headers_in_any_case_and_shape_are_read_and_the_length_grows(
    headers: list[list[bytes]],
) -> None:
    page = b"<html><body>hi</body></html>"
    sent = await call(wrap(raw_app(headers=headers, chunks=[page])))  # type: ignore[arg-type]
    assert body_of(sent) == b"<html><body>hi" + TAG + b"</body></html>"
    lengths = [value for name, value in headers_of(sent) if name.lower() == b"content-length"]
    assert lengths == [str(len(page) + len(TAG)).encode()]
    assert len(headers_of(sent)) == len(headers)


async def test_a_content_length_that_is_no_number_is_left_to_the_server() -> None:
    headers = [(b"content-type", b"text/html"), (b"content-length", b"many")]
    sent = await call(wrap(raw_app(headers=headers, chunks=[b"<body>x</body>"])))
    assert header(sent, b"content-length") == [] and body_of(sent) == b"<body>x" + TAG + b"</body>"


async def test_a_page_holding_a_tag_keeps_its_headers_as_the_app_sent_them() -> None:
    page = b"<html><body>" + TAG + b"</body></html>"
    headers = [(b"content-type", b"text/html"), (b"content-length", str(len(page)).encode())]
    sent = await call(wrap(raw_app(headers=headers, chunks=[page])))
    assert body_of(sent) == page and headers_of(sent) == headers


@pytest.mark.parametrize("size", [100, 9 * 1024, 64 * 1024])
@pytest.mark.parametrize("ending", [b"</body>\n</html>\n", b"</body></HTML>", b"</body><!-- </BODY> -->"])
async def test_a_page_in_one_message_of_any_size_gets_the_tag_before_its_last_body_close(
    size: int, ending: bytes
) -> None:
    """The tag goes before the last </body> in any case, however the page's head was copied."""
    page = b"<html><body>" + b"x" * size + ending
    headers = [(b"content-type", b"text/html"), (b"content-length", str(len(page)).encode())]
    sent = await call(wrap(raw_app(headers=headers, chunks=[page])))
    last = page.lower().rfind(b"</body")
    assert body_of(sent) == page[:last] + TAG + page[last:]
    assert header(sent, b"content-length") == [str(len(page) + len(TAG)).encode()]


async def test_a_page_with_question_marks_but_no_tag_gets_one_and_one_with_a_tag_after_them_none() -> None:
    links = b"".join(b'<a href="/items?page=%d">%d</a>' % (n, n) for n in range(20))
    without = b"<html><body>" + links + b"</body></html>"
    assert body_of(await call(wrap(raw_app(chunks=[without])))) == without.replace(
        b"</body>", TAG + b"</body>"
    )
    holding = b"<html><body>" + links + TAG + b"</body></html>"
    assert body_of(await call(wrap(raw_app(chunks=[holding])))) == holding


async def test_a_tag_split_across_two_chunks_after_many_question_marks_is_seen() -> None:
    page = b"<html><body>" + b"?q=1&" * 50 + TAG + b"</body></html>"
    cut = page.index(TAG) + len(TAG) // 2
    sent = await call(wrap(raw_app(chunks=[page[:cut], page[cut:]])))
    assert body_of(sent) == page


async def test_send_hands_back_what_the_app_awaits_for_pages_json_and_chunks() -> None:
    """The injection's send is a plain function: whatever it returns is awaited by the app, once."""
    html = [(b"content-type", b"text/html")]
    for headers, chunks in (
        (html, [b"<body>one</body>"]),
        ([(b"content-type", b"application/json")], [b"{}"]),
        (html, [b"<body>", b"x" * 70_000, b"</body>"]),
        (html, [b"<body>", b"", b"</bo", b"dy>"]),
    ):
        sent = await call(wrap(raw_app(headers=headers, chunks=chunks)))
        assert sent[0]["type"] == "http.response.start" and not sent[-1].get("more_body", False)
        joined = b"".join(chunks)
        assert body_of(sent) == (joined.replace(b"</body>", TAG + b"</body>") if headers is html else joined)

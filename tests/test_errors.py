"""The report of the worker's exception that the client's check request gets: which exception (raised, being
handled while the 500 is sent, or logged), what of it is shown, and that nothing else is touched."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from pathlib import Path
from typing import Any

import jinja2
import pytest
from django.template import Engine, TemplateSyntaxError
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from distreload import DistReload, errors
from distreload.broker import MemoryBroker
from distreload.config import Target

pytestmark = pytest.mark.anyio

CHECK = [(b"x-distreload-check", b"1")]


def read_settings(text: str) -> dict[str, Any]:
    settings: dict[str, Any] = json.loads(text)  # fails inside the standard library
    return settings


def scope_for(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/page",
        "raw_path": b"/page",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *(headers or [])],
        "server": ("test", 80),
        "client": ("127.0.0.1", 1234),
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def reported(app: Any, *, raises: type[BaseException] | None = None) -> list[Message]:
    """Every message ``serve_reporting_errors`` sends for ``app``; ``raises``: what must propagate."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    if raises is None:
        await errors.serve_reporting_errors(app, scope_for(CHECK), receive, send)
    else:
        with pytest.raises(raises):
            await errors.serve_reporting_errors(app, scope_for(CHECK), receive, send)
    return sent


def report_of(sent: list[Message]) -> dict[str, Any]:
    start = sent[0]
    assert dict(start["headers"])[b"content-type"] == b"application/vnd.distreload.error+json; charset=utf-8"
    body = b"".join(message.get("body", b"") for message in sent[1:])
    assert dict(start["headers"])[b"content-length"] == str(len(body)).encode()
    report: dict[str, Any] = json.loads(body)
    return report


# --- describe: what is shown ----------------------------------------------------------------------------


def test_the_report_names_the_exception_and_keeps_only_the_frames_in_the_users_code() -> None:
    try:
        read_settings("{not json")
    except ValueError as raised:
        exc = raised
    report = errors.describe(exc)
    assert report["type"] == "json.decoder.JSONDecodeError"
    assert report["message"].startswith("Expecting property name enclosed in double quotes")
    assert [(frame["file"], frame["function"]) for frame in report["frames"]] == [
        (
            "tests/test_errors.py",
            "test_the_report_names_the_exception_and_keeps_only_the_frames_in_the_users_code",
        ),
        ("tests/test_errors.py", "read_settings"),
    ]
    assert (
        report["frames"][1]["code"]
        == "settings: dict[str, Any] = json.loads(text)  # fails inside the standard library"
    )
    assert report["other_frames"] == len(traceback.extract_tb(exc.__traceback__)) - 2  # json's own
    assert report["location"] is None


class SettingsError(Exception):
    pass


def test_an_exception_is_named_as_python_prints_it() -> None:
    assert errors.type_name(KeyError("x")) == "KeyError"
    assert errors.type_name(SettingsError()) == "tests.test_errors.SettingsError"


def test_a_jinja2_syntax_error_points_at_the_templates_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text("<h1>{{ title }}</h1>\n<p>{{ greeting }</p>\n")
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(tmp_path))
    with pytest.raises(jinja2.TemplateSyntaxError) as raised:
        environment.get_template("page.html")
    report = errors.describe(raised.value)
    assert report["type"] == "jinja2.exceptions.TemplateSyntaxError"
    assert report["location"] == {
        "file": str(tmp_path / "page.html"),
        "line": 2,
        "code": "<p>{{ greeting }</p>",
    }


def test_a_django_template_syntax_error_points_at_the_templates_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text("<h1>{{ title }}</h1>\n{% if %}\n<p>x</p>\n{% endif %}\n")
    with pytest.raises(TemplateSyntaxError) as raised:
        Engine(dirs=[str(tmp_path)], debug=True).get_template("page.html")
    report = errors.describe(raised.value)
    assert report["type"] == "django.template.exceptions.TemplateSyntaxError"
    assert report["location"] == {"file": str(tmp_path / "page.html"), "line": 2, "code": "{% if %}"}


def test_the_location_is_found_on_what_caused_the_exception(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("value = (\n")
    try:
        try:
            compile(broken.read_text(), str(broken), "exec")
        except SyntaxError as exc:
            raise RuntimeError("the plugin did not load") from exc
    except RuntimeError as exc:
        report = errors.describe(exc)
    assert report["type"] == "RuntimeError" and report["message"] == "the plugin did not load"
    assert report["location"] == {"file": str(broken), "line": 1, "code": "value = ("}


def test_what_an_exception_was_raised_from_is_named_and_a_group_of_one_is_its_member() -> None:
    try:
        try:
            read_settings("{")
        except ValueError as exc:
            raise LookupError("no settings") from exc
    except LookupError as exc:
        group = ExceptionGroup("unhandled errors in a TaskGroup", [exc])
    report = errors.describe(group)
    assert report["type"] == "LookupError" and report["message"] == "no settings"
    assert report["causes"] == [
        "json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)"
    ]
    assert [frame["function"] for frame in report["frames"]] == [
        "test_what_an_exception_was_raised_from_is_named_and_a_group_of_one_is_its_member"
    ]
    two = errors.describe(ExceptionGroup("two", [KeyError("a"), KeyError("b")]))
    assert two["type"] == "ExceptionGroup" and two["causes"] == []


def test_library_and_distreload_files_are_not_the_users_code() -> None:
    assert errors.is_user_code(__file__)
    assert not errors.is_user_code(json.__file__)
    assert not errors.is_user_code(pytest.__file__)
    assert not errors.is_user_code(errors.__file__)
    assert not errors.is_user_code("<frozen runpy>")


# --- which exception, and what is sent ------------------------------------------------------------------


async def test_an_exception_raised_after_the_500_was_sent_is_reported_and_still_raised() -> None:
    # Starlette's ServerErrorMiddleware: "Internal Server Error" sent, then the exception re-raised.
    def broken(request: Request) -> PlainTextResponse:
        read_settings("{not json")
        raise AssertionError("not reached")

    sent = await reported(Starlette(routes=[Route("/page", broken)]), raises=json.JSONDecodeError)
    assert sent[0]["status"] == 500
    report = report_of(sent)
    assert report["type"] == "json.decoder.JSONDecodeError"
    assert [frame["function"] for frame in report["frames"]] == ["broken", "read_settings"]


async def test_an_app_that_raises_before_answering_gets_a_500_with_the_report() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise LookupError("no such page")

    sent = await reported(app, raises=LookupError)
    assert sent[0]["status"] == 500 and report_of(sent)["message"] == "no such page"


async def test_an_exception_handled_while_the_500_is_sent_is_reported() -> None:
    # Litestar answers from inside its except block and raises nothing.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            read_settings("[")
        except ValueError:
            await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)

    report = report_of(await reported(app))
    assert (
        report["type"] == "json.decoder.JSONDecodeError"
        and report["frames"][-1]["function"] == "read_settings"
    )


async def test_an_exception_logged_in_the_request_is_reported_even_from_a_logger_that_keeps_to_itself() -> (
    None
):
    # Django logs the exception with exc_info (from another thread), then sends its 500 later.
    quiet = logging.getLogger("tests.errors.quiet")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())

    def handle() -> None:
        try:
            read_settings("{")
        except ValueError:
            quiet.error("Internal Server Error: /page", exc_info=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.to_thread(handle)
        await PlainTextResponse("<h1>Server Error (500)</h1>", 500)(scope, receive, send)

    sent = await reported(app)
    assert sent[0]["status"] == 500 and report_of(sent)["frames"][-1]["function"] == "read_settings"


async def test_an_error_status_without_an_exception_keeps_the_apps_own_answer() -> None:
    answer = PlainTextResponse("down for maintenance", 503, headers={"retry-after": "30"})
    sent = await reported(answer)
    assert sent[0]["status"] == 503 and (b"retry-after", b"30") in sent[0]["headers"]
    assert b"".join(message.get("body", b"") for message in sent[1:]) == b"down for maintenance"


async def test_an_answer_below_500_streams_through_as_it_is_sent() -> None:
    more = asyncio.Event()

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await more.wait()
        await send({"type": "http.response.body", "body": b"second"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    task = asyncio.ensure_future(errors.serve_reporting_errors(streaming, scope_for(CHECK), receive, send))
    while len(sent) < 2:
        await asyncio.sleep(0)
    assert sent[1]["body"] == b"first" and not task.done()
    more.set()
    await task
    assert [message.get("body") for message in sent[1:]] == [b"first", b"second"]


# --- only the page that asked ---------------------------------------------------------------------------


def fastapi_that_fails() -> FastAPI:
    api = FastAPI()

    @api.get("/page")
    async def page() -> dict[str, Any]:
        return read_settings("{")

    return api


async def call_app(app: Any, headers: list[tuple[bytes, bytes]] | None = None) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(json.JSONDecodeError):
        await app(scope_for(headers), receive, send)
    return sent


async def test_only_the_check_request_gets_the_report_through_distreload() -> None:
    api = fastapi_that_fails()
    wrapped = DistReload(api, enabled=True, broker=MemoryBroker(Target("memory://", "test")), build_id="b1")
    ordinary = await call_app(wrapped)
    assert ordinary == await call_app(api)
    assert b"".join(message.get("body", b"") for message in ordinary[1:]) == b"Internal Server Error"
    report = report_of(await call_app(wrapped, CHECK))
    assert report["type"] == "json.decoder.JSONDecodeError"
    assert [frame["function"] for frame in report["frames"]] == ["page", "read_settings"]


async def test_a_check_header_sent_from_another_sites_page_gets_the_frameworks_answer() -> None:
    api = fastapi_that_fails()
    wrapped = DistReload(api, enabled=True, broker=MemoryBroker(Target("memory://", "test")), build_id="b1")
    cross_site = [*CHECK, (b"sec-fetch-site", b"cross-site")]
    assert await call_app(wrapped, cross_site) == await call_app(api, cross_site)
    same_origin = [*CHECK, (b"sec-fetch-site", b"same-origin")]
    assert report_of(await call_app(wrapped, same_origin))["type"] == "json.decoder.JSONDecodeError"


async def test_off_the_check_header_changes_nothing() -> None:
    api = fastapi_that_fails()
    assert await call_app(DistReload(api, enabled=False), CHECK) == await call_app(api, CHECK)

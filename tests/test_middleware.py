"""``DistReload``: routing, the app's life from start-up to shutdown, and being off."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from types import FrameType

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

import distreload
from distreload import DistReload
from distreload import middleware as middleware_module
from distreload.broker import MemoryBroker
from distreload.config import ConfigError, Target
from distreload.protocol import ClusterVersion, ReloadRequest
from distreload.shutdown import ExitWatch

from .asgi import body_of, call, header, raw_app

pytestmark = pytest.mark.anyio


def memory_broker() -> MemoryBroker:
    return MemoryBroker(Target("memory://", "test"))


def wrap(app: object, **options: object) -> DistReload:
    options.setdefault("enabled", True)
    options.setdefault("broker", memory_broker())
    options.setdefault("build_id", "build1")
    return DistReload(app, **options)  # type: ignore[arg-type]


async def test_pages_get_the_tag_and_the_endpoint_is_served_under_root_path() -> None:
    app = wrap(raw_app())
    sent = await call(app)
    assert body_of(sent) == b"<html><body>hi" + app.tag_for({"root_path": ""}) + b"</body></html>"
    assert b'data-distreload-build="build1"' in body_of(sent)
    probe = await call(app, "HEAD", "/---distreload---", root_path="/app")
    assert probe[0]["status"] == 200 and header(probe, b"x-distreload-build") == [b"build1"]


async def test_json_through_fastapi_is_byte_identical() -> None:
    api = FastAPI()

    @api.get("/data")
    async def data() -> JSONResponse:
        return JSONResponse({"a": [1, 2, 3]}, headers={"set-cookie": "x=1"})

    assert await call(wrap(api), path="/data") == await call(api, path="/data")


async def test_off_serves_no_script_and_no_endpoint() -> None:
    assert body_of(await call(wrap(raw_app(), enabled=False))) == b"<html><body>hi</body></html>"

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("app 404", 404)(scope, receive, send)

    sent = await call(wrap(not_found, enabled=False), path="/---distreload---/client.js")
    assert sent[0]["status"] == 404 and body_of(sent) == b"app 404"


def test_off_by_default_says_so_once_with_how_to_turn_it_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DISTRELOAD_ENABLED", raising=False)
    monkeypatch.setattr(middleware_module, "_said_off", False)
    with caplog.at_level(logging.INFO, logger="distreload"):
        for _ in range(3):
            assert DistReload(raw_app()).enabled is False
            assert DistReload(raw_app(), enabled="").enabled is False  # a setting read empty: not given
    lines = [r for r in caplog.records if "distreload is off" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "DISTRELOAD_ENABLED=1" in lines[0].getMessage() and "enabled=True" in lines[0].getMessage()


def test_turned_off_explicitly_says_so_only_at_info(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "0")
    monkeypatch.setattr(middleware_module, "_said_off", False)
    with caplog.at_level(logging.INFO, logger="distreload"):
        assert DistReload(raw_app()).enabled is False
    assert [r.levelno for r in caplog.records if "distreload is off" in r.getMessage()] == [logging.INFO]
    monkeypatch.delenv("DISTRELOAD_ENABLED")
    monkeypatch.setattr(middleware_module, "_said_off", False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="distreload"):
        assert DistReload(raw_app(), enabled="false").enabled is False
    assert [r.levelno for r in caplog.records if "distreload is off" in r.getMessage()] == [logging.INFO]


def test_enabled_comes_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "yes")
    assert DistReload(raw_app(), broker=memory_broker()).enabled is True
    monkeypatch.setenv("DISTRELOAD_ENABLED", "0")
    assert DistReload(raw_app(), broker=memory_broker()).enabled is False


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "DISTRELOAD_ENABLED",
            "maybe",
            "DISTRELOAD_ENABLED: 'maybe' is not one of 1/0, true/false, yes/no, on/off",
        ),
        ("DISTRELOAD_REDIS_URL", "127.0.0.1:6391", "DISTRELOAD_REDIS_URL: '127.0.0.1:6391' has scheme"),
        ("DISTRELOAD_NAMESPACE", "two words", "DISTRELOAD_NAMESPACE: 'two words' is not a valid namespace"),
    ],
)
def test_a_bad_environment_value_stops_the_process_with_one_line(
    variable: str, value: str, line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "1")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        DistReload(raw_app())
    assert exited.value.code == middleware_module.BAD_ENVIRONMENT_EXIT_STATUS
    printed = capsys.readouterr().err.splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"distreload: {line}"), printed


def test_a_bad_argument_is_an_error_in_the_code_not_an_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "1")
    with pytest.raises(ConfigError, match="^redis_url: "):
        DistReload(raw_app(), redis_url="127.0.0.1:6391")


@pytest.mark.parametrize("word", ["false", "0", "off", "no"])
async def test_enabled_false_as_a_string_is_off(word: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTRELOAD_ENABLED", raising=False)
    app = DistReload(raw_app(), enabled=word, broker=memory_broker())
    assert not app.enabled
    assert body_of(await call(app)) == b"<html><body>hi</body></html>"


def test_an_enabled_that_is_no_known_word_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="^enabled: 'maybe' is not one of 1/0, true/false, yes/no, on/off$"):
        DistReload(raw_app(), enabled="maybe", broker=memory_broker())


async def test_lifespan_state_and_startup_are_preserved() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    api = FastAPI(lifespan=lifespan)

    @api.get("/state")
    async def state(request: Request) -> dict[str, str]:
        return {"db": request.state.db}

    app = wrap(api)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        assert (await client.get("/state")).json() == {"db": "connected"}
        assert (await client.head("/---distreload---")).status_code == 200
        assert app.broker.listening
    assert events == ["startup", "shutdown"]
    assert not app.broker.listening  # the app's hub is let go with its shutdown


async def django_like(scope: Scope, receive: Receive, send: Send) -> None:
    """What Django's ASGI application does with anything but HTTP."""
    if scope["type"] != "http":
        raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
    await raw_app()(scope, receive, send)


async def returns_at_once(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await raw_app()(scope, receive, send)


@pytest.mark.parametrize("app", [django_like, returns_at_once], ids=["raises", "returns"])
async def test_an_app_that_refuses_the_lifespan_still_starts_and_stops_distreload_with_the_server(
    app: ASGIApp,
) -> None:
    """Servers take a lifespan error as "no lifespan", or refuse to start (uvicorn --lifespan on):
    distreload answers the lifespan itself."""
    wrapped = wrap(app)
    async with LifespanManager(wrapped) as manager:  # raises if start-up or shutdown is not completed
        assert wrapped.broker.listening
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as client:
            assert (await client.get("/")).text.count("data-distreload=") == 1
    assert not wrapped.broker.listening


async def test_an_app_whose_own_start_up_fails_is_reported_as_failing() -> None:
    async def failing_startup(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("no database")

    with pytest.raises(RuntimeError, match="no database"):
        async with LifespanManager(wrap(failing_startup)):
            pass


@pytest.fixture
def server_handlers() -> Iterator[Callable[[int, FrameType | None], None]]:
    """A server's own SIGINT/SIGTERM handler installed (distreload chains in front of it); the originals
    are put back afterwards."""
    originals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle_exit(sig: int, frame: FrameType | None) -> None: ...

    for signum in originals:
        signal.signal(signum, handle_exit)
    yield handle_exit
    for signum, original in originals.items():
        signal.signal(signum, original)


async def startup_raises(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("no database")


async def startup_says_failed(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


@pytest.mark.parametrize("app", [startup_raises, startup_says_failed], ids=["raises", "says-failed"])
async def test_a_failed_start_up_leaves_no_subscription_no_exit_watch_and_no_chained_handler(
    app: ASGIApp, server_handlers: Callable[[int, FrameType | None], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = ExitWatch()  # this app's alone: apps other tests left running share the process's one
    monkeypatch.setattr(middleware_module, "exit_watch", lambda: watch)
    wrapped = wrap(app)
    with pytest.raises(Exception):  # noqa: B017 - asgi_lifespan's own error, or the app's
        async with LifespanManager(wrapped):
            pass
    assert wrapped.broker is not None and not wrapped.broker.listening
    assert signal.getsignal(signal.SIGTERM) is server_handlers
    assert signal.getsignal(signal.SIGINT) is server_handlers
    assert len(watch._hubs) == 0 and watch._poll is None and watch._event_waiter is None


async def test_off_has_no_broker_no_hub_and_starting_or_shutting_down_does_nothing(
    server_handlers: Callable[[int, FrameType | None], None],
) -> None:
    app = wrap(raw_app(), enabled=False)
    assert (app.broker, app.hub, app.endpoint) == (None, None, None)
    await app.ensure_started()
    await app.shutdown()
    assert body_of(await call(app)) == b"<html><body>hi</body></html>"
    assert signal.getsignal(signal.SIGTERM) is server_handlers


async def test_started_on_the_first_request_when_the_server_runs_no_lifespan() -> None:
    app = wrap(raw_app())
    assert not app.broker.listening
    await call(app)
    assert app.broker.listening
    await app.shutdown()
    assert not app.broker.listening


async def test_on_reload_runs_sync_and_async_callbacks_in_every_app() -> None:
    calls: list[str] = []

    async def async_callback(reload: distreload.Reload) -> None:
        calls.append(f"async {reload.kind}")

    broker = memory_broker()
    apps = [
        wrap(raw_app(), broker=broker, on_reload=lambda reload: calls.append(f"sync {reload.kind}")),
        wrap(raw_app(), broker=broker, on_reload=async_callback),
    ]
    for app in apps:
        await app.ensure_started()
    await broker.publish(ReloadRequest("css", ("/a.css",)))
    await asyncio.sleep(0.01)
    assert calls == ["sync css", "async css"]
    for app in apps:
        await app.shutdown()


async def test_apps_made_and_dropped_leave_nothing_on_the_broker() -> None:
    broker = memory_broker()
    for _ in range(1000):
        wrap(raw_app(), broker=broker)
    started = [wrap(raw_app(), broker=broker) for _ in range(10)]
    for app in started:
        await app.ensure_started()
    del app, started
    gc.collect()
    assert len(broker._listeners) == 0
    assert (await broker.publish(ReloadRequest())).receivers == 0


async def test_the_tag_handed_out_again_follows_version_root_path_and_nonce() -> None:
    app = wrap(raw_app())
    first = app.tag_for({"root_path": "", "state": {}})
    assert app.tag_for({"root_path": ""}) is first  # the last plain tag, as long as it holds
    with_nonce = app.tag_for({"root_path": "", "state": {"csp_nonce": "n0nce"}})
    assert b'nonce="n0nce"' in with_nonce and app.tag_for({"root_path": "", "csp_nonce": "n2"}) != first
    assert b"/app/---distreload---/client.js" in app.tag_for({"root_path": "/app"})
    app._broker.version = ClusterVersion(app._broker.version.epoch, app._broker.version.number + 1)
    moved = app.tag_for({"root_path": ""})
    assert moved != first and f'data-distreload-version="{app._broker.version}"'.encode() in moved

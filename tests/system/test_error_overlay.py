"""The overlay shows the worker's own exception when a page breaks under a reload, in Chromium through the
real client, on uvicorn with two workers and Redis: FastAPI with a Jinja2 template syntax error, a Starlette
and a Litestar handler raising, and a Django template syntax error. The exception's type and message, the
template's file and line and the frames of the user's code are shown; the framework's body is not. Ordinary
requests (no check header) get the framework's own answer, byte for byte.
``DISTRELOAD_WRITE_DOCS=1`` makes the FastAPI case write docs/error-overlay.png.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ROOT, ServerFactory, cli_published, unique_namespace
from ..test_client import CONNECTED, WRITE_DOCS, Tab, open_tab, reload_counts, wait_until
from .serving import require

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.slow]

GOOD_TEMPLATE = """<!doctype html>
<html><head><title>{{ framework }}</title></head>
<body><h1>{{ framework }}</h1>
<p id="greeting">hello</p>
</body></html>
"""
JINJA2_BROKEN_LINE = '<p id="greeting">{{ greeting }</p>'
DJANGO_BROKEN_LINE = '{% if %}<p id="greeting">hello</p>{% endif %}'
TEMPLATE_LINE_4 = 'File "templates/page.html", line 4\n'  # relative to the project, where the server runs
GOOD_SETTINGS = '{"greeting": "hello"}'
APPS = ROOT / "tests" / "apps"
TAG = re.compile(rb'<script src="/---distreload---/client\.js[^>]*></script>')


@dataclass(frozen=True)
class Breakage:
    """One framework's page and how a user breaks it; what the overlay must then say."""

    name: str
    app: str
    package: str
    file: str  # in the project directory: what the test rewrites
    broken: str
    shown: tuple[str, ...]  # what the overlay must hold (besides the user's frame)
    user_frame: str  # 'File "tests/apps/...", line N, in <function>'


def broken_template(line: str) -> str:
    return GOOD_TEMPLATE.replace('<p id="greeting">hello</p>', line)


BREAKAGES = [
    Breakage(
        "fastapi-jinja2",
        "tests.apps.failing_app:fastapi_app",
        "jinja2",
        "templates/page.html",
        broken_template(JINJA2_BROKEN_LINE),
        ("jinja2.exceptions.TemplateSyntaxError: unexpected '}'", TEMPLATE_LINE_4, JINJA2_BROKEN_LINE),
        "in fastapi_page",
    ),
    Breakage(
        "starlette",
        "tests.apps.failing_app:starlette_app",
        "starlette",
        "settings.json",
        '{"greetings": "hello"}',
        ("KeyError: 'greeting'", 'return str(settings["greeting"])'),
        "in starlette_page",
    ),
    Breakage(
        "litestar",
        "tests.apps.failing_app:litestar_app",
        "litestar",
        "settings.json",
        '{"greeting": "hello",}',
        ("json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes",),
        "in litestar_page",
    ),
    Breakage(
        "django-templates",
        "tests.apps.failing_django_app:app",
        "django",
        "templates/page.html",
        broken_template(DJANGO_BROKEN_LINE),
        (
            "django.template.exceptions.TemplateSyntaxError: Unexpected end of expression in if tag.",
            TEMPLATE_LINE_4,
            DJANGO_BROKEN_LINE,
        ),
        "in html_page",
    ),
]


def project_for(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "templates").mkdir(parents=True)
    (project / "templates" / "page.html").write_text(GOOD_TEMPLATE)
    (project / "settings.json").write_text(GOOD_SETTINGS)
    return project


def fetch(url: str) -> tuple[int, str, bytes]:
    """An ordinary GET, as a browser's navigation or curl makes it: status, content type, body."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def overlay_of(tab: Tab) -> str:
    return str(tab.ui()["overlay"] or "")


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[breakage.name for breakage in BREAKAGES])
def test_the_overlay_shows_the_workers_exception_and_only_the_page_that_asked_gets_it(
    breakage: Breakage,
    tmp_path: Path,
    start_server: ServerFactory,
    new_context: Callable[..., Any],
    shared_redis_url: str,
) -> None:
    require(breakage.package)
    project = project_for(tmp_path)
    namespace = unique_namespace()
    env = {"FAILING_APP_DIR": str(project), "DISTRELOAD_REDIS_URL": shared_redis_url}
    # Run from the project, as a user does: its files are shown relative to it.
    server = start_server(
        breakage.app, workers=2, env={**env, "DISTRELOAD_NAMESPACE": namespace}, cwd=project
    )
    url = f"{server.base_url}/page"
    tab = open_tab(new_context(viewport={"width": 1100, "height": 680}), url)
    assert tab.ui() == {"overlay": None, "indicator": None}

    (project / breakage.file).write_text(breakage.broken)
    cli_published(shared_redis_url, namespace)
    wait_until(lambda: "waiting for the server" in overlay_of(tab), 15, tab, "the overlay")
    overlay = overlay_of(tab)
    print(f"\n{breakage.name}: the overlay says\n{overlay}")
    assert "the server answered 500" in overlay, overlay
    for expected in breakage.shown:
        assert expected in overlay, overlay
    frames = [line.strip() for line in overlay.splitlines() if line.strip().startswith('File "')]
    assert any(
        f'File "{APPS}/failing_' in frame and frame.endswith(breakage.user_frame) for frame in frames
    ), overlay
    # Only the user's code: no frame of the framework, a library, Python or distreload.
    assert not any(re.search(r"site-packages|/lib/python3|distreload/", frame) for frame in frames), overlay
    assert "Internal Server Error" not in overlay.replace("answered 500 Internal Server Error", ""), overlay
    assert tab.reloads == 0
    if WRITE_DOCS and breakage.name == "fastapi-jinja2":
        (ROOT / "docs").mkdir(exist_ok=True)
        tab.page.screenshot(path=str(ROOT / "docs" / "error-overlay.png"))

    # An ordinary request gets the framework's own answer (the plain twin's, tag aside): no report.
    status, content_type, body = fetch(url)
    plain_status, plain_type, plain_body = fetch(f"{server.base_url}/plain/page")
    assert (status, content_type) == (plain_status, plain_type) and status == 500
    if breakage.package != "django":  # Django's debug page shows the request's own details
        assert TAG.sub(b"", body) == plain_body
    assert b"distreload.error" not in body and "vnd.distreload" not in content_type

    # Mended: the overlay goes and the page reloads onto the good page, once.
    (project / breakage.file).write_text(GOOD_TEMPLATE if breakage.file.endswith(".html") else GOOD_SETTINGS)
    wait_until(lambda: reload_counts([tab]) == [1], 30, tab, "the reload once the page is mended")
    tab.page.wait_for_function(CONNECTED, timeout=20_000)
    assert tab.ui() == {"overlay": None, "indicator": None}
    assert tab.text("#greeting") == "hello"

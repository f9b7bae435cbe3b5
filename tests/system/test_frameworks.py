"""Every framework behind distreload, each served by a real server (a different one for each; Django on
three), with Redis: the same four checks as every server gets (serving.py).

Django's ASGI application refuses the lifespan protocol (it raises on a lifespan scope); distreload then
completes the lifespan itself, so it starts with the server even under ``uvicorn --lifespan on``, where a
lifespan error is fatal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .serving import (
    Configuration,
    Served,
    check_json_is_untouched,
    check_late_reloads_all_arrive,
    check_page_gets_exactly_one_tag,
    check_sigterm_stops_promptly,
    require,
    serving,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

COMPACT_JSON = b'{"text":"</body> stays in JSON","numbers":[1,2,3]}'
SPACED_JSON = b'{"text": "</body> stays in JSON", "numbers": [1, 2, 3]}'  # json.dumps' defaults: Django
SORTED_JSON = b'{"numbers":[1,2,3],"text":"</body> stays in JSON"}\n'  # Quart's jsonify


@dataclass(frozen=True)
class Framework:
    package: str
    title: bytes  # the page's title and heading
    configuration: Configuration
    json: bytes = COMPACT_JSON

    @property
    def page(self) -> bytes:
        return (
            b"<!doctype html><html><head><title>" + self.title + b"</title></head>"
            b"<body><h1>" + self.title + b'</h1><p id="code">first</p></body></html>'
        )


def on(name: str, app: str, server: str, workers: int = 1, *extra_args: str) -> Configuration:
    return Configuration(name, f"tests.apps.{app}:app", server, workers, extra_args)


FRAMEWORKS = [
    Framework("fastapi", b"FastAPI", on("fastapi-on-gunicorn", "fastapi_app", "gunicorn", 2)),
    Framework("starlette", b"Starlette", on("starlette-on-daphne", "starlette_app", "daphne")),
    Framework("litestar", b"Litestar", on("litestar-on-granian", "litestar_app", "granian", 2)),
    Framework("quart", b"Quart", on("quart-on-hypercorn", "quart_app", "hypercorn", 2), SORTED_JSON),
    # --lifespan on: a lifespan error would stop uvicorn at start-up.
    Framework(
        "django",
        b"Django",
        on("django-on-uvicorn-lifespan-on", "django_app", "uvicorn", 1, "--lifespan", "on"),
        SPACED_JSON,
    ),
    Framework("django", b"Django", on("django-on-granian", "django_app", "granian", 2), SPACED_JSON),
    Framework("django", b"Django", on("django-on-daphne", "django_app", "daphne"), SPACED_JSON),
]


@pytest.fixture(scope="module", params=FRAMEWORKS, ids=[f.configuration.name for f in FRAMEWORKS])
def framework(request: pytest.FixtureRequest) -> Framework:
    chosen: Framework = request.param
    require(chosen.package)
    return chosen


@pytest.fixture(scope="module")
def served(
    framework: Framework, tmp_path_factory: pytest.TempPathFactory, shared_redis_url: str
) -> Iterator[Served]:
    configuration = framework.configuration
    with serving(configuration, tmp_path_factory.mktemp(configuration.name), shared_redis_url) as served:
        yield served


# The checks run in this order on each configuration's one server; the last one stops it.


def test_a_page_gets_exactly_one_tag(served: Served, framework: Framework) -> None:
    check_page_gets_exactly_one_tag(served, framework.page)


def test_json_is_byte_identical_to_the_app_without_distreload(served: Served, framework: Framework) -> None:
    check_json_is_untouched(served, framework.json)


def test_reloads_published_long_after_the_heartbeats_began_reach_every_stream(served: Served) -> None:
    check_late_reloads_all_arrive(served)


def test_sigterm_with_streams_open_stops_the_server_within_2_s(served: Served) -> None:
    check_sigterm_stops_promptly(served)

"""Django's ASGI application wrapped in DistReload; this module is its own minimal settings module.

Django answers a lifespan scope with an exception ("Django can only handle ASGI/HTTP connections"), so
distreload completes the lifespan itself: it starts with the server even where a lifespan error is fatal
(uvicorn ``--lifespan on``).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from distreload import DistReload
from tests.apps.twin import DATA, distreload_options, page, with_plain_twin

# Settings: this module, read by Django through DJANGO_SETTINGS_MODULE.
SECRET_KEY = "distreload-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = __name__
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, object] = {}
USE_TZ = True


async def html_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(page("Django"))


async def as_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(DATA)


urlpatterns = [path("page", html_page), path("json", as_json)]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
inner = get_asgi_application()
app = with_plain_twin(DistReload(inner, **distreload_options()), inner)

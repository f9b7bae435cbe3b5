"""Django rendering a template from the project directory named by ``FAILING_APP_DIR``
(``templates/page.html``), which a test breaks as an editor would; DEBUG on, as in development. This module
is its own minimal settings module. ``app``, with its unwrapped twin under ``/plain/...``.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.asgi import get_asgi_application
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from distreload import DistReload
from tests.apps.twin import with_plain_twin

PROJECT = Path(os.environ.get("FAILING_APP_DIR", "."))

# Settings: this module, read by Django through DJANGO_SETTINGS_MODULE.
SECRET_KEY = "distreload-tests-only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = __name__
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, object] = {}
USE_TZ = True
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [str(PROJECT / "templates")],
        # Read on every render (no cached loader): the test edits the template under a running server.
        "OPTIONS": {"loaders": ["django.template.loaders.filesystem.Loader"]},
    }
]


async def html_page(request: HttpRequest) -> HttpResponse:
    return render(request, "page.html", {"framework": "Django"})


urlpatterns = [path("page", html_page)]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
inner = get_asgi_application()
app = with_plain_twin(DistReload(inner), inner)

"""The drop-in for fastapi-reloader: its public names, working as they do there, across every worker.

Using one of these is the user's opt-in, as it is in fastapi-reloader: they are on unless
``DISTRELOAD_ENABLED=0`` (or ``enabled=False``) says otherwise, where ``DistReload(app)`` is off unless
enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import copy
from inspect import ismethod
from types import MethodType
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp

from . import config
from .injector import HtmlInjector
from .middleware import DistReload, refusing_to_start_on_a_bad_environment


class UniversalMiddleware(Middleware):
    """One object usable in a Starlette ``middleware=[...]`` list, with ``add_middleware`` and as
    ``wrapper(app)``; keyword options pass through: ``app.add_middleware(auto_refresh_middleware, ...)``."""

    def __init__(self, asgi_middleware: Callable[..., ASGIApp]) -> None:
        self.fn = asgi_middleware
        super().__init__(self)

    def __call__(self, app: ASGIApp, *args: Any, **options: Any) -> ASGIApp:
        return self.fn(app, *args, **options)


def _opted_in(options: dict[str, Any]) -> dict[str, Any]:
    with refusing_to_start_on_a_bad_environment():
        return {**options, "enabled": config.resolve_enabled(options.get("enabled"), default=True)}


def _injection_only(app: ASGIApp, **options: Any) -> ASGIApp:
    return DistReload(app, routes=False, **_opted_in(options))


def _routes_only(app: ASGIApp, **options: Any) -> ASGIApp:
    return DistReload(app, inject=False, **_opted_in(options))


html_injection_middleware = UniversalMiddleware(_injection_only)
"""Injects the browser script into HTML pages."""

reloader_route_middleware = UniversalMiddleware(_routes_only)
"""Serves the reload endpoint (``/---distreload---``) in front of the app."""


def patch_for_auto_reloading(app: ASGIApp, **options: Any) -> ASGIApp:
    """Return ``app`` with live reload: the endpoint in front, the injector inside its middleware.

    For a Starlette/FastAPI app the injector goes innermost, so compression the app adds still compresses
    the page after the tag is in; the original app object is left untouched.
    """
    from starlette.applications import Starlette

    options = _opted_in(options)
    if not isinstance(app, Starlette) or not app.user_middleware:
        return DistReload(app, **options)
    patched = copy(app)
    outer = DistReload(patched, inject=False, **options)
    if not outer.enabled:
        return outer
    patched.user_middleware = [*app.user_middleware, Middleware(HtmlInjector, tag_for=outer.tag_for)]
    patched.middleware_stack = None
    # Instrumentation (OpenTelemetry and others) binds methods to the original object; rebind them.
    for name in dir(patched):
        method = getattr(patched, name, None)
        if ismethod(method) and method.__self__ is app:
            setattr(patched, name, MethodType(method.__func__, patched))
    return outer


auto_refresh_middleware = UniversalMiddleware(patch_for_auto_reloading)
"""Routes and injection together: the whole of distreload in one middleware."""

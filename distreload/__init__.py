"""distreload: browser live-reload for ASGI apps running as many workers on many hosts."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Names resolve on first use, so `distreload publish` does not pay for importing Starlette.
_EXPORTS = {
    "ClusterVersion": "protocol",
    "PublishError": "protocol",
    "PublishResult": "protocol",
    "Reload": "protocol",
    "ConfigError": "config",
    "DistReload": "middleware",
    "UniversalMiddleware": "compat",
    "auto_refresh_middleware": "compat",
    "html_injection_middleware": "compat",
    "patch_for_auto_reloading": "compat",
    "reloader_route_middleware": "compat",
    "send_reload_signal": "publisher",
    "send_reload_signal_async": "publisher",
}

__all__ = [
    "ClusterVersion",
    "ConfigError",
    "DistReload",
    "PublishError",
    "PublishResult",
    "Reload",
    "UniversalMiddleware",
    "__version__",
    "auto_refresh_middleware",
    "html_injection_middleware",
    "patch_for_auto_reloading",
    "reloader_route_middleware",
    "send_reload_signal",
    "send_reload_signal_async",
]

if TYPE_CHECKING:
    from .compat import (
        UniversalMiddleware,
        auto_refresh_middleware,
        html_injection_middleware,
        patch_for_auto_reloading,
        reloader_route_middleware,
    )
    from .config import ConfigError
    from .middleware import DistReload
    from .protocol import ClusterVersion, PublishError, PublishResult, Reload
    from .publisher import send_reload_signal, send_reload_signal_async


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distreload' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

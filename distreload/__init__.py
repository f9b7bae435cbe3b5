"""distreload: browser live-reload for ASGI apps running as many workers on many hosts."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Names resolve on first use, so `distreload publish` does not pay for importing Starlette.
_EXPORTS = {
    "ClusterVersion": "protocol",
    "PublishError": "protocol",
    "PublishResult": "protocol",
    "Reload": "protocol",
    "ConfigError": "config",
    "DistReload": "middleware",
    "UniversalMiddleware": "middleware",
    "auto_refresh_middleware": "middleware",
    "html_injection_middleware": "middleware",
    "patch_for_auto_reloading": "middleware",
    "reloader_route_middleware": "middleware",
    "send_reload_signal": "middleware",
    "send_reload_signal_async": "middleware",
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
    from .config import ConfigError
    from .middleware import (
        DistReload,
        UniversalMiddleware,
        auto_refresh_middleware,
        html_injection_middleware,
        patch_for_auto_reloading,
        reloader_route_middleware,
        send_reload_signal,
        send_reload_signal_async,
    )
    from .protocol import ClusterVersion, PublishError, PublishResult, Reload


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distreload' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

"""The script tag the injector places in every page: where the endpoint is, the version and build the page
was rendered at, the browser options, and the page's CSP nonce."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import Scope

from .config import ConfigError
from .protocol import ClusterVersion

NonceSource = Callable[[Scope], str | None]

PRESENT_MARKER = b"data-distreload"  # in every tag distreload writes: a page carrying it has the script


def default_csp_nonce(scope: Scope) -> str | None:
    """The nonce an app put in ``request.state.csp_nonce`` (or ``scope["csp_nonce"]``)."""
    state = scope.get("state")
    nonce = None
    if type(state) is dict or isinstance(state, Mapping):  # the plain dict first: an ABC check costs
        nonce = state.get("csp_nonce")
    if nonce is None:
        nonce = scope.get("csp_nonce")
    return nonce if isinstance(nonce, str) and nonce else None


# The browser script's options (``client_options=``), sent as JSON in ``data-distreload-options``:
#   message_prefix          text before every console line                      "[distreload]"
#   connected_message       logged once the page is connected                   "connected"
#   reconnect_message       logged before each retry; ${reconnectInterval} becomes the wait in ms
#   reconnect_interval      base wait before the first retry, in ms (doubles-ish with jitter)  1000
#   max_reconnect_interval  the longest wait between retries, in ms             10000
#   silent                  true: nothing on the console                        false
#   share_connection        false: one connection per tab instead of one shared by all tabs  true
#   overlay                 false: reload onto an error page instead of showing it in an overlay  true
#   indicator               false: no mark in the page while the stream is lost or paused  true
# fast-hot-reload's names are accepted too and mean the same, and so is 0.1's shared_worker.
CLIENT_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "message_prefix": (str,),
    "connected_message": (str,),
    "reconnect_message": (str,),
    "reconnect_interval": (int, float),
    "max_reconnect_interval": (int, float),
    "silent": (bool,),
    "share_connection": (bool,),
    "overlay": (bool,),
    "indicator": (bool,),
}
CLIENT_OPTION_ALIASES = {
    "ws_message_prefix": "message_prefix",
    "ws_connected_message": "connected_message",
    "ws_reconnect_message": "reconnect_message",
    "ws_reconnect_interval": "reconnect_interval",
    "_ws_reconnect_interval": "reconnect_interval",
    "shared_worker": "share_connection",
}


def check_client_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``client_options`` at start-up (a typo must not be silently ignored by the browser)."""
    checked: dict[str, Any] = {}
    for key, value in (options or {}).items():
        name = CLIENT_OPTION_ALIASES.get(key, key)
        types = CLIENT_OPTION_TYPES.get(name)
        if types is None:
            known = ", ".join(CLIENT_OPTION_TYPES)
            raise ConfigError(f"client_options: unknown option {key!r} (known: {known})")
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            wanted = " or ".join(kind.__name__ for kind in types)
            raise ConfigError(f"client_options: {key!r} must be {wanted}")
        if name.endswith("interval") and not (isinstance(value, int | float) and value > 0):
            raise ConfigError(f"client_options: {key!r} must be a positive number of milliseconds")
        checked[name] = value
    return checked


class ScriptTag:
    """Renders the tag; the part that changes only with the version (or ``root_path``) is rendered once
    per change, not per page."""

    def __init__(
        self,
        *,
        script_version: str,
        client_options: Mapping[str, Any] | None = None,
        csp_nonce: NonceSource | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self.script_version = script_version
        self.client_options = check_client_options(client_options)
        self.csp_nonce = csp_nonce or default_csp_nonce
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self._cache: tuple[ClusterVersion, str, str, bytes] | None = None

    def endpoint_base(self, scope: Scope, prefix: str) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        root_path: str = scope.get("root_path", "")
        return root_path.rstrip("/") + prefix

    def render(self, scope: Scope, *, base: str, version: ClusterVersion, build_id: str) -> bytes:
        cached = self._cache
        if cached is None or cached[0] is not version or cached[1] != base or cached[2] != build_id:
            attributes = {
                "src": f"{base}/client.js?v={self.script_version}",
                "data-distreload": base,
                "data-distreload-version": str(version),
                "data-distreload-build": build_id,
            }
            if self.client_options:
                attributes["data-distreload-options"] = json.dumps(self.client_options, separators=(",", ":"))
            rendered = " ".join(
                f'{name}="{html.escape(value, quote=True)}"' for name, value in attributes.items()
            )
            cached = self._cache = (version, base, build_id, f"<script {rendered}".encode())
        nonce = self.csp_nonce(scope)
        if nonce:
            return cached[3] + f' nonce="{html.escape(nonce, quote=True)}" async></script>'.encode()
        return cached[3] + b" async></script>"

"""The script tag the injector places in every page: where the endpoint is, the version and build the page
was rendered at, the browser options, and the page's CSP nonce."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import Scope

from .config import ConfigError
from .protocol import ClusterVersion

NonceSource = Callable[[Scope], str | None]

# Every tag render() writes starts ``<script src="<base>/client.js?v=<script version>" data-distreload="``:
# a page holding that (from any distreload, at any base or version) has the script. The attribute's name
# elsewhere in a page's text (a comment, a code sample) does not count.
_LONGEST_BASE = 512  # a longer endpoint URL is not recognised as a tag already in the page
_TAG_START = b'<script src="'
_LITERAL = b"/client.js?v="  # between the base and the script version: the tag's one fixed middle
_AFTER_VERSION = b'" data-distreload="'  # what closes the src and opens the attribute the tag is named by
_TAG_SHAPE = re.compile(
    re.escape(_TAG_START)
    + rb'[^"<>]{0,%d}' % _LONGEST_BASE
    + re.escape(_LITERAL)
    + rb'[^"<>]{0,64}'
    + re.escape(_AFTER_VERSION)
)
# The anchor is the "?" of "client.js?v=": the rarest byte of the tag in HTML, so memchr (what bytes.find
# does for one byte given as an int: given as bytes, `in` first fails to read it as an int, at the cost of
# an exception) skips most pages whole at memory speed, where a search for a longer string costs several
# times as much per byte.
ANCHOR = ord("?")
_ANCHOR_IN_LITERAL = _LITERAL.index(ANCHOR)
_ANCHOR_FOLLOWED_BY = _LITERAL[_ANCHOR_IN_LITERAL:]  # "?v="
_BEFORE_ANCHOR = len(_TAG_START) + _LONGEST_BASE + _ANCHOR_IN_LITERAL
_AFTER_ANCHOR = len(_ANCHOR_FOLLOWED_BY) + 64 + len(_AFTER_VERSION)
TAG_SPAN = _BEFORE_ANCHOR + _AFTER_ANCHOR  # the most bytes of a page the start of a tag spans
_CHECKED_ANCHORS = 8  # past this many "?" in one piece, a literal search of the rest is the cheaper way
# Looking at one "?" costs about as much as a literal search through 700 bytes (bytes.find of a longer
# string: a quarter of a nanosecond a byte, against memchr's hundredth): from a first "?" this close to the
# end (pagers, footer links), one search of the rest costs a hop or two, however many "?" follow.
_SEARCH_REST_WITHIN = 1024


def holds_tag(data: bytes, first_anchor: int | None = None) -> bool:
    """Whether ``data`` holds the start of a tag as render() writes it (see _TAG_SHAPE); ``first_anchor``:
    where its first "?" is, if the caller looked already."""
    at = data.find(ANCHOR) if first_anchor is None else first_anchor
    if at == -1:
        return False
    if len(data) - at <= _SEARCH_REST_WITHIN:
        return _holds_tag_after(data, max(0, at - _ANCHOR_IN_LITERAL))
    checked = 0
    while at != -1:
        # A slice compared, not startswith(..., at): no argument parsing for each "?" of the page.
        if data[at : at + len(_ANCHOR_FOLLOWED_BY)] == _ANCHOR_FOLLOWED_BY and _TAG_SHAPE.search(
            data, max(0, at - _BEFORE_ANCHOR), at + _AFTER_ANCHOR
        ):
            return True
        checked += 1
        if checked == _CHECKED_ANCHORS:
            return _holds_tag_after(data, max(0, at + 1 - _ANCHOR_IN_LITERAL))  # this "?" was looked at
        at = data.find(ANCHOR, at + 1)
    return False


def _holds_tag_after(data: bytes, start: int) -> bool:
    """holds_tag() from ``start`` on, for a piece dense with "?" (query strings) or a short rest: one literal
    search instead of a look at each "?"."""
    at = data.find(_LITERAL, start)
    while at != -1:
        anchor = at + _ANCHOR_IN_LITERAL
        if _TAG_SHAPE.search(data, max(0, anchor - _BEFORE_ANCHOR), anchor + _AFTER_ANCHOR):
            return True
        at = data.find(_LITERAL, at + 1)
    return False


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
        self._cache: tuple[ClusterVersion, str, str, bytes, bytes] | None = None

    def endpoint_base(self, scope: Scope, prefix: str) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        root_path: str = scope.get("root_path", "")
        # Most apps are mounted at the root: the prefix itself, the very object render() compared last time.
        return root_path.rstrip("/") + prefix if root_path else prefix

    def render(self, scope: Scope, *, base: str, version: ClusterVersion, build_id: str) -> bytes:
        cached = self._cache
        if cached is None or cached[0] is not version or cached[1] != base or cached[2] != build_id:
            cached = self._render(base, version, build_id)
        nonce = self.csp_nonce(scope)
        if nonce:
            return cached[3] + f' nonce="{html.escape(nonce, quote=True)}" async></script>'.encode()
        return cached[4]

    def _render(
        self, base: str, version: ClusterVersion, build_id: str
    ) -> tuple[ClusterVersion, str, str, bytes, bytes]:
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
        opening = f"<script {rendered}".encode()
        # The whole tag of a page without a nonce is kept too: most pages have none.
        self._cache = (version, base, build_id, opening, opening + b" async></script>")
        return self._cache

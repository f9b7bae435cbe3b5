"""The script tag: where it points, what it carries, and the browser options it is given."""

from __future__ import annotations

from typing import Any

import pytest

from distreload.config import ConfigError
from distreload.protocol import ClusterVersion
from distreload.tag import ScriptTag, check_client_options, default_csp_nonce, holds_tag

VERSION = ClusterVersion("0123456789abcdef", 4)


def render(tag: ScriptTag, scope: dict[str, Any] | None = None, prefix: str = "/---distreload---") -> str:
    scope = {"type": "http", "root_path": "", "headers": [], **(scope or {})}
    return tag.render(scope, base=tag.endpoint_base(scope, prefix), version=VERSION, build_id="b1").decode()


def test_the_tag_points_at_the_endpoint_and_carries_version_and_build() -> None:
    tag = render(ScriptTag(script_version="abc"))
    assert tag == (
        '<script src="/---distreload---/client.js?v=abc" data-distreload="/---distreload---" '
        'data-distreload-version="0123456789abcdef-4" data-distreload-build="b1" async></script>'
    )


def test_the_tag_honours_root_path_and_an_endpoint_override() -> None:
    assert 'src="/app/---distreload---/client.js?v=abc"' in render(
        ScriptTag(script_version="abc"), {"root_path": "/app/"}
    )
    override = ScriptTag(script_version="abc", endpoint_url="https://dev.example.test/reload/")
    assert 'src="https://dev.example.test/reload/client.js?v=abc"' in render(override, {"root_path": "/app"})


def test_the_nonce_comes_from_request_state_or_a_callable_and_everything_is_escaped() -> None:
    assert 'nonce="n0nce"' in render(ScriptTag(script_version="v"), {"state": {"csp_nonce": "n0nce"}})
    tag = render(
        ScriptTag(
            script_version="v", csp_nonce=lambda scope: '"><x>', client_options={"message_prefix": '"><x>'}
        )
    )
    assert "<x>" not in tag and tag.count("&quot;&gt;&lt;x&gt;") == 2


def test_default_nonce_reads_state_then_scope() -> None:
    assert default_csp_nonce({"state": {"csp_nonce": "s"}}) == "s"
    assert default_csp_nonce({"csp_nonce": "t"}) == "t"
    assert default_csp_nonce({"state": {"csp_nonce": 5}}) is None
    assert default_csp_nonce({}) is None


def test_a_new_version_renders_a_new_tag() -> None:
    tag = ScriptTag(script_version="v")
    scope = {"type": "http", "root_path": "", "headers": []}
    first = tag.render(scope, base="/p", version=VERSION, build_id="b")
    second = tag.render(scope, base="/p", version=ClusterVersion(VERSION.epoch, 5), build_id="b")
    assert b"-4" in first and b"-5" in second


def test_client_options_accept_fast_hot_reload_names_and_reach_the_tag() -> None:
    options = {"ws_message_prefix": "[dev]", "_ws_reconnect_interval": 500, "silent": True}
    assert check_client_options(options) == {
        "message_prefix": "[dev]",
        "reconnect_interval": 500,
        "silent": True,
    }
    tag = render(ScriptTag(script_version="v", client_options=options))
    assert (
        'data-distreload-options="{&quot;message_prefix&quot;:&quot;[dev]&quot;,'
        '&quot;reconnect_interval&quot;:500,&quot;silent&quot;:true}"'
    ) in tag


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"messagePrefix": "x"}, "unknown option 'messagePrefix'"),
        ({"silent": "yes"}, "'silent' must be bool"),
        ({"reconnect_interval": True}, "'reconnect_interval' must be int or float"),
        ({"max_reconnect_interval": 0}, "positive number of milliseconds"),
    ],
)
def test_client_options_that_the_browser_would_ignore_are_refused_at_start_up(
    options: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ConfigError, match="client_options") as raised:
        check_client_options(options)
    assert complaint in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("scope", "options"),
    [
        ({}, {}),
        ({"root_path": "/app/", "state": {"csp_nonce": "n0nce"}}, {"silent": True, "message_prefix": '"?"'}),
    ],
)
def test_a_rendered_tag_is_recognised_in_a_page_and_its_attribute_name_alone_is_not(
    scope: dict[str, Any], options: dict[str, Any]
) -> None:
    tag = render(ScriptTag(script_version="abc", client_options=options), scope).encode()
    questions = b"".join(b'<a href="?page=%d">?</a>' % i for i in range(40))  # past the per-"?" checks
    # Near the end of a page one search covers the rest; further from it each "?" is looked at.
    far_from_the_end = b"<p>" + b"text " * 400 + b"</p>"
    for before in (b"", b"<p>text</p>", b'<a href="?page=2">2</a>', questions):
        for after in (b"", far_from_the_end):
            assert holds_tag(b"<html><body>" + before + tag + after + b"</body></html>")
            assert not holds_tag(b"<html><!-- data-distreload --><body>" + before + after + b"</body></html>")
    override = ScriptTag(script_version="abc", endpoint_url="https://dev.example.test/reload/")
    assert holds_tag(b"<p>?</p>" + render(override).encode())
    assert not holds_tag(tag[: tag.index(b"data-distreload=")])

"""What the commands share: printing untrusted text, reading the Redis options, value types."""

from __future__ import annotations

import argparse

import pytest

from distreload.cli.common import (
    UsageError,
    non_negative_float,
    port_number,
    positive_float,
    positive_int,
    printable,
    redis_target,
)
from distreload.config import Target


def test_printable_leaves_ordinary_text_alone() -> None:
    assert printable("web-1 · café 東京") == "web-1 · café 東京"


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("a\tb\nc\x7f\x1b[2J\u202e") == "a\\tb\\nc\\x7f\\x1b[2J\\u202e"


def args(redis_url: str | None, namespace: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(redis_url=redis_url, namespace=namespace)


def test_the_redis_options_name_a_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTRELOAD_NAMESPACE", raising=False)
    assert redis_target(args("redis://h:6379/2", "shop")) == Target("redis://h:6379/2", "shop")
    monkeypatch.setenv("DISTRELOAD_REDIS_URL", "redis://env:6379/0")
    assert redis_target(args(None)) == Target("redis://env:6379/0", "default")


@pytest.mark.parametrize(
    ("url", "namespace", "message"),
    [
        ("redis://h/abc", None, "--redis-url: 'redis://h/abc' has database 'abc' in its path"),
        ("redis://h:6379?db=x", None, "'x'"),
        ("redis://:secret@h/abc", None, "'redis://:***@h/abc'"),
        ("redis://h:port/0", None, "--redis-url: 'redis://h:port/0' is not a valid URL"),
        ("memory://", None, "memory:// lives inside one app process"),
        ("redis://h/0", "bad name", "--namespace: 'bad name' is not a valid namespace"),
    ],
)
def test_a_redis_option_that_cannot_be_used_is_a_usage_error_naming_it(
    url: str, namespace: str | None, message: str
) -> None:
    with pytest.raises(UsageError) as refused:
        redis_target(args(url, namespace))
    assert message in str(refused.value)
    assert "invalid literal" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_bad_url_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_REDIS_URL", "redis://h/abc")
    with pytest.raises(UsageError, match=r"^DISTRELOAD_REDIS_URL: 'redis://h/abc' has database 'abc'"):
        redis_target(args(None))


@pytest.mark.parametrize(
    ("convert", "text", "value"),
    [
        (positive_int, "3", 3),
        (non_negative_float, "0", 0.0),
        (positive_float, "0.5", 0.5),
        (port_number, "0", 0),
    ],
)
def test_value_types_accept(convert: object, text: str, value: float) -> None:
    assert callable(convert) and convert(text) == value


@pytest.mark.parametrize(
    ("convert", "text"),
    [
        (positive_int, "0"),
        (positive_int, "x"),
        (non_negative_float, "-1"),
        (non_negative_float, "inf"),
        (non_negative_float, "nan"),
        (positive_float, "0"),
        (positive_float, "inf"),
        (port_number, "65536"),
    ],
)
def test_value_types_refuse(convert: object, text: str) -> None:
    assert callable(convert)
    with pytest.raises(argparse.ArgumentTypeError):
        convert(text)

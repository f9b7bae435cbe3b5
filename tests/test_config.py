"""Settings: arguments win over the environment; every bad value names its setting in one line."""

from __future__ import annotations

from typing import Any

import pytest
import redis.connection

from distreload.config import (
    ConfigError,
    RedisAddress,
    Target,
    mask_password,
    parse_redis_url,
    parse_sentinel_url,
    resolve_enabled,
    resolve_target,
    resolve_token,
    validate_prefix,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISTRELOAD_REDIS_URL", "DISTRELOAD_NAMESPACE", "DISTRELOAD_ENABLED", "DISTRELOAD_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_no_setting_means_one_process_in_memory() -> None:
    assert resolve_target() == Target("memory://", "default")
    assert resolve_target().is_memory


def test_environment_gives_defaults_and_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_REDIS_URL", "redis://env-host:6379/0")
    monkeypatch.setenv("DISTRELOAD_NAMESPACE", "from-env")
    assert resolve_target() == Target("redis://env-host:6379/0", "from-env")
    explicit = resolve_target("rediss://arg-host:6380", "from-arg")
    assert explicit == Target("rediss://arg-host:6380", "from-arg")


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://user:secret@redis.example.test:6380/1",
        "redis://:secret@127.0.0.1",
        "unix:///run/redis/redis.sock?db=2",
        "memory://",
    ],
)
def test_supported_urls(url: str) -> None:
    assert resolve_target(url).redis_url == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://localhost:6379", "has scheme 'http'"),
        ("sentinel://h:26379/mymaster", "has scheme 'sentinel'"),
        ("localhost:6379", "has scheme 'localhost'"),
        ("redis://", "names no host"),
        ("unix://", "names no socket path"),
        ("redis://host:port", "is not a valid URL"),
    ],
)
def test_bad_url_is_one_line_naming_the_setting(
    url: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_target(url)
    assert str(raised.value).startswith("redis_url: ") and fragment in str(raised.value)
    assert "\n" not in str(raised.value)
    monkeypatch.setenv("DISTRELOAD_REDIS_URL", url)
    with pytest.raises(ConfigError, match="^DISTRELOAD_REDIS_URL: "):
        resolve_target()


# --- One Redis URL, one meaning: distreload's reading against redis-py's -----------------------------------

READ_ALIKE = [
    "redis://localhost",
    "redis://localhost:6380",
    "redis://127.0.0.1:6379/0",
    "redis://h/3",
    "redis://h/3/",
    "redis://h/",
    "redis://h/?db=4",
    "redis://h/4?db=4",
    "redis://h/%35",
    "redis://h?db=",
    "redis://user:p%40ss@h/2",
    "redis://:secret@h",
    "redis://user@h",
    "redis://h?username=qu&password=qp",
    "redis://u:p@h?password=qp",
    "redis://h/1?db=1&db=9",
    "rediss://h:6380/1?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem",
    "rediss://u:p@h/?ssl_check_hostname=false",
    "redis://[::1]:6379/2",
    "redis://MyHost.Example/1",
    "redis://h?socket_timeout=3&health_check_interval=7",
    "unix:///tmp/redis.sock",
    "unix:///tmp/redis.sock?db=3",
    "unix://u:p@/tmp/redis%20a.sock?db=3",
]


def redis_py_reading(url: str) -> dict[str, Any]:
    """What redis-py's own parser makes of a URL, in RedisAddress's terms (its defaults filled in)."""
    kwargs = dict(redis.connection.parse_url(url))
    connection_class = kwargs.pop("connection_class", None)
    scheme = {"SSLConnection": "rediss", "UnixDomainSocketConnection": "unix"}.get(
        getattr(connection_class, "__name__", ""), "redis"
    )
    unix = scheme == "unix"
    return {
        "scheme": scheme,
        "host": None if unix else kwargs.pop("host", "localhost"),
        "port": 0 if unix else kwargs.pop("port", 6379),
        "socket_path": kwargs.pop("path", None),
        "db": kwargs.pop("db", 0),
        "username": kwargs.pop("username", None),
        "password": kwargs.pop("password", None),
        "options": sorted(kwargs),
    }


def distreload_reading(address: RedisAddress) -> dict[str, Any]:
    return {
        "scheme": address.scheme,
        "host": address.host,
        "port": address.port,
        "socket_path": address.socket_path,
        "db": address.db,
        "username": address.username,
        "password": address.password,
        "options": sorted(name for name, _ in address.options),
    }


@pytest.mark.parametrize("url", READ_ALIKE)
def test_a_redis_url_reads_as_redis_py_reads_it(url: str) -> None:
    assert distreload_reading(parse_redis_url(url)) == redis_py_reading(url)


@pytest.mark.parametrize(
    ("url", "redis_py_guess", "fragment"),
    [
        ("redis://h/1?db=5", {"db": 5}, "names database 1 in its path and 5 in ?db=: keep one"),
        ("redis://h/abc", {"db": None}, "has database 'abc' in its path, which is not a database number"),
        ("redis://h/1/2", {"db": 12}, "has database '1/2' in its path"),
        ("redis://h/-1", {"db": -1}, "has database '-1' in its path"),
        ("redis://h/%D9%A3", {"db": 3}, "in its path, which is not a database number"),  # an Arabic 3
        ("redis://h?db=x", None, "has ?db='x', which is not a database number"),
    ],
)
def test_a_url_redis_py_would_guess_at_is_refused_in_one_line_by_every_reader(
    url: str, redis_py_guess: dict[str, Any] | None, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What redis-py makes of it: a guess (no db, so db 0, for /abc, where the command line failed; db 5 for
    # /1?db=5, where the command line used db 1), or an error of its own.
    if redis_py_guess is None:
        with pytest.raises(ValueError):
            redis.connection.parse_url(url)
    else:
        assert {name: redis.connection.parse_url(url).get(name) for name in redis_py_guess} == redis_py_guess
    from distreload import DistReload
    from distreload.broker import get_broker
    from distreload.redis_clients import async_client, sync_client

    from .asgi import raw_app

    said = set()
    for read in (
        lambda: resolve_target(url),
        lambda: get_broker(url, "ns"),
        lambda: DistReload(raw_app(), redis_url=url, enabled=True),
        lambda: sync_client(url),
        lambda: async_client(url),
    ):
        with pytest.raises(ConfigError) as raised:
            read()
        said.add(str(raised.value))
    monkeypatch.setenv("DISTRELOAD_REDIS_URL", url)
    with pytest.raises(ConfigError) as from_environment:
        resolve_target()
    assert len(said) == 1, said
    (line,) = said
    assert line == f"redis_url: {url!r} {line.split(' ', 2)[2]}" and fragment in line and "\n" not in line
    assert str(from_environment.value) == line.replace("redis_url:", "DISTRELOAD_REDIS_URL:", 1)


def test_bad_url_message_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_target("http://user:hunter2@host:6379")
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("namespace", ["", "has space", "a/b", "-leading", "x" * 65, "ü"])
def test_bad_namespace(namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="^namespace: "):
        resolve_target(None, namespace)
    if namespace:
        monkeypatch.setenv("DISTRELOAD_NAMESPACE", namespace)
        with pytest.raises(ConfigError, match="^DISTRELOAD_NAMESPACE: "):
            resolve_target()


def test_mask_password() -> None:
    assert mask_password("redis://user:pw@host:1/0") == "redis://user:***@host:1/0"
    assert mask_password("redis://host:1/0") == "redis://host:1/0"
    assert Target("redis://:pw@h", "n").display_url() == "redis://:***@h"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", False),
    ],
)
def test_enabled_words(raw: str, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", raw)
    assert resolve_enabled() is expected
    assert resolve_enabled(not expected) is (not expected)


def test_enabled_is_off_when_unset_and_bad_words_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_enabled() is False
    monkeypatch.setenv("DISTRELOAD_ENABLED", "perhaps")
    with pytest.raises(ConfigError, match="^DISTRELOAD_ENABLED: 'perhaps'"):
        resolve_enabled()


@pytest.mark.parametrize(
    ("given", "expected"),
    [("1", True), ("true", True), ("Yes", True), (" on ", True), ("0", False), ("false", False)]
    + [("NO", False), ("off", False), (True, True), (False, False)],
)
def test_enabled_takes_a_bool_or_the_words_of_the_environment_variable(
    given: bool | str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "0" if expected else "1")  # the argument wins
    assert resolve_enabled(given) is expected


def test_an_empty_enabled_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_ENABLED", "1")
    assert resolve_enabled("") is True
    assert resolve_enabled("  ", default=False) is True


@pytest.mark.parametrize("given", ["maybe", "disabled", "2", 1, 0, 0.0, ["false"]])
def test_any_other_enabled_is_a_clear_error(given: object) -> None:
    with pytest.raises(ValueError, match=r"^enabled: .* is not .*1/0, true/false, yes/no, on/off"):
        resolve_enabled(given)  # type: ignore[arg-type]


def test_a_default_applies_only_when_neither_argument_nor_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DISTRELOAD_ENABLED", raising=False)
    assert resolve_enabled(default=True) is True  # the drop-in's default: using it is the opt-in
    monkeypatch.setenv("DISTRELOAD_ENABLED", "")
    assert resolve_enabled(default=True) is True
    monkeypatch.setenv("DISTRELOAD_ENABLED", "0")
    assert resolve_enabled(default=True) is False
    assert resolve_enabled(True, default=False) is True


def test_prefix_validation() -> None:
    assert validate_prefix("/---distreload---/") == "/---distreload---"
    assert validate_prefix("/dev/reload") == "/dev/reload"
    for bad in ("", "/", "no-slash", "/a b", "/a?b"):
        with pytest.raises(ConfigError, match="^prefix: "):
            validate_prefix(bad)


def test_token_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_token() is None
    monkeypatch.setenv("DISTRELOAD_TOKEN", "env-token")
    assert resolve_token() == "env-token"
    assert resolve_token("arg-token") == "arg-token"


# --- Sentinel URLs ----------------------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    url = "redis+sentinel://app:data%40pw@s1.test:26380,s2.test,[::1]:5000/mymaster/3?sentinel_password=spw"
    assert resolve_target(url, "shop").redis_url == url
    settings = parse_sentinel_url(url)
    assert settings.sentinels == (("s1.test", 26380), ("s2.test", 26379), ("::1", 5000))
    assert (settings.master_name, settings.db, settings.tls) == ("mymaster", 3, False)
    # The userinfo is the data nodes' (as in a redis:// URL); the Sentinels' own comes from the query.
    assert (settings.username, settings.password) == ("app", "data@pw")
    assert (settings.sentinel_username, settings.sentinel_password) == (None, "spw")


def test_a_sentinel_url_with_tls_and_no_credentials() -> None:
    settings = parse_sentinel_url(
        "rediss+sentinel://10.0.0.1:26379/cache?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false"
        "&sentinel_username=watcher&sentinel_password=s"
    )
    assert settings.tls and settings.db == 0 and settings.master_name == "cache"
    assert settings.password is None and settings.username is None
    assert settings.sentinel_username == "watcher"
    assert dict(settings.tls_options) == {"ssl_ca_certs": "/etc/ca.pem", "ssl_check_hostname": "false"}
    assert parse_sentinel_url("redis+sentinel://h/m/").master_name == "m"  # a trailing slash


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis+sentinel://h1:26379,h2:26379", "names no master"),
        ("redis+sentinel://h1:26379/", "names no master"),
        ("redis+sentinel:///mymaster", "names no Sentinel host"),
        ("redis+sentinel://h1,,h2/mymaster", "names no Sentinel host"),
        ("redis+sentinel://h1:port/mymaster", "port that is not a number"),
        ("redis+sentinel://h1:70000/mymaster", "port that is not a number"),
        ("redis+sentinel://h1/mymaster/zero", "database 'zero'"),
        ("redis+sentinel://h1/mymaster/0/extra", "more after the master name"),
        ("redis+sentinel://h1/mymaster?timeout=1", "has option 'timeout'"),
        ("redis+sentinel://:pw@h1/mymaster?ssl_ca_certs=/ca.pem", "use rediss+sentinel://"),
        ("redis+sentinel://h1?x=1/m", "must name its master after the hosts"),
    ],
)
def test_bad_sentinel_url_is_one_line_naming_the_setting(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_target(url)
    message = str(raised.value)
    assert message.startswith("redis_url: ") and fragment in message and "\n" not in message, message
    assert "pw@" not in message


def test_masking_covers_sentinel_urls_and_passwords_in_the_query() -> None:
    assert (
        mask_password("redis+sentinel://u:data@h1:1,h2:2/m/0?sentinel_password=spw")
        == "redis+sentinel://u:***@h1:1,h2:2/m/0?sentinel_password=***"
    )
    assert mask_password("redis://h:1/0?password=pw&db=2") == "redis://h:1/0?password=***&db=2"
    assert mask_password("rediss+sentinel://:p:w@h/m") == "rediss+sentinel://:***@h/m"
    assert "spw" not in Target("redis+sentinel://h/m?sentinel_password=spw", "n").display_url()

"""Settings: explicit arguments win, environment variables are only defaults at the edge.

This module imports nothing heavy, so ``distreload publish`` starts fast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

ENV_REDIS_URL = "DISTRELOAD_REDIS_URL"
ENV_NAMESPACE = "DISTRELOAD_NAMESPACE"
ENV_ENABLED = "DISTRELOAD_ENABLED"
ENV_TOKEN = "DISTRELOAD_TOKEN"
ENV_BUILD_ID = "DISTRELOAD_BUILD_ID"

DEFAULT_NAMESPACE = "default"
DEFAULT_PREFIX = "/---distreload---"
MEMORY_URL = "memory://"

_NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_PREFIX_PATTERN = re.compile(r"(/[A-Za-z0-9_.\-~]+)+")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
# What a Sentinel URL's query may say: the Sentinels' own credentials (one userinfo cannot carry two, and
# the userinfo is the data nodes', as in a redis:// URL) and redis-py's TLS options, which apply to the
# Sentinels and the data nodes alike.
SENTINEL_QUERY_OPTIONS = (
    "sentinel_username",
    "sentinel_password",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_SECRET_QUERY_OPTIONS = ("password", "sentinel_password")
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting has a value distreload cannot use; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where reloads travel: a Redis URL (or ``memory://`` for one process) and a namespace."""

    redis_url: str
    namespace: str

    @property
    def is_memory(self) -> bool:
        return self.redis_url == MEMORY_URL

    def display_url(self) -> str:
        """The URL with any password masked, fit for logs."""
        return mask_password(self.redis_url)


def resolve_target(redis_url: str | None = None, namespace: str | None = None) -> Target:
    """Pick the Redis URL and namespace: argument, then environment, then the in-memory default."""
    if redis_url is not None:
        url, url_setting = redis_url, "redis_url"
    else:
        url, url_setting = os.environ.get(ENV_REDIS_URL, "").strip(), ENV_REDIS_URL
    if namespace is not None:
        ns, ns_setting = namespace, "namespace"
    else:
        ns, ns_setting = os.environ.get(ENV_NAMESPACE, "").strip() or DEFAULT_NAMESPACE, ENV_NAMESPACE
    return Target(
        redis_url=validate_redis_url(url or MEMORY_URL, url_setting),
        namespace=validate_namespace(ns, ns_setting),
    )


def validate_redis_url(url: str, setting: str = "redis_url") -> str:
    """The URL itself when it can be read (:func:`parse_redis_url`, or the Sentinel reader); ConfigError,
    one line naming ``setting``, when it cannot."""
    if url == MEMORY_URL:
        return url
    if is_sentinel_url(url):
        parse_sentinel_url(url, setting)
        return url
    parse_redis_url(url, setting)
    return url


DEFAULT_REDIS_PORT = 6379
_PASSWORD_OPTIONS = ("username", "password")


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """What a ``redis://``, ``rediss://`` or ``unix://`` URL names, read once for every reader (the
    workers' clients, the command line's own protocol client, ``check_usable``).

    It reads a URL as redis-py's ``from_url`` does (tests/test_config.py holds the table) except where
    redis-py guesses: a database in both the path and ``?db=`` that differ, a path that is not a database
    number (redis-py falls back to database 0 without a word), are refused.
    """

    scheme: str
    host: str | None  # None for a unix socket
    port: int
    socket_path: str | None
    db: int
    username: str | None
    password: str | None
    options: tuple[tuple[str, str], ...]  # the rest of the query (redis-py options such as ssl_ca_certs)

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def option(self, name: str) -> str | None:
        return next((value for key, value in self.options if key == name), None)


def parse_redis_url(url: str, setting: str = "redis_url") -> RedisAddress:
    """Read a ``redis://``, ``rediss://`` or ``unix://`` URL; ConfigError (one line, naming ``setting``,
    password masked) for anything that cannot be read as exactly one server and database."""
    shown = mask_password(url)

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{setting}: {shown!r} {reason}")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _REDIS_SCHEMES or "://" not in url:
        raise ConfigError(
            f"{setting}: {shown!r} has scheme {parts.scheme!r}; "
            "use redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel:// or memory://"
        )
    # As redis-py: the first value of each query option, blank ones dropped.
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query):
        query.setdefault(name, value)
    username = unquote(parts.username) if parts.username else query.get("username")
    password = unquote(parts.password) if parts.password else query.get("password")
    options = tuple((name, value) for name, value in query.items() if name not in ("db", *_PASSWORD_OPTIONS))
    query_db = query.get("db")
    if query_db is not None and not _is_database(query_db):
        raise bad(f"has ?db={query_db!r}, which is not a database number")
    if scheme == "unix":
        if not parts.path:
            raise bad("names no socket path (unix:///path/to/redis.sock)")
        return RedisAddress(
            scheme, None, 0, unquote(parts.path), int(query_db or 0), username, password, options
        )
    if not parts.hostname:
        raise bad("names no host (redis://host:6379/0)")
    path = unquote(parts.path).strip("/")
    if path and not _is_database(path):
        raise bad(f"has database {path!r} in its path, which is not a database number (redis://host:6379/0)")
    if path and query_db is not None and int(path) != int(query_db):
        raise bad(f"names database {int(path)} in its path and {int(query_db)} in ?db=: keep one")
    db = int(query_db if query_db is not None else path or 0)
    return RedisAddress(
        scheme, unquote(parts.hostname), port or DEFAULT_REDIS_PORT, None, db, username, password, options
    )


def _is_database(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 9


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    """What a ``redis+sentinel://`` URL says: where the Sentinels are, which master they watch, and the
    credentials and TLS options of each side.

    ``redis+sentinel://[[user]:password@]host1[:port1],host2[:port2]/<master-name>[/<db>][?options]``
    (``rediss+sentinel://``: TLS to the Sentinels and the data nodes). The userinfo is the data nodes'
    user and password, as in a ``redis://`` URL; the Sentinels' own come from the query
    (``sentinel_username``, ``sentinel_password``); without them the Sentinels are asked with no password.
    """

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int
    tls: bool
    username: str | None
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    tls_options: tuple[tuple[str, str], ...]  # redis-py's ssl_* options, for both sides


def parse_sentinel_url(url: str, setting: str = "redis_url") -> SentinelSettings:
    """Read a Sentinel URL; ConfigError (one line, password masked) for anything it cannot be used as."""
    shown = mask_password(url)

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{setting}: {shown!r} {reason}")

    form = "redis+sentinel://host1:26379,host2:26379/<master-name>/<db>"
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        raise bad(f"is not a Sentinel URL ({form})")
    netloc, _, path_and_query = rest.partition("/")
    path, _, query = path_and_query.partition("?")
    if "?" in netloc or "#" in url:
        raise bad(f"must name its master after the hosts ({form})")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = []
    for item in hosts.split(","):
        host, port = _host_and_port(item.strip())
        if not host:
            raise bad(f"names no Sentinel host in {item.strip()!r} ({form})")
        if port is None:
            raise bad(f"has a Sentinel port that is not a number from 1 to 65535 in {item.strip()!r}")
        sentinels.append((host, port))
    segments = [unquote(segment) for segment in path.split("/")] if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise bad(f"names no master: the Sentinels' name for it comes after the hosts ({form})")
    if len(segments) > 2:
        raise bad(f"has more after the master name and database than it can use ({form})")
    master_name = segments[0]
    db_text = segments[1] if len(segments) == 2 else "0"
    if not db_text.isdigit():
        raise bad(f"has database {db_text!r}, which is not a number ({form})")
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in SENTINEL_QUERY_OPTIONS:
            raise bad(f"has option {name!r}; a Sentinel URL takes {', '.join(SENTINEL_QUERY_OPTIONS)}")
        options[name] = value
    tls_options = tuple((name, value) for name, value in options.items() if name.startswith("ssl_"))
    if tls_options and scheme.lower() != "rediss+sentinel":
        raise bad("has TLS options but no TLS: use rediss+sentinel://")
    return SentinelSettings(
        sentinels=tuple(sentinels),
        master_name=master_name,
        db=int(db_text),
        tls=scheme.lower() == "rediss+sentinel",
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls_options=tls_options,
    )


def _host_and_port(item: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port``; the port is None when it is not a valid one."""
    if item.startswith("["):
        host, bracket, after = item[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return "", None
        port_text = after[1:]
    elif item.count(":") > 1:
        return item, DEFAULT_SENTINEL_PORT  # a bare IPv6 address
    else:
        host, _, port_text = item.partition(":")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return host, None
    return host, int(port_text)


def validate_namespace(namespace: str, setting: str = "namespace") -> str:
    if not _NAMESPACE_PATTERN.fullmatch(namespace):
        raise ConfigError(
            f"{setting}: {namespace!r} is not a valid namespace "
            "(1-64 characters: letters, digits, '_', '.', '-'; starting with a letter or digit)"
        )
    return namespace


def validate_prefix(prefix: str) -> str:
    cleaned = prefix.rstrip("/")
    if not _PREFIX_PATTERN.fullmatch(cleaned):
        raise ConfigError(f"prefix: {prefix!r} must be a URL path such as '/---distreload---'")
    return cleaned


def resolve_enabled(enabled: bool | str | None = None, *, default: bool = False) -> bool:
    """Explicit argument, else ``DISTRELOAD_ENABLED``, else ``default``.

    The argument is a bool, or a string with the words the variable takes (``"1"``/``"0"``, ``"true"``/
    ``"false"``, ``"yes"``/``"no"``, ``"on"``/``"off"``; an empty string is not given): a setting read from
    the environment or a settings file as text means what it says. Anything else is a ConfigError.
    """
    if isinstance(enabled, bool):
        return enabled
    if isinstance(enabled, str):
        from_argument = _switch(enabled, "enabled")
        if from_argument is not None:
            return from_argument
    elif enabled is not None:
        raise ConfigError(f"enabled: {enabled!r} is not a bool or one of {_SWITCH_WORDS}")
    from_environment = enabled_in_environment()
    return default if from_environment is None else from_environment


def enabled_in_environment() -> bool | None:
    """What ``DISTRELOAD_ENABLED`` says: True, False, or None when it is unset or empty."""
    return _switch(os.environ.get(ENV_ENABLED, ""), ENV_ENABLED)


_SWITCH_WORDS = "1/0, true/false, yes/no, on/off"


def _switch(raw: str, setting: str) -> bool | None:
    word = raw.strip().lower()
    if not word:
        return None
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ConfigError(f"{setting}: {raw.strip()!r} is not one of {_SWITCH_WORDS}")


def resolve_token(token: str | None = None) -> str | None:
    value = token if token is not None else os.environ.get(ENV_TOKEN, "")
    return value or None


def mask_password(url: str) -> str:
    """The URL with every password in it (userinfo, ``password=`` and ``sentinel_password=``) masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    masked = url
    if password:
        userinfo, _, _ = parts.netloc.rpartition("@")
        masked = masked.replace(f"{userinfo}@", f"{userinfo.partition(':')[0]}:***@", 1)
    if parts.query:
        for name in _SECRET_QUERY_OPTIONS:
            masked = re.sub(rf"([?&]{name}=)[^&#]*", r"\1***", masked)
    return masked

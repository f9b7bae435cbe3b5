"""Settings: explicit arguments win, environment variables are only defaults at the edge.

This module imports nothing heavy, so ``distreload publish`` starts fast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

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
    if url == MEMORY_URL:
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{setting}: {mask_password(url)!r} is not a valid URL ({exc})") from None
    if parts.scheme not in _REDIS_SCHEMES:
        raise ConfigError(
            f"{setting}: {mask_password(url)!r} has scheme {parts.scheme!r}; "
            "use redis://, rediss://, unix:// or memory://"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError(
            f"{setting}: {mask_password(url)!r} names no socket path (unix:///path/to/redis.sock)"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{setting}: {mask_password(url)!r} names no host (redis://host:6379/0)")
    return url


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


def resolve_enabled(enabled: bool | None = None, *, default: bool = False) -> bool:
    """Explicit argument, else ``DISTRELOAD_ENABLED``, else ``default``."""
    if enabled is not None:
        return enabled
    from_environment = enabled_in_environment()
    return default if from_environment is None else from_environment


def enabled_in_environment() -> bool | None:
    """What ``DISTRELOAD_ENABLED`` says: True, False, or None when it is unset or empty."""
    raw = os.environ.get(ENV_ENABLED, "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE_WORDS:
        return True
    if raw in _FALSE_WORDS:
        return False
    raise ConfigError(f"{ENV_ENABLED}: {raw!r} is not one of 1/0, true/false, yes/no, on/off")


def resolve_token(token: str | None = None) -> str | None:
    value = token if token is not None else os.environ.get(ENV_TOKEN, "")
    return value or None


def mask_password(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()

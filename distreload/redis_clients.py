"""redis-py clients for a Redis URL, made the way distreload needs them.

distreload owns its reconnect loop, so redis-py's own retries are off: they differ between versions and
would hide an outage (or publish twice when a reply is lost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Target
from .protocol import (
    _PUBLISH_SCRIPT,
    PUBLISH_KEYS,
    PublishError,
    PublishResult,
    ReloadRequest,
    describe_publish_failure,
    publish_arguments,
    publish_result,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio


def redis_options() -> dict[str, Any]:
    """Options for every redis-py client distreload makes."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


def async_client(url: str) -> redis.asyncio.Redis:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, **redis_options())


def sync_client(url: str) -> redis.Redis:
    import redis

    return redis.Redis.from_url(url, **redis_options())


def publish_with_redis_py(target: Target, request: ReloadRequest) -> PublishResult:
    """Publish through redis-py's cluster client (the slot's owner found by redis-py); raise PublishError."""
    from redis.cluster import RedisCluster

    try:
        client = RedisCluster.from_url(target.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
        try:
            reply = client.eval(_PUBLISH_SCRIPT, PUBLISH_KEYS, *publish_arguments(target.namespace, request))
        finally:
            client.close()
    except Exception as exc:
        raise PublishError(describe_publish_failure(target.display_url(), exc)) from exc
    return publish_result(reply)

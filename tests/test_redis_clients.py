"""Clients for a URL: what HELLO tells, how Sentinel options are split, what counts as a refusal, and the
links and subscriptions themselves against real servers (a single one, a 3-master cluster, Sentinels)."""

from __future__ import annotations

import re
import warnings

import pytest
import redis
import redis.exceptions

from distreload.config import parse_sentinel_url
from distreload.redis_clients import (
    CLUSTER,
    CLUSTER_NEEDS,
    SENTINEL,
    STANDALONE,
    Misconfigured,
    Server,
    check_usable,
    cluster_error,
    identify,
    is_refusal,
    make_sentinel,
    no_master_error,
    redis_options,
    require_cluster_support,
    sentinel_arguments,
    server_from_hello,
)

pytestmark = pytest.mark.anyio


# --- Without a server ---------------------------------------------------------------------------------


def test_hello_in_either_protocol_tells_mode_and_version() -> None:
    resp3 = {b"server": b"redis", b"version": b"7.0.15", b"proto": 3, b"mode": b"cluster", b"role": b"master"}
    resp2 = [b"server", b"redis", b"version", b"6.2.14", b"proto", 2, b"mode", b"cluster"]
    assert server_from_hello(resp3) == Server(CLUSTER, (7, 0, 15))
    assert server_from_hello(resp2) == Server(CLUSTER, (6, 2, 14))
    assert server_from_hello({"mode": "sentinel", "version": "7.2.4"}) == Server(SENTINEL, (7, 2, 4))
    # Sharded pub/sub only on a cluster of Redis 7 or later; plain pub/sub is broadcast on older ones.
    assert server_from_hello(resp3).sharded and not server_from_hello(resp2).sharded
    assert not Server(STANDALONE, (7, 2)).sharded


def test_a_url_that_names_a_sentinel_or_a_cluster_database_is_refused_with_what_to_write() -> None:
    with pytest.raises(Misconfigured, match=r"redis\+sentinel://s1:26379/<master-name>/<db>"):
        check_usable("redis://s1:26379/0", Server(SENTINEL, (7, 0)))
    with pytest.raises(Misconfigured, match="only database 0"):
        check_usable("redis://node:7000/2", Server(CLUSTER, (7, 0)))
    check_usable("redis://node:7000/0", Server(CLUSTER, (7, 0)))
    check_usable("redis://one:6379/2", Server(STANDALONE, (7, 0)))


def test_a_refused_cluster_slots_is_called_what_it_is() -> None:
    from redis.exceptions import RedisClusterException

    misleading = RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: "
        "Cluster mode is not enabled on this node"
    )
    said = cluster_error(misleading)
    assert isinstance(said, Misconfigured) and "+cluster|slots" in str(said) and is_refusal(said)
    other = RedisClusterException("TTL exhausted.")
    assert cluster_error(other) is other


def test_sentinel_options_keep_each_sides_credentials_apart() -> None:
    settings = parse_sentinel_url(
        "rediss+sentinel://app:datapw@s1:1,s2:2/mymaster/4"
        "?sentinel_password=sentpw&ssl_ca_certs=/ca.pem&ssl_check_hostname=false"
    )
    addresses, to_sentinels, to_data_nodes = sentinel_arguments(settings, asynchronous=False)
    assert addresses == [("s1", 1), ("s2", 2)]
    assert (to_sentinels["username"], to_sentinels["password"]) == (None, "sentpw")
    assert (to_data_nodes["username"], to_data_nodes["password"], to_data_nodes["db"]) == ("app", "datapw", 4)
    for side in (to_sentinels, to_data_nodes):  # TLS to both, and no hidden retries on either
        assert (
            side["ssl"] is True and side["ssl_ca_certs"] == "/ca.pem" and side["ssl_check_hostname"] is False
        )
        assert side["retry"]._retries == 0  # what every redis-py from 5.0 on keeps the count in
    assert "db" not in to_sentinels


def test_refusals_are_told_from_failures() -> None:
    script = (
        "The user executing the script can't run this command or subcommand script: abc, on @user_script:3."
    )
    assert is_refusal(redis.exceptions.NoPermissionError("this user has no permissions to run the 'ping'"))
    assert is_refusal(redis.exceptions.AuthenticationError("invalid username-password pair"))
    assert is_refusal(redis.exceptions.ResponseError(script))
    assert is_refusal(
        redis.exceptions.ResponseError("The user executing the script can't publish to the channel")
    )
    assert is_refusal(Misconfigured("names a Sentinel"))
    assert not is_refusal(redis.exceptions.ConnectionError("Error 111 connecting"))
    assert not is_refusal(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"))
    assert not is_refusal(TimeoutError())


def test_no_master_found_becomes_one_line_with_a_hint() -> None:
    from redis.sentinel import MasterNotFoundError

    settings = parse_sentinel_url("redis+sentinel://s1/mymaster")
    long = MasterNotFoundError(
        "No master found for 'mymaster' : <redis.client.Redis(<redis.connection.ConnectionPool("
        + "x" * 900
        + ")>)> - AuthenticationError('invalid password')"
    )
    short = no_master_error(settings, long)
    assert isinstance(short, MasterNotFoundError) and len(str(short)) < 250
    assert "AuthenticationError" in str(short) and "sentinel_password" in str(short)
    other = ValueError("x")
    assert no_master_error(settings, other) is other


def test_every_client_distreload_makes_is_made_without_a_warning_on_the_installed_redis_py() -> None:
    # Options redis-py renamed or deprecated (lib_name -> driver_info in 8.0, the asyncio Retry in 8.2)
    # warn at construction: name the warning here, once, rather than in every test that starts a worker.
    import redis.asyncio

    settings = parse_sentinel_url("redis+sentinel://s1:26379/mymaster/0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        redis.Redis(**redis_options(asynchronous=False)).close()
        redis.asyncio.Redis(**redis_options(asynchronous=True))
        make_sentinel(settings, asynchronous=False)
        make_sentinel(settings, asynchronous=True)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


def test_a_cluster_with_a_redis_py_too_old_for_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis, "__version__", "7.4.0")
    with pytest.raises(Misconfigured, match=re.escape(CLUSTER_NEEDS)) as refused:
        require_cluster_support()
    assert "\n" not in str(refused.value) and "redis-py 7.4.0 is installed" in str(refused.value)
    assert is_refusal(refused.value)  # a worker retries it slowly, and says so once
    monkeypatch.setattr(redis, "__version__", "8.0.1")
    require_cluster_support()


def test_the_one_topology_probe_reads_hello_or_what_it_raised() -> None:
    url = "redis://h:6379/0"
    assert identify(url, {b"mode": b"cluster", b"version": b"7.2.4"}) == Server(CLUSTER, (7, 2, 4))
    assert identify(url, [b"mode", b"standalone", b"version", b"6.2.0"]).mode == STANDALONE
    old = redis.exceptions.ResponseError("unknown command 'HELLO'")
    assert identify(url, old) == Server(STANDALONE, (5,))
    with pytest.raises(Misconfigured, match="is a Redis Sentinel"):
        identify("redis://h:26379", {"mode": "sentinel", "version": "7.2.0"})
    with pytest.raises(Misconfigured, match="only database 0"):
        identify("redis://h/2", redis.exceptions.ResponseError("SELECT is not allowed in cluster mode"))
    lost = redis.exceptions.ConnectionError("refused")
    with pytest.raises(redis.exceptions.ConnectionError):
        identify(url, lost)

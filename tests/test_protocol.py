"""The wire format: messages, versions, publish requests, and the Lua scripts run against real Redis
servers and fakeredis (unique namespaces; the shared server is never flushed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from distreload.protocol import (
    _PUBLISH_SCRIPT,
    _SEED_SCRIPT,
    MAX_MATCH_WILDCARDS,
    MAX_VERSION,
    PUBLISH_KEYS,
    SEED_KEYS,
    BadMessage,
    ClusterVersion,
    Reload,
    ReloadRequest,
    State,
    channel_name,
    glob_matches,
    observers_channel_name,
    parse_message,
    path_pattern_problem,
    presence_prefix,
    publish_arguments,
    publish_result,
    reload_request,
    seed_arguments,
    state_from_reply,
    state_key,
)

EPOCH = "0123456789abcdef"
OTHER_EPOCH = "fedcba9876543210"


def message(**fields: Any) -> bytes:
    data: dict[str, Any] = {"epoch": EPOCH, "version": 3, "kind": "reload", "paths": []}
    data.update(fields)
    return json.dumps(data).encode()


def test_a_well_formed_message_parses_with_every_kind_and_option() -> None:
    assert parse_message(message()) == Reload(ClusterVersion(EPOCH, 3), "reload", ())
    assert parse_message(message(kind="css", paths=["/static/a.css"])).paths == ("/static/a.css",)
    fleet = parse_message(message(kind="morph", spread=2.5, match="/screens/lobby/*"))
    assert (fleet.kind, fleet.spread, fleet.match) == ("morph", 2.5, "/screens/lobby/*")
    assert parse_message(message(kind="images", paths=["/logo.png"])).kind == "images"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe\xfd",
        b"[1, 2]",
        b'"text"',
        b"null",
        message(epoch="XYZ"),
        message(epoch=7),
        message(version=-1),
        message(version=0),
        message(version=MAX_VERSION + 1),
        message(version=10**30),
        message(version=True),
        message(version=3.0),
        message(version="3"),
        message(kind="explode"),
        message(kind=None),
        message(paths="/a.css"),
        message(paths=["//evil.example/a.css"]),
        message(paths=["javascript:alert(1)"]),
        message(paths=["/a\nb.css"]),
        message(paths=["/a.css"] * 101),
        message(spread=-1),
        message(spread="soon"),
        message(spread=True),
        message(spread=10**6),
        message(match="lobby/*"),
        message(match=5),
        message(match="/" + "a" * 300),
        message(match="/a\\b"),
        b"{" + b" " * (70 * 1024) + b"}",
        # Crafted to break the parser rather than to pass as a reload: each once escaped it as another
        # exception than BadMessage, and the worker that read it lost its subscription.
        message(spread=10**400),
        message(spread=1e308 * 10),
        message(paths=[1]),
        message(paths=[["/a.css"]]),
        message(kind=["reload"]),
        message(kind={"reload": 1}),
        message(match=["/a"]),
        message(spread=[1]),
        b'{"epoch": "0123456789abcdef", "version": 3, "spread": ' + b"9" * 400 + b"}",
        b'{"epoch": "0123456789abcdef", "version": 3, "spread": 1e999}',
        b'{"epoch": "0123456789abcdef", "version": 3, "x": ' + b"[" * 20000 + b"]" * 20000 + b"}",
        b"[" * 30000,
        b'{"epoch": "0123456789abcdef", "version": 3, "kind": "\xff\xfe"}',
        b'{"epoch": "0123456789abcdef", "version": 3, "kind": "' + b"r" * 60000 + b'"}',
        b'{"epoch": "0123456789abcdef", "version": 3, "kind": "\\ud800"}',
    ],
    ids=lambda raw: repr(raw[:80]),
)
def test_anything_else_is_a_bad_message(raw: bytes) -> None:
    with pytest.raises(BadMessage):
        parse_message(raw)


def test_a_crafted_string_from_a_decoding_client_is_a_bad_message() -> None:
    # A client that decodes replies hands over str: a lone surrogate cannot even be encoded back.
    with pytest.raises(BadMessage):
        parse_message('{"epoch": "0123456789abcdef", "version": 3, "kind": "\ud800"}')
    with pytest.raises(BadMessage):
        parse_message("\ud800")


def test_a_crafted_last_message_in_the_state_reads_as_none() -> None:
    for last in (message(spread=10**400), b"[" * 30000, b"\xff\xfe"):
        assert state_from_reply([EPOCH.encode(), 3, last]) == State(ClusterVersion(EPOCH, 3))


def test_cluster_version_text_round_trip_and_malformed_ids() -> None:
    version = ClusterVersion(EPOCH, 12)
    assert ClusterVersion.parse(str(version)) == version
    for bad in (
        None,
        "",
        "12",
        "zz-1",
        f"{EPOCH}-",
        f"{EPOCH}--1",
        f"{EPOCH}-1x",
        f"{EPOCH}-99999999999999999",
        "<script>-1",
    ):
        assert ClusterVersion.parse(bad) is None


def test_is_behind_within_an_epoch_and_across_a_new_one() -> None:
    assert ClusterVersion(EPOCH, 1).is_behind(ClusterVersion(EPOCH, 2))
    assert not ClusterVersion(EPOCH, 2).is_behind(ClusterVersion(EPOCH, 2))
    assert not ClusterVersion(EPOCH, 3).is_behind(ClusterVersion(EPOCH, 2))
    # Redis lost its state: a new epoch with no reload counted is only bookkeeping...
    assert not ClusterVersion(EPOCH, 9).is_behind(ClusterVersion(OTHER_EPOCH, 0))
    # ...but a reload counted in the new epoch was missed.
    assert ClusterVersion(EPOCH, 9).is_behind(ClusterVersion(OTHER_EPOCH, 1))


def test_publish_requests_are_validated_before_anything_is_sent() -> None:
    assert reload_request("css", ["/a.css"]) == ReloadRequest("css", ("/a.css",))
    assert reload_request("morph", spread=3, match="/kiosk/**") == ReloadRequest(
        "morph", (), 3.0, "/kiosk/**"
    )
    for kind, paths, spread, match in (
        ("nope", [], 0, None),
        ("css", "/a.css", 0, None),
        ("css", ["http://x/a.css"], 0, None),
        ("css", ["/a"] * 101, 0, None),
        ("reload", [], -0.1, None),
        ("reload", [], float("nan"), None),
        ("reload", [], 3601, None),
        ("reload", [], 0, "kiosk"),
        ("css", ["/" + "a" * 2047] * 40, 0, None),
        ("reload", [], 10**400, None),
        ("reload", [], float("inf"), None),
        ("reload", [], "1", None),
        ("reload", [], True, None),
        ("reload", 5, 0, None),
        ("reload", None, 0, None),
        (["reload"], [], 0, None),
        ("reload", [], 0, 5),
    ):
        with pytest.raises(ValueError):
            reload_request(kind, paths, spread, match)


# --- match globs -----------------------------------------------------------------------------------------

GLOB_CASES = json.loads((Path(__file__).resolve().parent / "js" / "globs.json").read_text())["cases"]
# What 0.2 turned into a RegExp of 30 '.*' that backtracked for minutes against a kiosk's path.
HOSTILE_GLOB = "/" + "**" * 30 + "X"


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOB_CASES)
def test_globs_match_whole_paths_as_the_browser_does(pattern: str, path: str, expected: bool) -> None:
    # tests/js/cases.js checks client.js against the same table.
    assert glob_matches(pattern, path) is expected


def test_a_glob_built_to_backtrack_is_matched_at_once_and_refused_with_a_reason() -> None:
    answers: list[bool] = []
    paths = ["/screens/lobby/display-01", "/" + "a/" * 1000 + "b", "/" + "a" * 2047]
    patterns = [HOSTILE_GLOB, "/" + "*a" * 127 + "X", "/" + "**a" * 85]
    worker = threading.Thread(
        target=lambda: answers.extend(glob_matches(glob, path) for glob in patterns for path in paths),
        daemon=True,
    )
    worker.start()
    # A guard against a hang, not a measure: the backtracking 0.2 glob would run for minutes.
    worker.join(30)
    assert not worker.is_alive(), "glob matching hangs"
    assert answers == [False] * 8 + [True]
    for glob in (HOSTILE_GLOB, "/" + "*/" * (MAX_MATCH_WILDCARDS + 1)):
        reason = path_pattern_problem(glob)
        assert reason and "\n" not in reason
        with pytest.raises(ValueError, match="match"):
            reload_request("reload", [], 0, glob)
        with pytest.raises(BadMessage):
            parse_message(message(match=glob))
    assert path_pattern_problem("/" + "*/" * MAX_MATCH_WILDCARDS) == ""


def test_a_glob_is_matched_against_the_path_as_the_browser_writes_it_whatever_it_was_typed_in() -> None:
    # location.pathname of https://host/écrans/salle 1 is "/%C3%A9crans/salle%201".
    pathname = "/%C3%A9crans/salle%201"
    for typed in ("/écrans/*", "/%C3%A9crans/*", "/écrans/salle 1", "/é*/salle*"):
        glob = reload_request("reload", [], 0, typed).match
        assert glob_matches(glob, pathname), (typed, glob)
        assert reload_request("reload", [], 0, glob).match == glob  # as every worker reads it again
        assert parse_message(message(match=typed)).match == glob
    assert reload_request("reload", [], 0, '/"a"/<b>/日本').match == "/%22a%22/%3Cb%3E/%E6%97%A5%E6%9C%AC"
    assert not glob_matches(reload_request("reload", [], 0, "/ecrans/*").match, pathname)
    # Refused with the glob as it was typed, and what it is as a URL path where the length is the reason.
    for typed, reason in (
        ("/a\nb", "control character"),
        ("/\ud800x", "surrogate"),
        ("/" + "é" * 43, "is over 256 characters (as a URL path: '/%C3%A9"),
    ):
        with pytest.raises(ValueError) as refused:
            reload_request("reload", [], 0, typed)
        assert str(refused.value).startswith(f"match {typed[:10]!r}"[:-1]) and reason in str(refused.value)
        assert "\n" not in str(refused.value)


def test_what_a_worker_that_missed_reloads_is_told() -> None:
    last = Reload(ClusterVersion(EPOCH, 5), "css", ("/a.css",))
    state = State(ClusterVersion(EPOCH, 5), last)
    assert state.reload_for(ClusterVersion(EPOCH, 4)) == last  # missed only the last one: replay it
    assert state.reload_for(ClusterVersion(EPOCH, 3)) == Reload(ClusterVersion(EPOCH, 5))  # more: reload all
    assert state.reload_for(ClusterVersion(OTHER_EPOCH, 4)) == Reload(ClusterVersion(EPOCH, 5))
    assert State(ClusterVersion(EPOCH, 5)).reload_for(ClusterVersion(EPOCH, 4)) == Reload(
        ClusterVersion(EPOCH, 5)
    )


def test_malformed_script_replies_read_as_version_zero() -> None:
    for reply in (None, [], [b"XYZ", 1], [EPOCH.encode(), b"x"], [EPOCH.encode(), -1], 7):
        assert state_from_reply(reply).version.number == 0
    assert state_from_reply([EPOCH.encode(), 2, b"not json"]) == State(ClusterVersion(EPOCH, 2))
    assert publish_result([EPOCH.encode(), 2, b"nan"]).receivers == 0


def test_every_name_of_a_namespace_shares_one_cluster_slot() -> None:
    from redis.crc import key_slot

    names = [
        state_key("shop"),
        channel_name("shop"),
        observers_channel_name("shop"),
        presence_prefix("shop") + "host:1",
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert key_slot(state_key("shop").encode()) != key_slot(state_key("blog").encode())


# --- The scripts, against fakeredis and a real server ---------------------------------------------------


@pytest.fixture(params=["fakeredis", "redis-server"])
def client(request: pytest.FixtureRequest, namespace: str) -> Iterator[redis.Redis]:
    if request.param == "fakeredis":
        connection: redis.Redis = fakeredis.FakeRedis()
    else:
        connection = redis.Redis.from_url(request.getfixturevalue("shared_redis_url"))
    yield connection
    connection.delete(state_key(namespace))
    connection.close()


def run_publish(client: redis.Redis, namespace: str, request: ReloadRequest | None = None) -> Any:
    request = request or ReloadRequest()
    return client.eval(_PUBLISH_SCRIPT, PUBLISH_KEYS, *publish_arguments(namespace, request))


def test_publish_creates_bumps_and_remembers_the_last_message(client: redis.Redis, namespace: str) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe(channel_name(namespace))
    # A listener on the observers' channel gets every message but is not among the receivers counted.
    observers = client.pubsub()
    observers.subscribe(observers_channel_name(namespace))
    try:
        first = publish_result(run_publish(client, namespace))
        second = publish_result(run_publish(client, namespace, ReloadRequest("morph", (), 1.5, "/a/*")))
        assert first.receivers == 1 and second.receivers == 1
        assert second.version == ClusterVersion(first.version.epoch, 2)
        received = [
            m["data"] for m in iter(lambda: pubsub.get_message(timeout=1), None) if m["type"] == "message"
        ]
        observed = [
            m["data"] for m in iter(lambda: observers.get_message(timeout=1), None) if m["type"] == "message"
        ]
        assert observed == received
        assert [json.loads(m) for m in received] == [
            {
                "epoch": first.version.epoch,
                "version": 1,
                "kind": "reload",
                "paths": [],
                "spread": 0.0,
                "match": "",
            },
            {
                "epoch": first.version.epoch,
                "version": 2,
                "kind": "morph",
                "paths": [],
                "spread": 1.5,
                "match": "/a/*",
            },
        ]
        assert client.hget(state_key(namespace), "last") == received[-1]
    finally:
        pubsub.close()
        observers.close()


def test_publish_replaces_state_that_distreload_did_not_write(client: redis.Redis, namespace: str) -> None:
    for junk in ({"epoch": "NOT HEX", "version": "1"}, {"epoch": EPOCH, "version": "-5"}):
        client.delete(state_key(namespace))
        client.hset(state_key(namespace), mapping=junk)
        result = publish_result(run_publish(client, namespace))
        assert result.version.number == 1 and result.version.epoch != junk["epoch"]
    client.delete(state_key(namespace))
    client.set(state_key(namespace), "a string")
    assert publish_result(run_publish(client, namespace)).version.number == 1


def test_seed_puts_back_a_lost_state_and_records_how_workers_subscribe(
    client: redis.Redis, namespace: str
) -> None:
    known = ClusterVersion(EPOCH, 7)
    state = state_from_reply(
        client.eval(_SEED_SCRIPT, SEED_KEYS, *seed_arguments(namespace, known, sharded=False))
    )
    assert state == State(known)  # nothing there: what the worker knew is put back
    assert client.hget(state_key(namespace), "mode") == b"plain"
    run_publish(client, namespace)
    state = state_from_reply(
        client.eval(_SEED_SCRIPT, SEED_KEYS, *seed_arguments(namespace, known, sharded=False))
    )
    assert state.version == ClusterVersion(EPOCH, 8) and state.last is not None
    assert state.last.version == ClusterVersion(EPOCH, 8)
    # A worker that knew more of the same epoch (its Redis failed over to a replica that lost writes)
    # moves the state forward, with a reload that workers which moved over first are told of.
    ahead = ClusterVersion(EPOCH, 20)
    pubsub = client.pubsub()
    pubsub.subscribe(channel_name(namespace), observers_channel_name(namespace))
    try:
        state = state_from_reply(
            client.eval(_SEED_SCRIPT, SEED_KEYS, *seed_arguments(namespace, ahead, sharded=False))
        )
        assert state.version == ahead and state.last == Reload(ahead)
        received = [
            (m["channel"].decode(), parse_message(m["data"]))
            for m in iter(lambda: pubsub.get_message(timeout=1), None)
            if m["type"] == "message"
        ]
        # The workers are told, and so is a running ``distreload listen``.
        assert received == [
            (channel_name(namespace), Reload(ahead)),
            (observers_channel_name(namespace), Reload(ahead)),
        ]
    finally:
        pubsub.close()

"""Presence: the record each worker process keeps in Redis so that ``distreload status`` and the demo's
worker table can list the live workers. One place for its shape, both for the worker that writes it and
for every reader.

A worker writes ``distreload:{<namespace>}:presence:<host>:<pid>`` with an expiry of three refresh
intervals, so a killed worker drops out by itself. Readers take what Redis holds as untrusted: a record
that is not what a worker writes is counted as skipped, never an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard

from .config import Target
from .process import WorkerIdentity

# Longest text a reader keeps from a field (a host name is at most 253 characters).
_FIELD_LIMIT = 256


class PresenceUnavailable(Exception):
    """Redis could not be reached or read; the message is one line naming it."""


class BadPresence(ValueError):
    """A presence record that no worker of this version wrote."""


@dataclass(frozen=True)
class WorkerPresence:
    host: str
    pid: int
    streams: int
    version: str
    build: str
    started: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "started": round(self.started, 3),
                "streams": self.streams,
                "version": self.version,
                "build": self.build,
            }
        )


def presence_of(identity: WorkerIdentity, *, streams: int, version: object, build: str) -> WorkerPresence:
    """This worker's record as it stands now."""
    return WorkerPresence(identity.host, identity.pid, streams, str(version), build, identity.started)


def parse_presence(raw: bytes | str) -> WorkerPresence:
    """A record read from Redis; raise BadPresence for anything a worker would not have written."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadPresence(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(record, dict):
        raise BadPresence("not a JSON object")
    host = _text(record, "host", required=True)
    pid = record.get("pid")
    if not _is_whole(pid) or pid <= 0:
        raise BadPresence(f"pid {_show(pid)} is not a process id")
    streams = record.get("streams", 0)
    if not _is_whole(streams) or streams < 0:
        raise BadPresence(f"streams {_show(streams)} is not a count")
    started = record.get("started", 0.0)
    if not isinstance(started, int | float) or isinstance(started, bool) or not math.isfinite(started):
        raise BadPresence(f"started {_show(started)} is not a time")
    return WorkerPresence(
        host=host,
        pid=pid,
        streams=streams,
        version=_text(record, "version"),
        build=_text(record, "build"),
        started=float(started),
    )


def _is_whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value < 2**63


def _text(record: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = record.get(name, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise BadPresence(f"{name} {_show(value)} is not text")
    return value[:_FIELD_LIMIT]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class ClusterPresence:
    """What Redis holds about a namespace: its cluster version, the live workers, the unreadable records."""

    version: str | None
    workers: list[WorkerPresence]
    skipped: list[tuple[str, str]]  # (key, why) of each record that could not be read


def read_presence(target: Target) -> ClusterPresence:
    """Every live worker's presence in ``target``'s namespace (blocking I/O); raise PresenceUnavailable."""
    from .protocol import one_line, presence_prefix, state_key
    from .redis_clients import CLUSTER, open_sync

    try:
        redis_client = open_sync(target)
    except Exception as exc:
        raise PresenceUnavailable(f"cannot reach Redis at {target.display_url()}: {one_line(exc)}") from None
    client = redis_client.client
    prefix = presence_prefix(target.namespace)
    try:
        # Every key of a namespace shares one hash slot: on a cluster, only the node that owns it holds them.
        where = {}
        if redis_client.kind == CLUSTER:
            where["target_nodes"] = client.get_node_from_key(state_key(target.namespace))
        keys = sorted(client.scan_iter(match=f"{prefix}*", count=500, **where))
        values = client.mget(keys) if keys else []
        epoch, number = client.hmget(state_key(target.namespace), ["epoch", "version"])
    except Exception as exc:
        raise PresenceUnavailable(
            f"cannot read the cluster from Redis at {target.display_url()}: {one_line(exc)}"
        ) from None
    finally:
        redis_client.close()
    version = None
    if isinstance(epoch, bytes) and isinstance(number, bytes) and number.isdigit():
        version = f"{epoch.decode(errors='replace')}-{int(number)}"
    workers, skipped = [], []
    for key, value in zip(keys, values, strict=True):
        if value is None:
            continue  # expired between SCAN and MGET
        try:
            workers.append(parse_presence(value))
        except BadPresence as exc:
            name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            skipped.append((name.removeprefix(prefix), str(exc)))
    workers.sort(key=lambda w: (w.host, w.pid))
    return ClusterPresence(version, workers, skipped)


async def read_presence_async(target: Target) -> ClusterPresence:
    """:func:`read_presence` on a thread, for a page served from an event loop."""
    import asyncio

    return await asyncio.to_thread(read_presence, target)

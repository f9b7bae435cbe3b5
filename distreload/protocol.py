"""What travels through Redis, kept free of heavy imports: key and channel names, the Lua scripts, the
message format and its validation, and the one exchange ``distreload publish`` needs, spoken directly in
Redis's protocol (RESP).

The command line runs from shells and CI jobs where start-up is the whole cost: importing redis-py (and
asyncio with it) takes longer than the publish itself, so the command connects, authenticates, selects
the database and runs the publish script over one plain (or TLS) socket.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from .config import Target

ReloadKind = Literal["reload", "css"]
RELOAD_KINDS: tuple[ReloadKind, ...] = ("reload", "css")

MAX_MESSAGE_BYTES = 64 * 1024
MAX_VERSION = 2**53  # what a browser's JavaScript number still holds exactly
MAX_PATHS = 100
MAX_PATH_LENGTH = 2048
_EPOCH_PATTERN = re.compile(r"[0-9a-f]{8,32}")
_VERSION_TEXT_PATTERN = re.compile(r"([0-9a-f]{8,32})-([0-9]{1,16})")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\]")
# The most a published message adds around its paths ('{"epoch":"...","version":...,"kind":"...","paths":').
_MESSAGE_OVERHEAD = 100

# Both scripts start by reading the state; a state key that is missing, or that something other than
# distreload wrote (another type, a malformed epoch or version), counts as absent and is replaced, so stray
# data can never stop reloads for good nor travel to the workers.
_READ_STATE = """
local function read_state(key)
  local kind = redis.call('TYPE', key)
  kind = type(kind) == 'table' and kind['ok'] or kind
  if kind == 'none' then return nil end
  if kind == 'hash' then
    local state = redis.call('HMGET', key, 'epoch', 'version')
    local epoch, version = state[1], state[2]
    if type(epoch) == 'string' and type(version) == 'string'
        and #epoch >= 8 and #epoch <= 32 and string.match(epoch, '^[0-9a-f]+$')
        and #version <= 16 and string.match(version, '^[0-9]+$') then
      return epoch, tonumber(version)
    end
  end
  redis.call('DEL', key)
  return nil
end
"""

# Publish: create the state on first use, bump it and publish it, all at once. The message is built by
# concatenation because cjson turns an empty list into an object; every piece was validated by the caller.
_PUBLISH_SCRIPT = _READ_STATE + """
local epoch = read_state(KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'version', 0)
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local message = '{"epoch":"' .. epoch .. '","version":' .. version ..
  ',"kind":"' .. ARGV[2] .. '","paths":' .. ARGV[3] .. '}'
local receivers = redis.call('PUBLISH', KEYS[2], message)
return {epoch, version, receivers}
"""

# Seed: run by a worker after every (re)subscribe. A Redis restarted without persistence has no state;
# the worker puts back what it knew, so browsers see no change and nothing reloads for the restart alone.
_SEED_SCRIPT = _READ_STATE + """
local epoch, version = read_state(KEYS[1])
local known = tonumber(ARGV[2])
if not epoch then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'version', known)
  return {ARGV[1], known}
end
if epoch == ARGV[1] and known > version then
  redis.call('HSET', KEYS[1], 'version', known)
  version = known
end
return {epoch, version}
"""


def channel_name(namespace: str) -> str:
    return f"distreload:{namespace}:reload"


def state_key(namespace: str) -> str:
    return f"distreload:{namespace}:state"


def presence_prefix(namespace: str) -> str:
    return f"distreload:{namespace}:presence:"


def new_epoch() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True, order=False)
class ClusterVersion:
    """How many reloads the cluster has seen since its state was created (the epoch)."""

    epoch: str
    number: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.number}"

    @classmethod
    def parse(cls, text: str | None) -> ClusterVersion | None:
        """Read ``epoch-number`` as sent in ``Last-Event-ID``; None for anything malformed."""
        if not text:
            return None
        match = _VERSION_TEXT_PATTERN.fullmatch(text.strip())
        if match is None:
            return None
        number = int(match.group(2))
        if number > MAX_VERSION:
            return None
        return cls(match.group(1), number)

    def is_behind(self, current: ClusterVersion) -> bool:
        """Whether a browser that saw ``self`` has missed a reload that ``current`` records.

        Another epoch means Redis lost its state and started again: any reload counted since then was
        missed; none counted (number 0) means only the restart happened, which is no reason to reload.
        """
        if self.epoch == current.epoch:
            return self.number < current.number
        return current.number > 0


@dataclass(frozen=True, slots=True)
class Reload:
    """One reload as it travels: the cluster version it created, its kind and, for CSS, which sheets."""

    version: ClusterVersion
    kind: ReloadKind = "reload"
    paths: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"version": str(self.version), "kind": self.kind, "paths": list(self.paths)},
                          separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a publish created, and how many worker processes (subscribers) received it."""

    version: ClusterVersion
    receivers: int


class BadMessage(ValueError):
    """Something on the channel that distreload did not write."""


class PublishError(RuntimeError):
    """The reload was not published (Redis unreachable, refused, or timed out)."""


def validate_publish_request(kind: str, paths: Sequence[str]) -> tuple[ReloadKind, tuple[str, ...]]:
    if kind not in RELOAD_KINDS:
        raise ValueError(f"kind must be one of {', '.join(RELOAD_KINDS)}, not {kind!r}")
    if isinstance(paths, str):
        raise ValueError("paths must be a list of URL paths, not one string")
    if len(paths) > MAX_PATHS:
        raise ValueError(f"at most {MAX_PATHS} paths per reload")
    for path in paths:
        if not is_same_origin_path(path):
            raise ValueError(f"{path!r} is not a same-origin URL path (it must start with a single '/')")
    # Every worker drops a message over the size limit as not distreload's: refuse to publish one.
    size = len(json.dumps(list(paths)).encode()) + _MESSAGE_OVERHEAD
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"the paths make a {size} byte message; the limit is {MAX_MESSAGE_BYTES} bytes")
    return kind, tuple(paths)  # mypy narrows kind to ReloadKind through the membership test above


def is_same_origin_path(path: object) -> bool:
    """A path a page can fetch from its own origin: '/x.css', never '//host/x.css' or 'javascript:'."""
    return (
        isinstance(path, str)
        and 0 < len(path) <= MAX_PATH_LENGTH
        and path.startswith("/")
        and not path.startswith("//")
        and _CONTROL_CHARACTERS.search(path) is None
    )


def parse_message(raw: bytes | str) -> Reload:
    """Validate a message from the channel; raise BadMessage for anything distreload did not publish."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not raw:
        raise BadMessage("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"message of {len(raw)} bytes is over the {MAX_MESSAGE_BYTES} byte limit")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadMessage(f"not UTF-8 JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise BadMessage("not a JSON object")
    epoch, number = data.get("epoch"), data.get("version")
    kind, paths = data.get("kind"), data.get("paths", [])
    if not isinstance(epoch, str) or not _EPOCH_PATTERN.fullmatch(epoch):
        raise BadMessage("epoch missing or malformed")
    if type(number) is not int or not 1 <= number <= MAX_VERSION:
        raise BadMessage("version missing, not a whole number, or out of range")
    if kind not in RELOAD_KINDS:
        raise BadMessage("unknown kind")
    if not isinstance(paths, list) or len(paths) > MAX_PATHS or not all(map(is_same_origin_path, paths)):
        raise BadMessage("paths must be a short list of same-origin URL paths")
    return Reload(ClusterVersion(epoch, number), kind, tuple(paths))


def _state_from_reply(reply: Any) -> ClusterVersion:
    try:
        epoch_raw, number_raw = reply[0], reply[1]
        epoch = epoch_raw.decode() if isinstance(epoch_raw, bytes) else str(epoch_raw)
        number = int(number_raw)
    except (TypeError, ValueError, IndexError, UnicodeDecodeError, AttributeError):
        return ClusterVersion("0" * 16, 0)
    if not _EPOCH_PATTERN.fullmatch(epoch) or not 0 <= number <= MAX_VERSION:
        return ClusterVersion("0" * 16, 0)
    return ClusterVersion(epoch, number)


def _publish_result(reply: Any) -> PublishResult:
    state = _state_from_reply(reply)
    return PublishResult(state, receivers=int(reply[2]))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


def _describe_redis_error(target: Target, exc: BaseException) -> str:
    text = f"could not publish to Redis at {target.display_url()}: {_one_line(exc)}"
    # redis-py's TimeoutError is not the built-in one; both mean the same here (checked by name so that
    # this module need not import redis-py).
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        # The command may have reached a Redis that is only slow: say so rather than claim either way.
        text += " (no answer in time: the reload goes out if Redis runs it later)"
    return text


# --- A minimal RESP client: connect, AUTH, SELECT, EVAL -----------------------------------------------


class ReplyError(Exception):
    """Redis answered with an error (``-ERR ...``)."""


class _Connection:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.username: str | None = unquote(parts.username) if parts.username else _first(query, "username")
        self.password: str | None = unquote(parts.password) if parts.password else _first(query, "password")
        if parts.scheme == "unix":
            self.database = int((query.get("db") or ["0"])[0])
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(parts.path)
        else:
            path = parts.path.strip("/")
            self.database = int(path or (query.get("db") or ["0"])[0])
            sock = socket.create_connection((parts.hostname or "localhost", parts.port or 6379), timeout)
            if parts.scheme == "rediss":
                import ssl

                # The same TLS options redis-py reads from the URL, so one URL serves workers and CLI.
                context = ssl.create_default_context(cafile=_first(query, "ssl_ca_certs"))
                certfile = _first(query, "ssl_certfile")
                if certfile:
                    context.load_cert_chain(certfile, _first(query, "ssl_keyfile"))
                if _first(query, "ssl_check_hostname") in ("false", "False", "0"):
                    context.check_hostname = False
                requirement = _first(query, "ssl_cert_reqs")
                if requirement in ("none", "CERT_NONE"):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                elif requirement in ("optional", "CERT_OPTIONAL"):
                    context.verify_mode = ssl.CERT_OPTIONAL
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
        self.socket = sock
        self.reader = sock.makefile("rb")

    def command(self, *arguments: str | bytes) -> Any:
        encoded = [a.encode() if isinstance(a, str) else a for a in arguments]
        request = b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)
        self.socket.sendall(request)
        return self._reply()

    def _reply(self) -> Any:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise ReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.reader.read(size + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")

    def close(self) -> None:
        self.reader.close()
        self.socket.close()


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def publish_over_resp(target: Target, kind: str = "reload", paths: Sequence[str] = (),
                      *, timeout: float = 5.0) -> PublishResult:
    """Publish one reload to every worker sharing ``target``, without importing redis-py; raise
    PublishError when it did not go out."""
    checked_kind, checked_paths = validate_publish_request(kind, paths)
    try:
        connection = _Connection(target.redis_url, timeout)
        try:
            if connection.password is not None:
                if connection.username:
                    connection.command("AUTH", connection.username, connection.password)
                else:
                    connection.command("AUTH", connection.password)
            if connection.database:
                connection.command("SELECT", str(connection.database))
            reply = connection.command("EVAL", _PUBLISH_SCRIPT, "2", state_key(target.namespace),
                                       channel_name(target.namespace), new_epoch(), checked_kind,
                                       json.dumps(list(checked_paths)))
        finally:
            connection.close()
    except (OSError, ReplyError, ValueError) as exc:
        raise PublishError(_describe_redis_error(target, exc)) from exc
    return _publish_result(reply)

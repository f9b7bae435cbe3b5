"""What travels through Redis: key and channel names, the Lua scripts, the message format and its
validation. Free of heavy imports, so ``distreload publish`` starts fast.

Every name of a namespace carries the namespace as a hash tag (``distreload:{shop}:state``): on a Redis
Cluster the state, the channel and the presence keys then live in one slot, so one script can touch them
all and a sharded channel stays on the shard that holds its state.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from .delivery import WaitSummary

ReloadKind = Literal["reload", "css", "morph", "images"]
RELOAD_KINDS: tuple[ReloadKind, ...] = ("reload", "css", "morph", "images")

MAX_MESSAGE_BYTES = 64 * 1024
MAX_VERSION = 2**53  # what a browser's JavaScript number still holds exactly
MAX_PATHS = 100
MAX_PATH_LENGTH = 2048
MAX_SPREAD_SECONDS = 3600.0
MAX_MATCH_LENGTH = 256
# Wildcards ('*', '**', '?') per match glob: far more than a path pattern needs, and it keeps the work of
# matching one path small in every browser.
MAX_MATCH_WILDCARDS = 16
_EPOCH_PATTERN = re.compile(r"[0-9a-f]{8,32}")
_VERSION_TEXT_PATTERN = re.compile(r"([0-9a-f]{8,32})-([0-9]{1,16})")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# The most a published message adds around its request ('{"epoch":"...","version":...,').
_MESSAGE_OVERHEAD = 80

# Both scripts start by reading the state; a state key that is missing, or that something other than
# distreload wrote (another type, a malformed epoch or version), counts as absent and is replaced, so stray
# data can never stop reloads for good nor travel to the workers.
_READ_STATE = """
local function read_state(key)
  local kind = redis.call('TYPE', key)
  kind = type(kind) == 'table' and kind['ok'] or kind
  if kind == 'none' then return nil end
  if kind == 'hash' then
    local state = redis.call('HMGET', key, 'epoch', 'version', 'last')
    local epoch, version = state[1], state[2]
    if type(epoch) == 'string' and type(version) == 'string'
        and #epoch >= 8 and #epoch <= 32 and string.match(epoch, '^[0-9a-f]+$')
        and #version <= 16 and string.match(version, '^[0-9]+$') then
      return epoch, tonumber(version), state[3] or ''
    end
  end
  redis.call('DEL', key)
  return nil
end
"""

# Both scripts publish the way the workers subscribe, which they record in the state ('mode'): 'sharded' on
# a Redis Cluster, where a message goes out with SPUBLISH and stays on the shard that holds the state, else
# a plain PUBLISH. So a publisher need not know the topology it publishes to. The channels are arguments,
# not keys: they share the state's slot (the hash tag), and a key that is not stored would make a cluster
# refuse the script (TRYAGAIN) while that slot migrates. The message goes to the workers' channel and then
# to the observers' one (``distreload listen``); the count returned is the workers' channel's alone, so a
# running listener is never counted as a worker process.
_PUBLISH_HERE = """
local function publish_here(key, channel, observers, message)
  redis.call('HSET', key, 'last', message)
  local command = redis.call('HGET', key, 'mode') == 'sharded' and 'SPUBLISH' or 'PUBLISH'
  local workers = redis.call(command, channel, message)
  -- pcall: a user whose ACL rules predate the observers' channel still publishes to every worker; only a
  -- running `distreload listen` misses the message then.
  redis.pcall(command, observers, message)
  return workers
end
"""

# Publish: create the state on first use, bump it, keep the message as the state's last one (what a worker
# that missed it replays) and publish it, all at once. ARGV[2] is the request as a JSON object, validated
# by the caller; the message is that object with the epoch and version put in front.
_PUBLISH_SCRIPT = (
    _READ_STATE
    + _PUBLISH_HERE
    + """
local epoch = read_state(KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'version', 0)
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local message = '{"epoch":"' .. epoch .. '","version":' .. version .. ',' .. string.sub(ARGV[2], 2)
local receivers = publish_here(KEYS[1], ARGV[3], ARGV[4], message)
return {epoch, version, receivers}
"""
)

# Seed: run by a worker after every (re)subscribe, with the version it knows (ARGV[1], ARGV[2]) and how it
# subscribed (ARGV[3]). A Redis restarted without persistence has no state: the worker puts back what it
# knew, so browsers see no change and nothing reloads for the restart alone. A state of the same epoch
# that is behind the worker lost writes (a failover to a replica that had not seen them): workers that
# moved over first may have missed those reloads, so the version goes forward with a reload for it.
_SEED_SCRIPT = (
    _READ_STATE
    + _PUBLISH_HERE
    + """
local epoch, version, last = read_state(KEYS[1])
local known = tonumber(ARGV[2])
if not epoch then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'version', known, 'mode', ARGV[3])
  return {ARGV[1], known, ''}
end
redis.call('HSET', KEYS[1], 'mode', ARGV[3])
if epoch == ARGV[1] and known > version then
  redis.call('HSET', KEYS[1], 'version', known)
  version = known
  last = '{"epoch":"' .. epoch .. '","version":' .. version ..
    ',"kind":"reload","paths":[],"spread":0.0,"match":""}'
  publish_here(KEYS[1], ARGV[4], ARGV[5], last)
end
return {epoch, version, last}
"""
)


def channel_name(namespace: str) -> str:
    """The channel the workers subscribe to: a publish's count of receivers is its subscribers."""
    return f"distreload:{{{namespace}}}:reload"


def observers_channel_name(namespace: str) -> str:
    """The channel ``distreload listen`` subscribes to: every message of :func:`channel_name` goes here
    too, so that a listener sees each reload without being counted as a worker process."""
    return f"distreload:{{{namespace}}}:reload:observers"


def state_key(namespace: str) -> str:
    return f"distreload:{{{namespace}}}:state"


def presence_prefix(namespace: str) -> str:
    return f"distreload:{{{namespace}}}:presence:"


def round_key(namespace: str, version: str) -> str:
    return f"distreload:{{{namespace}}}:wait:{version}"


def pages_prefix(namespace: str) -> str:
    return f"distreload:{{{namespace}}}:pages:"


def inbox_key(namespace: str, token: str) -> str:
    """The list a worker drains: the reports other workers received for its streams."""
    return f"distreload:{{{namespace}}}:inbox:{token}"


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

    def follows(self, seen: ClusterVersion) -> bool:
        """Whether this is the very next version after ``seen`` (nothing else was missed between)."""
        return self.epoch == seen.epoch and self.number == seen.number + 1


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    """What a publisher asks every page to do, validated (see :func:`reload_request`)."""

    kind: ReloadKind = "reload"
    paths: tuple[str, ...] = ()
    spread: float = 0.0
    match: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"kind": self.kind, "paths": list(self.paths), "spread": self.spread, "match": self.match},
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class Reload:
    """One reload as it travels: the cluster version it created and what the pages are to do."""

    version: ClusterVersion
    kind: ReloadKind = "reload"
    paths: tuple[str, ...] = ()
    spread: float = 0.0
    match: str = ""

    def to_json(self) -> str:
        """The data of the ``reload`` event a browser receives."""
        return json.dumps(
            {
                "version": str(self.version),
                "kind": self.kind,
                "paths": list(self.paths),
                "spread": self.spread,
                "match": self.match,
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a publish created, and how many receivers it had: Redis's count of the connections subscribed
    to the namespace's channel (PUBLISH's reply, run inside the publish script), on the node that holds
    the namespace's state. Each worker process with a running app holds exactly one; ``distreload listen``
    subscribes to the observers' channel instead, so it is not counted. A worker that
    drops the message (its state does not back it) was still counted: the count says the message reached
    the process, not that a page reloaded. With a wait, ``pages`` says what became of the pages open at
    publish time."""

    version: ClusterVersion
    receivers: int
    pages: WaitSummary | None = None


class BadMessage(ValueError):
    """Something on the channel that distreload did not write."""


class PublishError(RuntimeError):
    """The reload was not published (Redis unreachable, refused, or timed out)."""


def reload_request(
    kind: object = "reload", paths: Sequence[object] = (), spread: object = 0.0, match: object = None
) -> ReloadRequest:
    """Check what a publisher asked for; ValueError with a one-line reason for anything a page could
    not follow, before anything is sent."""
    if not isinstance(kind, str) or kind not in RELOAD_KINDS:
        raise ValueError(f"kind must be one of {', '.join(RELOAD_KINDS)}, not {_shown(kind)}")
    if isinstance(paths, str):
        raise ValueError("paths must be a list of URL paths, not one string")
    if not isinstance(paths, list | tuple):
        raise ValueError(f"paths must be a list of URL paths, not {_shown(paths)}")
    if len(paths) > MAX_PATHS:
        raise ValueError(f"at most {MAX_PATHS} paths per reload")
    for path in paths:
        if not is_same_origin_path(path):
            raise ValueError(
                f"{_shown(path)} is not a same-origin URL path (it must start with a single '/')"
            )
    seconds = _seconds(spread)
    if seconds is None or not 0 <= seconds <= MAX_SPREAD_SECONDS:
        raise ValueError(
            f"spread must be a number of seconds from 0 to {MAX_SPREAD_SECONDS:g}, not {_shown(spread)}"
        )
    if match is None:
        match = ""
    if match != "":
        typed = match
        match = as_in_location_pathname(match)
        problem = path_pattern_problem(match)
        if problem:
            encoded = f" (as a URL path: {_shown(match)})" if match != typed else ""
            raise ValueError(f"match {_shown(typed)} {problem}{encoded}")
    # Each value was checked above; the casts only tell the type checker what the checks proved.
    request = ReloadRequest(kind, cast(tuple[str, ...], tuple(paths)), seconds, cast(str, match))
    # Every worker drops a message over the size limit as not distreload's: refuse to publish one.
    size = len(request.to_json().encode()) + _MESSAGE_OVERHEAD
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"the paths make a {size} byte message; the limit is {MAX_MESSAGE_BYTES} bytes")
    return request


def _seconds(value: object) -> float | None:
    """A finite number as a float; None for anything else (a bool, a string, an int too large for a float,
    which ``float()`` refuses with OverflowError rather than ValueError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


_SHOWN_LENGTH = 60


def _shown(value: object) -> str:
    """A value for an error message, cut short: a rejected value may be megabytes long, or an int whose
    digits Python refuses to write out at all."""
    try:
        text = repr(value)
    except ValueError:
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= _SHOWN_LENGTH else f"{text[: _SHOWN_LENGTH - 3]}..."


def is_same_origin_path(path: object) -> bool:
    """A path a page can fetch from its own origin: '/x.css', never '//host/x.css' or 'javascript:'."""
    return (
        isinstance(path, str)
        and 0 < len(path) <= MAX_PATH_LENGTH
        and path.startswith("/")
        and not path.startswith("//")
        and _CONTROL_CHARACTERS.search(path) is None
    )


# What every browser's location.pathname holds percent-encoded (UTF-8, upper-case hex): anything past ASCII,
# the space, '"', '<' and '>'. A glob is matched against that form, so "/écrans/*" is taken as
# "/%C3%A9crans/*"; what a glob holds encoded already stays as it is, and '?' stays its wildcard.
# Control characters and lone surrogates are left as they are: path_pattern_problem() refuses them.
_ENCODED_IN_PATHNAMES = re.compile('[^\x00-\x7f\ud800-\udfff]|[ "<>]')


def _percent_encoded(found: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in found.group().encode())


def as_in_location_pathname(pattern: object) -> object:
    """``pattern`` with the characters a browser's ``location.pathname`` percent-encodes written that way,
    as pages compare it; anything but a string as it came (refused by :func:`path_pattern_problem`)."""
    if not isinstance(pattern, str):
        return pattern
    return _ENCODED_IN_PATHNAMES.sub(_percent_encoded, pattern)


def path_pattern_problem(pattern: object) -> str:
    """Why ``pattern`` is no glob a page may be given, one line that follows "match '...' "; "" if it is one.

    A glob starts with '/', is short, has no control characters or backslashes, has at most
    MAX_MATCH_WILDCARDS wildcards, and never three or more '*' in a row (which is neither '*' nor '**').
    """
    if not isinstance(pattern, str):
        return "must be a URL path pattern (a string), e.g. '/screens/lobby/*'"
    if not pattern.startswith("/"):
        return "must be a URL path pattern starting with '/', e.g. '/screens/lobby/*'"
    if len(pattern) > MAX_MATCH_LENGTH:
        return f"is over {MAX_MATCH_LENGTH} characters"
    if _CONTROL_CHARACTERS.search(pattern) is not None:
        return "holds a control character or a backslash"
    if _LONE_SURROGATE.search(pattern) is not None:
        return "holds a lone UTF-16 surrogate, which no URL can hold"
    if "***" in pattern:
        return (
            "has three or more '*' in a row, which mean nothing: "
            "'*' matches within a path segment, '**' across them"
        )
    wildcards = sum(token in ("*", "**", "?") for token in _glob_tokens(pattern))
    if wildcards > MAX_MATCH_WILDCARDS:
        return f"has {wildcards} wildcards; at most {MAX_MATCH_WILDCARDS} are allowed"
    return ""


def _glob_tokens(pattern: str) -> list[str]:
    """A glob as tokens: one character each, except that a run of '*' is one token ('**' for two or more,
    which is what a longer run means)."""
    tokens: list[str] = []
    index = 0
    while index < len(pattern):
        end = index
        while end < len(pattern) and pattern[end] == "*":
            end += 1
        if end > index:
            tokens.append("**" if end - index > 1 else "*")
            index = end
        else:
            tokens.append(pattern[index])
            index += 1
    return tokens


def glob_matches(pattern: str, path: str) -> bool:
    """Whether ``path`` matches the glob ``pattern`` as a whole ("" matches every path): '*' is any run of
    characters but '/', '**' any run at all, '?' one character but '/'. The same as client.js's
    matchesGlob.

    Never backtracks: it follows every way the glob could match at once, a bit per glob position, one path
    character at a time, so the time is linear in the path's length (times the glob's length / 64).
    """
    if not pattern:
        return True
    tokens = _glob_tokens(pattern)
    literals: dict[str, int] = {}
    any_but_slash = stars_in_segment = stars_across = 0
    for position, token in enumerate(tokens):
        bit = 1 << position
        if token == "*":
            stars_in_segment |= bit
        elif token == "**":
            stars_across |= bit
        elif token == "?":
            any_but_slash |= bit
        else:
            literals[token] = literals.get(token, 0) | bit
    stars = stars_in_segment | stars_across
    # A star may match nothing: a state on a star is also on the token after it. No two stars are adjacent
    # (a run is one token), so one shift reaches every such state.
    states = 1 | (1 & stars) << 1
    for character in path:
        if character == "/":
            states = (states & literals.get("/", 0)) << 1 | (states & stars_across)
        else:
            states = (states & (literals.get(character, 0) | any_but_slash)) << 1 | (states & stars)
        if not states:
            return False
        states |= (states & stars) << 1
    return bool(states >> len(tokens) & 1)


def parse_message(raw: bytes | str) -> Reload:
    """Validate a message from the channel (or the state's ``last`` field); raise BadMessage for anything
    distreload did not publish, and never anything else: whatever is on the channel, a worker that reads
    it must keep its subscription."""
    try:
        return _parse_message(raw)
    except BadMessage:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        # Deeply nested JSON (RecursionError), a number no float holds (OverflowError), a string that
        # cannot be encoded: none of it was published by distreload.
        raise BadMessage(f"unreadable ({exc.__class__.__name__})") from None


def _parse_message(raw: bytes | str) -> Reload:
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
    if not isinstance(epoch, str) or not _EPOCH_PATTERN.fullmatch(epoch):
        raise BadMessage("epoch missing or malformed")
    if type(number) is not int or not 1 <= number <= MAX_VERSION:
        raise BadMessage("version missing, not a whole number, or out of range")
    paths = data.get("paths", [])
    if not isinstance(paths, list) or len(paths) > MAX_PATHS or not all(map(is_same_origin_path, paths)):
        raise BadMessage("paths must be a short list of same-origin URL paths")
    try:
        request = reload_request(data.get("kind"), paths, data.get("spread", 0.0), data.get("match"))
    except (ValueError, TypeError) as exc:
        raise BadMessage(str(exc)) from None
    return Reload(ClusterVersion(epoch, number), request.kind, request.paths, request.spread, request.match)


@dataclass(frozen=True, slots=True)
class State:
    """The state hash as a script returned it: the version and the last message published."""

    version: ClusterVersion
    last: Reload | None = None

    def reload_for(self, seen: ClusterVersion) -> Reload:
        """What a worker or page that saw ``seen`` is to do: the last message when it missed only that
        one, else a full reload (what else was missed is not kept)."""
        if self.last is not None and self.last.version == self.version and self.version.follows(seen):
            return self.last
        return Reload(self.version)


UNKNOWN_VERSION = ClusterVersion("0" * 16, 0)


def state_from_reply(reply: Any) -> State:
    """Read ``{epoch, version[, last]}`` as the scripts return it; anything malformed reads as version 0."""
    try:
        epoch_raw, number_raw = reply[0], reply[1]
        epoch = epoch_raw.decode() if isinstance(epoch_raw, bytes) else str(epoch_raw)
        number = int(number_raw)
    except (TypeError, ValueError, IndexError, UnicodeDecodeError, AttributeError):
        return State(UNKNOWN_VERSION)
    if not _EPOCH_PATTERN.fullmatch(epoch) or not 0 <= number <= MAX_VERSION:
        return State(UNKNOWN_VERSION)
    last = None
    raw_last = reply[2] if len(reply) > 2 else None
    if isinstance(raw_last, bytes | str) and raw_last:
        try:
            last = parse_message(raw_last)
        except BadMessage:
            last = None
    return State(ClusterVersion(epoch, number), last)


def publish_result(reply: Any) -> PublishResult:
    try:
        receivers = int(reply[2])
    except (TypeError, ValueError, IndexError):
        receivers = 0
    return PublishResult(state_from_reply(reply).version, receivers)


PUBLISH_KEYS = 1  # how many of the publish script's arguments are keys: the state
SEED_KEYS = 1


def publish_arguments(namespace: str, request: ReloadRequest) -> list[str]:
    """The publish script's keys, then its ARGV (``EVAL script PUBLISH_KEYS *arguments``)."""
    return [
        state_key(namespace),
        new_epoch(),
        request.to_json(),
        channel_name(namespace),
        observers_channel_name(namespace),
    ]


def publish_call(namespace: str, request: ReloadRequest) -> tuple[Any, ...]:
    """EVAL's arguments for a publish (the script, how many keys, the keys, ARGV): what every way of
    publishing evaluates, worker links, redis-py's cluster and Sentinel clients and the command line's own
    RESP client alike."""
    return (_PUBLISH_SCRIPT, PUBLISH_KEYS, *publish_arguments(namespace, request))


def seed_arguments(namespace: str, known: ClusterVersion, *, sharded: bool) -> list[str]:
    """The seed script's keys, then its ARGV (``EVAL script SEED_KEYS *arguments``)."""
    return [
        state_key(namespace),
        known.epoch,
        str(known.number),
        "sharded" if sharded else "plain",
        channel_name(namespace),
        observers_channel_name(namespace),
    ]


def one_line(exc: BaseException) -> str:
    """An exception as one line of text: its class and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


def describe_publish_failure(display_url: str, exc: BaseException) -> str:
    """The one line a failed publish raises with (as :class:`PublishError`)."""
    text = f"could not publish to Redis at {display_url}: {one_line(exc)}"
    # redis-py's TimeoutError is not the built-in one; both mean the same here (checked by name so that
    # this module need not import redis-py).
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        # The command may have reached a Redis that is only slow: say so rather than claim either way.
        text += " (no answer in time: the reload goes out if Redis runs it later)"
    return text

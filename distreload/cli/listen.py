"""``distreload listen``: print reloads as they pass, read from Redis or from a running app's event stream."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence

from .. import __version__
from ..config import DEFAULT_PREFIX
from .common import (
    CommandError,
    Parser,
    UsageError,
    add_command,
    add_redis_options,
    one_line,
    positive_float,
    positive_int,
    printable,
    reason,
    redis_target,
    with_tls_hint,
)
from .publish import app_base

NAME = "listen"


def add_parser(commands: argparse._SubParsersAction[Parser]) -> Parser:
    parser = add_command(
        commands,
        NAME,
        "print reload events as they pass",
        "Subscribe to the namespace's observers channel, which every reload also goes to (or to a running\n"
        "app's event stream with --url), and print every reload as it passes: a quick check that\n"
        "publisher, Redis, proxies and workers agree. A listener is never counted among the worker\n"
        "processes a publish reports.",
        "examples:\n"
        "  distreload listen --redis-url redis://127.0.0.1:6379/0\n"
        "  distreload listen --count 1 --timeout 60       wait for the next reload, at most a minute\n"
        "  distreload listen --url http://127.0.0.1:8000   through the app (and any proxy in front of it)\n\n"
        "With --count N the status is 1 if fewer than N reloads passed before --timeout.",
    )
    add_redis_options(parser)
    parser.add_argument(
        "--url",
        metavar="BASE",
        help="read the event stream of the app at BASE instead of "
        "Redis (what a browser sees, proxies included)",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"the app's reload prefix ({DEFAULT_PREFIX})"
    )
    add_bounded_output_options(parser, "reload", "reloads")
    parser.set_defaults(run=run)
    return parser


def add_bounded_output_options(parser: argparse.ArgumentParser, event: str, events: str) -> None:
    """--count/--timeout (so scripts and tests can bound a long-running command) and --json."""
    parser.add_argument("--count", type=positive_int, metavar="N", help=f"stop after N {events}")
    parser.add_argument("--timeout", type=positive_float, metavar="SECONDS", help="stop after SECONDS")
    parser.add_argument("--json", action="store_true", help=f"print one JSON object per {event}")


def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    if args.url is not None:
        if args.redis_url is not None:
            raise UsageError("pass either --url (read the app's stream) or --redis-url, not both")
        seen = _listen_over_http(args, deadline)
    else:
        seen = _listen_to_redis(args, deadline)
    if args.count is not None and seen < args.count:
        raise CommandError(f"timed out after {args.timeout:g} s with {seen} of {args.count} reloads")
    return 0


def print_reload(
    args: argparse.Namespace, version: str, kind: str, paths: Sequence[str], source: str
) -> None:
    if args.json:
        record = {"version": version, "kind": kind, "paths": list(paths), "source": source}
        print(json.dumps(record), flush=True)
    else:
        stamp = time.strftime("%H:%M:%S")
        detail = f" {' '.join(paths)}" if paths else ""
        # What a stream carries is not trusted to be plain text: escape codes are shown, not obeyed.
        print(printable(f"{stamp} {kind} {version}{detail}  ({source})"), flush=True)


def _listen_to_redis(args: argparse.Namespace, deadline: float | None) -> int:
    from ..protocol import BadMessage, observers_channel_name, parse_message
    from ..redis_clients import open_sync

    target = redis_target(args)
    # Not the workers' channel: every reload goes to this one too, and a publish counts only the workers'
    # channel's subscribers, so a listener never inflates "received by N worker processes".
    channel = observers_channel_name(target.namespace)
    try:
        redis_client = open_sync(target)
    except Exception as exc:
        raise CommandError(
            with_tls_hint(target, f"cannot reach Redis at {target.display_url()}: {one_line(exc)}")
        ) from None
    # On a Redis Cluster (7+) both channels are shard channels, on the node that owns the namespace's slot.
    sharded = redis_client.sharded
    pubsub = redis_client.client.pubsub()
    subscribed, message_type = ("ssubscribe", "smessage") if sharded else ("subscribe", "message")
    read = pubsub.get_sharded_message if sharded else pubsub.get_message
    seen = 0
    try:
        try:
            (pubsub.ssubscribe if sharded else pubsub.subscribe)(channel)
            # Wait for the confirmation: a reload published after the line below is printed is seen.
            confirm_by = time.monotonic() + 5.0
            while (reply := read(timeout=0.5)) is None or reply.get("type") != subscribed:
                if time.monotonic() > confirm_by:
                    raise TimeoutError("no answer to SUBSCRIBE within 5 s")
        except Exception as exc:
            raise CommandError(f"cannot subscribe at {target.display_url()}: {one_line(exc)}") from None
        print(
            f"listening on {channel} at {target.display_url()} (Ctrl-C to stop)", file=sys.stderr, flush=True
        )
        while args.count is None or seen < args.count:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                message = read(timeout=wait)
                if message is not None and message.get("type") in ("unsubscribe", "sunsubscribe"):
                    raise ConnectionError("Redis dropped the subscription (the namespace's slot moved)")
            except Exception as exc:
                raise CommandError(
                    f"lost the connection to Redis at {target.display_url()}: {one_line(exc)}"
                ) from None
            if message is None or message.get("type") != message_type:
                continue
            try:
                reload = parse_message(message["data"])
            except BadMessage as exc:
                print(
                    f"ignored a message that distreload did not publish: {exc}", file=sys.stderr, flush=True
                )
                continue
            seen += 1
            print_reload(args, str(reload.version), reload.kind, reload.paths, channel)
    finally:
        with contextlib.suppress(Exception):
            pubsub.close()
        redis_client.close()
    return seen


def _listen_over_http(args: argparse.Namespace, deadline: float | None) -> int:
    import http.client
    from urllib.parse import urlsplit

    from ..sse import EventStreamParser

    url = app_base(args.url, args.prefix) + "/events"
    parts = urlsplit(url)
    # Until the hello says how often the worker sends heartbeats, allow for the default (15 s); after it,
    # three missed in a row mean a dead stream or a buffering proxy.
    silence_limit = 3 * 15.0 + 1.0
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.netloc, timeout=10.0)
    seen = 0
    try:
        try:
            connection.request(
                "GET",
                parts.path,
                headers={"accept": "text/event-stream", "user-agent": f"distreload/{__version__}"},
            )
            # Kept: http.client hands the socket over to a response that ends with the connection.
            stream_socket = connection.sock
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise CommandError(f"cannot reach the app at {url}: {reason(exc)}") from None
        if response.status != 200:
            raise CommandError(
                f"{url} answered {response.status}: is the app running distreload with "
                f"DISTRELOAD_ENABLED=1 under this --prefix?"
            )
        if "text/event-stream" not in (response.getheader("content-type") or ""):
            content_type = response.getheader("content-type")
            raise CommandError(f"{url} is not a distreload event stream ({content_type})")
        print(f"listening on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        parser = EventStreamParser()
        while args.count is None or seen < args.count:
            wait = silence_limit
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            if stream_socket is not None:
                stream_socket.settimeout(wait)
            try:
                raw = response.readline()
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline - 0.05:
                    break
                raise CommandError(
                    f"no heartbeat from {url} in {silence_limit:g} s (a proxy buffering "
                    f"the stream? nginx needs proxy_buffering off)"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise CommandError(f"lost the stream from {url}: {reason(exc)}") from None
            if not raw:
                raise CommandError(f"{url} closed the stream")
            event = parser.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if event is None:
                continue
            kind, data = event.event, event.data or "{}"
            if kind == "hello":
                hello = json.loads(data)
                heartbeat = hello.get("heartbeat")
                if isinstance(heartbeat, int | float) and heartbeat > 0:
                    silence_limit = 3 * float(heartbeat) + 1.0
                print(
                    printable(f"connected to worker {hello.get('worker')} at version {hello.get('version')}"),
                    file=sys.stderr,
                    flush=True,
                )
            elif kind == "reload":
                reload = json.loads(data)
                seen += 1
                print_reload(
                    args,
                    str(reload.get("version")),
                    str(reload.get("kind")),
                    [str(p) for p in reload.get("paths") or []],
                    url,
                )
            elif kind == "shutdown":
                raise CommandError(f"the worker behind {url} is shutting down")
    finally:
        connection.close()
    return seen

"""The ``distreload`` command: publish reloads from a shell, a CI job or a deploy hook, and look at the
cluster (``listen``, ``status``), watch files (``watch``) or try it all (``demo``).

Import-light on purpose: ``distreload publish`` imports redis-py (or only urllib for ``--url``) and never
Starlette, so a deploy hook or an editor's save hook pays a few tens of milliseconds, not a web framework.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .config import DEFAULT_PREFIX, ENV_NAMESPACE, ENV_REDIS_URL, ENV_TOKEN, ConfigError, Target

if TYPE_CHECKING:
    from .protocol import PublishResult, ReloadRequest

logger = logging.getLogger(__name__)

DESCRIPTION = """\
distreload: browser live-reload for ASGI apps running as many workers on many hosts.

Every worker of an app wrapped with distreload holds one subscription to a Redis channel; a reload
published there reaches the browsers held by every worker on every host that shares the Redis and the
namespace. This command publishes reloads, shows what the cluster is doing, and runs a demo.
"""

EPILOG = f"""\
examples:
  distreload demo                                      try it: a local cluster, no Redis needed
  distreload publish --redis-url redis://127.0.0.1:6379/0
  distreload publish --css /static/site.css            swap one stylesheet, keep the page
  distreload publish --url https://staging.example.com --token "$DISTRELOAD_TOKEN"
  distreload status                                    live hosts, workers and browsers
  distreload listen --count 1                          wait for the next reload and print it
  distreload watch templates static --static-dir static --static-url /static

environment:
  {ENV_REDIS_URL}   default for --redis-url
  {ENV_NAMESPACE}   default for --namespace (else 'default')
  {ENV_TOKEN}       default for --token (publish --url)

exit status:
  0 success, 1 the command failed (one line on stderr says why), 2 a usage error.

Run 'distreload COMMAND --help' for the options of one command.
"""


class CommandError(Exception):
    """A user mistake or an unreachable service: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (and exit status 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _parser() -> _Parser:
    parser = _Parser(
        prog="distreload",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"distreload {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what distreload does (debug level)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, summary: str, description: str, epilog: str) -> _Parser:
        sub: _Parser = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    publish = command(
        "publish",
        "reload every page of the cluster",
        "Publish one reload to every worker that shares the Redis and namespace (--redis-url), or ask a\n"
        "running app to publish it (--url, for CI runners that cannot reach Redis). Prints the new cluster\n"
        "version and how many worker processes received it. By default every page reloads; --morph,\n"
        "--css and --images update pages in place instead, keeping scroll position and form state.",
        "examples:\n"
        "  distreload publish --redis-url redis://127.0.0.1:6379/0 --namespace shop\n"
        "  distreload publish --morph                    apply the new HTML in place\n"
        "  distreload publish --css                      swap every stylesheet, keep the page\n"
        "  distreload publish --css /static/site.css     swap just this one\n"
        "  distreload publish --images /static/logo.png  re-fetch one image everywhere\n"
        "  distreload publish --spread 30 --match '/screens/lobby/*'   a fleet of screens, 30 s apart\n"
        '  distreload publish --url https://staging.example.com --token "$DISTRELOAD_TOKEN" --json\n\n'
        "--url needs the app to run with a token (DISTRELOAD_TOKEN or token=): it serves\n"
        "POST <prefix>/publish only then, and answers 401 to a missing or wrong token.",
    )
    _add_publish_target_options(publish)
    _add_reload_options(publish)
    publish.add_argument("--json", action="store_true", help="print the result as one JSON object")

    listen = command(
        "listen",
        "print reload events as they pass",
        "Subscribe to the reload channel (or to a running app's event stream with --url) and print every\n"
        "reload as it passes: a quick check that publisher, Redis, proxies and workers agree.",
        "examples:\n"
        "  distreload listen --redis-url redis://127.0.0.1:6379/0\n"
        "  distreload listen --count 1 --timeout 60       wait for the next reload, at most a minute\n"
        "  distreload listen --url http://127.0.0.1:8000   through the app (and any proxy in front of it)\n\n"
        "With --count N the status is 1 if fewer than N reloads passed before --timeout.",
    )
    _add_redis_options(listen)
    listen.add_argument(
        "--url",
        metavar="BASE",
        help="read the event stream of the app at BASE instead of "
        "Redis (what a browser sees, proxies included)",
    )
    listen.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"the app's reload prefix ({DEFAULT_PREFIX})"
    )
    _add_bounded_output_options(listen, "reload")

    status = command(
        "status",
        "show live hosts, workers and browsers",
        "Show every worker process that is alive right now: its host, pid, how many browser streams it\n"
        "holds, the cluster version it is at, its build and how long it has run. Workers write their\n"
        "presence to Redis every 5 s with a 15 s expiry, so a killed worker disappears by itself.",
        "examples:\n"
        "  distreload status --redis-url redis://127.0.0.1:6379/0 --namespace shop\n"
        "  distreload status --json | jq '.workers[].pid'\n\n"
        "A worker reports its VERSION again as soon as a reload reaches it.",
    )
    _add_redis_options(status)
    status.add_argument("--json", action="store_true", help="print the table as one JSON object")

    watch = command(
        "watch",
        "publish a reload whenever files change",
        "Watch files and directories and publish on every change (changes within --debounce are\n"
        "published once), with the lightest kind that is enough: stylesheets (.css) are swapped, images\n"
        "re-fetched, templates (under --templates) morphed into the pages in place; anything else reloads\n"
        "the pages. Changes of several kinds in one batch reload the pages. Template and asset edits then\n"
        "reach every host without restarting any worker.",
        "examples:\n"
        "  distreload watch templates\n"
        "  distreload watch templates static --static-dir static --static-url /static\n"
        "  distreload watch app/templates --templates app/templates\n\n"
        "With --static-dir, a changed static/css/site.css is announced as /static/css/site.css so pages\n"
        "re-fetch that stylesheet only (images likewise); without it pages re-fetch all of them.\n"
        "Needs watchfiles: pip install 'distreload[watch]'.",
    )
    watch.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to watch")
    _add_publish_target_options(watch)
    _add_fleet_options(watch)
    watch.add_argument(
        "--templates",
        metavar="DIR",
        default="templates",
        help="changes under DIR are morphed into the pages (default: templates)",
    )
    watch.add_argument("--static-dir", metavar="DIR", help="the directory served under --static-url")
    watch.add_argument(
        "--static-url",
        metavar="URL",
        default="/static",
        help="the URL path --static-dir is served under (default: /static)",
    )
    watch.add_argument(
        "--debounce",
        type=_positive_int,
        default=300,
        metavar="MS",
        help="changes closer together than this are published once (default: 300)",
    )
    _add_bounded_output_options(watch, "publish")

    demo = command(
        "demo",
        "serve a demo cluster on this machine",
        "Serve a demo app as several hosts (uvicorn processes) of several workers each on localhost, and\n"
        "print what to try next. With no --redis-url it runs an embedded Redis-protocol server (fakeredis)\n"
        "inside this command, so it works on a machine with no Redis installed. Ctrl-C stops everything.",
        "examples:\n"
        "  distreload demo\n"
        "  distreload demo --hosts 3 --workers 2 --port 9000\n"
        "  distreload demo --redis-url redis://127.0.0.1:6379/0\n\n"
        "Needs uvicorn and fakeredis: pip install 'distreload[demo]'.",
    )
    demo.add_argument(
        "--redis-url", metavar="URL", default=None, help="use this Redis instead of the embedded server"
    )
    demo.add_argument("--namespace", default="demo", metavar="NS", help="namespace (default: demo)")
    demo.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS", help="address (default: 127.0.0.1)")
    demo.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="first host's port; the next hosts use the ports after it (0: any free port)",
    )
    demo.add_argument("--hosts", type=_positive_int, default=2, metavar="N", help="app servers (default: 2)")
    demo.add_argument(
        "--workers", type=_positive_int, default=2, metavar="N", help="worker processes per host (default: 2)"
    )
    demo.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="stop after SECONDS")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


def _add_bounded_output_options(parser: argparse.ArgumentParser, event: str) -> None:
    """--count/--timeout (so scripts and tests can bound a long-running command) and --json."""
    parser.add_argument("--count", type=_positive_int, metavar="N", help=f"stop after N {event}s")
    parser.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="stop after SECONDS")
    parser.add_argument("--json", action="store_true", help=f"print one JSON object per {event}")


def _add_redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        default=None,
        help=f"redis://, rediss://, unix:// or redis+sentinel://h1:26379,h2:26379/<master>/<db> URL; "
        f"a redis:// URL may name any node of a Redis Cluster (default: ${ENV_REDIS_URL})",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        default=None,
        help=f"apps sharing one Redis under different namespaces never reload each other "
        f"(default: ${ENV_NAMESPACE} or 'default')",
    )


def _add_publish_target_options(parser: argparse.ArgumentParser) -> None:
    _add_redis_options(parser)
    parser.add_argument(
        "--url",
        metavar="BASE",
        help="publish through the app at BASE (POST <prefix>/publish) instead of Redis, "
        "e.g. https://staging.example.com",
    )
    parser.add_argument(
        "--token", metavar="TOKEN", default=None, help=f"bearer token for --url (default: ${ENV_TOKEN})"
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"the app's reload prefix ({DEFAULT_PREFIX})"
    )
    parser.add_argument(
        "--http-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the app to answer (default: 10)",
    )


def _add_reload_options(parser: argparse.ArgumentParser) -> None:
    """What the pages are to do: the kind (one of them) and the fleet options."""
    kinds = parser.add_mutually_exclusive_group()
    kinds.add_argument(
        "--morph",
        action="store_true",
        help="each page fetches itself again and applies the new HTML in place (scroll, "
        "focus, typed text and script state survive; a page that cannot be morphed "
        "reloads)",
    )
    kinds.add_argument(
        "--css",
        nargs="*",
        metavar="PATH",
        default=None,
        help="a stylesheet-only swap: the pages keep their state and re-fetch the given "
        "stylesheets (URL paths such as /static/site.css; none given: all of them)",
    )
    kinds.add_argument(
        "--images",
        nargs="*",
        metavar="PATH",
        default=None,
        help="re-fetch images in place (<img>, srcset, CSS backgrounds): the given URL paths, or all of them",
    )
    _add_fleet_options(parser)


def _add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """Which pages follow a reload, and how spread out in time."""
    parser.add_argument(
        "--spread",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="each page waits a random time up to SECONDS first, so a fleet of screens does "
        "not hit the app at once (default: 0)",
    )
    parser.add_argument(
        "--match",
        metavar="PATTERN",
        default=None,
        help="only pages whose path matches this glob follow the reload (* within a path "
        "segment, ** across segments, ? one character), e.g. '/screens/lobby/*'",
    )


def _reload_request(args: argparse.Namespace) -> ReloadRequest:
    from .protocol import reload_request

    if getattr(args, "morph", False):
        kind, paths, flag = "morph", (), "--morph"
    elif getattr(args, "css", None) is not None:
        kind, paths, flag = "css", tuple(args.css), "--css"
    elif getattr(args, "images", None) is not None:
        kind, paths, flag = "images", tuple(args.images), "--images"
    else:
        kind, paths, flag = "reload", (), ""
    _check_paths(paths, flag)
    try:
        return reload_request(kind, paths, args.spread, args.match)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


# --- Targets ---------------------------------------------------------------------------------------------


def _redis_target(args: argparse.Namespace) -> Target:
    from .config import resolve_target, validate_namespace, validate_redis_url

    if args.redis_url is not None:
        validate_redis_url(args.redis_url, "--redis-url")
    if args.namespace is not None:
        validate_namespace(args.namespace, "--namespace")
    url = args.redis_url
    if url is None:
        url = os.environ.get(ENV_REDIS_URL, "").strip() or None
    if url is None:
        raise CommandError(f"no Redis given: pass --redis-url or set {ENV_REDIS_URL}")
    target = resolve_target(url or "memory://", args.namespace)
    if target.is_memory:
        raise CommandError("memory:// lives inside one app process; give the Redis the app uses")
    return target


@dataclass(frozen=True)
class _Published:
    version: str
    receivers: int
    namespace: str | None = None  # publishing to Redis
    endpoint: str | None = None  # publishing through an app

    def describe(self, kind: str) -> str:
        plural = "" if self.receivers == 1 else "es"
        what = {"css": "stylesheet swap", "images": "image swap", "morph": "morph"}.get(kind, "reload")
        where = f"through {self.endpoint}" if self.endpoint else f"to namespace {self.namespace!r}"
        return f"published {what} {self.version} {where}: received by {self.receivers} worker process{plural}"


Publisher = Callable[["ReloadRequest"], _Published]


def _publisher(args: argparse.Namespace) -> Publisher:
    """How this command publishes: to Redis, or through a running app when --url is given."""
    if args.url is not None:
        if args.redis_url is not None:
            raise CommandError("pass either --url (publish through the app) or --redis-url, not both")
        endpoint = _publish_endpoint(args.url, args.prefix)
        token = args.token if args.token is not None else os.environ.get(ENV_TOKEN, "")
        if not token:
            raise CommandError(f"--url needs the app's token: pass --token or set {ENV_TOKEN}")
        return lambda request: _publish_over_http(endpoint, token, request, args.http_timeout)
    target = _redis_target(args)

    def publish(request: ReloadRequest) -> _Published:
        from .protocol import PublishError
        from .publisher import publish_blocking

        try:
            result: PublishResult = publish_blocking(target, request)
        except PublishError as exc:
            raise CommandError(str(exc)) from None
        return _Published(str(result.version), result.receivers, namespace=target.namespace)

    return publish


def _app_base(url: str, prefix: str) -> str:
    """The app's reload endpoint: BASE + prefix, unless BASE already ends with the prefix."""
    from urllib.parse import urlsplit

    from .config import validate_prefix

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise CommandError(f"--url: {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"--url: {url!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise CommandError(f"--url: {url!r} must not carry a query or fragment")
    try:
        clean_prefix = validate_prefix(prefix)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    base = url.rstrip("/")
    return base if parts.path.rstrip("/").endswith(clean_prefix) else base + clean_prefix


def _publish_endpoint(url: str, prefix: str) -> str:
    base = url.rstrip("/")
    if base.endswith("/publish"):
        base = base[: -len("/publish")]
    return _app_base(base, prefix) + "/publish"


def _publish_over_http(endpoint: str, token: str, request: ReloadRequest, timeout: float) -> _Published:
    import urllib.error
    import urllib.request

    body = request.to_json().encode()
    http_request = urllib.request.Request(
        endpoint,
        data=body,
        method="POST",
        headers={
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "user-agent": f"distreload/{__version__}",
        },
    )
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as response:
            answer = json.loads(response.read(64 * 1024) or b"{}")
    except urllib.error.HTTPError as exc:
        with exc:
            raise CommandError(_describe_http_error(endpoint, exc.code, exc.read(4096))) from None
    except urllib.error.URLError as exc:
        raise CommandError(f"cannot reach the app at {endpoint}: {_reason(exc.reason)}") from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"no usable answer from {endpoint}: {_reason(exc)}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("version"), str):
        raise CommandError(f"{endpoint} answered, but not like a distreload endpoint (no version)")
    receivers = answer.get("receivers")
    return _Published(answer["version"], receivers if isinstance(receivers, int) else 0, endpoint=endpoint)


def _describe_http_error(endpoint: str, status: int, body: bytes) -> str:
    try:
        detail = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        detail = ""
    if status == 401:
        return f"{endpoint} refused the token (401): it is missing or not the app's {ENV_TOKEN}"
    if status == 404:
        return (
            f"{endpoint} not found (404): the app serves it only when it runs distreload with a token "
            f"({ENV_TOKEN} or token=) and DISTRELOAD_ENABLED=1; check --prefix"
        )
    if status == 503 and detail:
        return f"the app could not publish (503): {detail}"
    return f"{endpoint} answered {status}" + (f": {detail}" if detail else "")


def _reason(reason: object) -> str:
    if isinstance(reason, BaseException):
        text = str(reason.args[-1] if isinstance(reason, OSError) and reason.args else reason)
        return text or reason.__class__.__name__
    return str(reason)


# --- publish ---------------------------------------------------------------------------------------------


def _publish(args: argparse.Namespace) -> int:
    request = _reload_request(args)
    published = _publisher(args)(request)
    if args.json:
        where = {"endpoint": published.endpoint} if published.endpoint else {"namespace": published.namespace}
        print(
            json.dumps(
                {
                    "version": published.version,
                    "receivers": published.receivers,
                    "kind": request.kind,
                    "paths": list(request.paths),
                    "spread": request.spread,
                    "match": request.match,
                    **where,
                }
            )
        )
    else:
        print(published.describe(request.kind))
    return 0


def _check_paths(paths: Iterable[str], flag: str) -> None:
    from .protocol import is_same_origin_path

    for path in paths:
        if not is_same_origin_path(path):
            raise CommandError(
                f"{flag}: {path!r} is not a URL path of the app (it must start with one '/', "
                f"e.g. /static/site.css)"
            )


# --- listen ----------------------------------------------------------------------------------------------


def _listen(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    if args.url is not None:
        if args.redis_url is not None:
            raise CommandError("pass either --url (read the app's stream) or --redis-url, not both")
        seen = _listen_over_http(args, deadline)
    else:
        seen = _listen_to_redis(args, deadline)
    if args.count is not None and seen < args.count:
        raise CommandError(f"timed out after {args.timeout:g} s with {seen} of {args.count} reloads")
    return 0


def _print_reload(
    args: argparse.Namespace, version: str, kind: str, paths: Sequence[str], source: str
) -> None:
    if args.json:
        record = {"version": version, "kind": kind, "paths": list(paths), "source": source}
        print(json.dumps(record), flush=True)
    else:
        stamp = time.strftime("%H:%M:%S")
        detail = f" {' '.join(paths)}" if paths else ""
        print(f"{stamp} {kind} {version}{detail}  ({source})", flush=True)


def _listen_to_redis(args: argparse.Namespace, deadline: float | None) -> int:
    from .protocol import BadMessage, channel_name, parse_message
    from .redis_clients import open_sync

    target = _redis_target(args)
    channel = channel_name(target.namespace)
    try:
        redis_client = open_sync(target)
    except Exception as exc:
        raise CommandError(f"cannot reach Redis at {target.display_url()}: {_one_line(exc)}") from None
    # On a Redis Cluster (7+) the workers' channel is a shard channel, on the node that owns its slot.
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
            raise CommandError(f"cannot subscribe at {target.display_url()}: {_one_line(exc)}") from None
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
                    f"lost the connection to Redis at {target.display_url()}: {_one_line(exc)}"
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
            _print_reload(args, str(reload.version), reload.kind, reload.paths, channel)
    finally:
        with contextlib.suppress(Exception):
            pubsub.close()
        redis_client.close()
    return seen


def _listen_over_http(args: argparse.Namespace, deadline: float | None) -> int:
    import http.client
    from urllib.parse import urlsplit

    url = _app_base(args.url, args.prefix) + "/events"
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
            raise CommandError(f"cannot reach the app at {url}: {_reason(exc)}") from None
        if response.status != 200:
            raise CommandError(
                f"{url} answered {response.status}: is the app running distreload with "
                f"DISTRELOAD_ENABLED=1 under this --prefix?"
            )
        if "text/event-stream" not in (response.getheader("content-type") or ""):
            content_type = response.getheader("content-type")
            raise CommandError(f"{url} is not a distreload event stream ({content_type})")
        print(f"listening on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        event: dict[str, str] = {}
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
                raise CommandError(f"lost the stream from {url}: {_reason(exc)}") from None
            if not raw:
                raise CommandError(f"{url} closed the stream")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:
                field, _, value = line.partition(":")
                if field:
                    event[field] = event.get(field, "") + value.removeprefix(" ")
                continue
            kind, data = event.get("event"), event.get("data") or "{}"
            event = {}
            if kind == "hello":
                hello = json.loads(data)
                heartbeat = hello.get("heartbeat")
                if isinstance(heartbeat, int | float) and heartbeat > 0:
                    silence_limit = 3 * float(heartbeat) + 1.0
                print(
                    f"connected to worker {hello.get('worker')} at version {hello.get('version')}",
                    file=sys.stderr,
                    flush=True,
                )
            elif kind == "reload":
                reload = json.loads(data)
                seen += 1
                _print_reload(
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


# --- status ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPresence:
    host: str
    pid: int
    streams: int
    version: str
    build: str
    started: float


def read_presence(target: Target) -> tuple[str | None, list[WorkerPresence]]:
    """The cluster version and every live worker's presence record in ``target``'s namespace."""
    from .protocol import presence_prefix, state_key
    from .redis_clients import CLUSTER, open_sync

    try:
        redis_client = open_sync(target)
    except Exception as exc:
        raise CommandError(f"cannot reach Redis at {target.display_url()}: {_one_line(exc)}") from None
    client = redis_client.client
    try:
        # Every key of a namespace shares one hash slot: on a cluster, only the node that owns it holds them.
        where = {}
        if redis_client.kind == CLUSTER:
            where["target_nodes"] = client.get_node_from_key(state_key(target.namespace))
        keys = sorted(client.scan_iter(match=f"{presence_prefix(target.namespace)}*", count=500, **where))
        values = client.mget(keys) if keys else []
        epoch, number = client.hmget(state_key(target.namespace), ["epoch", "version"])
    except Exception as exc:
        raise CommandError(
            f"cannot read the cluster from Redis at {target.display_url()}: {_one_line(exc)}"
        ) from None
    finally:
        redis_client.close()
    version = None
    if isinstance(epoch, bytes) and number is not None:
        version = f"{epoch.decode()}-{int(number)}"
    workers = []
    for value in values:
        if value is None:
            continue  # expired between SCAN and MGET
        try:
            record = json.loads(value)
            workers.append(
                WorkerPresence(
                    host=str(record["host"]),
                    pid=int(record["pid"]),
                    streams=int(record.get("streams", 0)),
                    version=str(record.get("version", "")),
                    build=str(record.get("build", "")),
                    started=float(record.get("started", 0.0)),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    workers.sort(key=lambda w: (w.host, w.pid))
    return version, workers


def _status(args: argparse.Namespace) -> int:
    target = _redis_target(args)
    version, workers = read_presence(target)
    now = time.time()
    hosts = sorted({w.host for w in workers})
    streams = sum(w.streams for w in workers)
    if args.json:
        print(
            json.dumps(
                {
                    "namespace": target.namespace,
                    "version": version,
                    "hosts": hosts,
                    "streams": streams,
                    "workers": [
                        {
                            "host": w.host,
                            "pid": w.pid,
                            "streams": w.streams,
                            "version": w.version,
                            "build": w.build,
                            "started": w.started,
                            "age": round(max(0.0, now - w.started), 1),
                        }
                        for w in workers
                    ],
                }
            )
        )
        return 0
    if not workers:
        print(
            f"no live workers in namespace {target.namespace!r} at {target.display_url()} "
            f"(cluster version {version or 'none yet'})"
        )
        return 0
    rows = [("HOST", "PID", "BROWSERS", "VERSION", "BUILD", "AGE")]
    for w in workers:
        rows.append((w.host, str(w.pid), str(w.streams), w.version, w.build or "-", _age(now - w.started)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(
        f"\n{len(hosts)} host{'s' * (len(hosts) != 1)}, {len(workers)} worker{'s' * (len(workers) != 1)}, "
        f"{streams} browser stream{'s' * (streams != 1)}; cluster version {version or 'none yet'} "
        f"(namespace {target.namespace!r})"
    )
    return 0


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


# --- watch -----------------------------------------------------------------------------------------------


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif", ".ico", ".bmp"})


def classify_changes(
    changed: Iterable[str], *, templates: str | None, static_dir: str | None, static_url: str
) -> tuple[str, tuple[str, ...]]:
    """The lightest reload that covers a batch of changed files, and the URL paths it names.

    Stylesheets: a css swap; images: an image swap (with their URL paths when they lie under
    ``static_dir``, else all of them); files under ``templates``: a morph; anything else, or changes that
    call for different kinds, a full reload.
    """
    from pathlib import Path

    files = [Path(p).resolve() for p in changed]
    templates_root = Path(templates).resolve() if templates else None
    kinds = set()
    for file in files:
        if file.suffix.lower() == ".css":
            kinds.add("css")
        elif file.suffix.lower() in IMAGE_SUFFIXES:
            kinds.add("images")
        elif templates_root is not None and file.is_relative_to(templates_root):
            kinds.add("morph")
        else:
            kinds.add("reload")
    if len(kinds) != 1 or kinds == {"reload"}:
        return "reload", ()
    kind = kinds.pop()
    if kind == "morph" or static_dir is None:
        return kind, ()
    root = Path(static_dir).resolve()
    prefix = "/" + static_url.strip("/")
    paths: set[str] = set()
    for file in files:
        if not file.is_relative_to(root):
            return kind, ()  # a file outside the mapping: let the pages re-fetch them all
        paths.add(("" if prefix == "/" else prefix) + "/" + file.relative_to(root).as_posix())
    return kind, tuple(sorted(paths))


def _watch(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        import threading

        from watchfiles import watch
    except ImportError:
        raise CommandError("watch needs watchfiles: pip install 'distreload[watch]'") from None
    for path in args.paths:
        if not Path(path).exists():
            raise CommandError(f"no such file or directory: {path}")
    if args.static_dir is not None and not Path(args.static_dir).is_dir():
        raise CommandError(f"--static-dir: {args.static_dir!r} is not a directory")
    template_dir = args.templates if Path(args.templates).is_dir() else None
    publish = _publisher(args)
    options = _reload_request(args)  # --spread and --match apply to every publish
    stop = threading.Event()
    timer = threading.Timer(args.timeout, stop.set) if args.timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    published = 0
    watching = False
    try:
        # yield_on_timeout: the first (empty) batch comes once the watcher is in place, which is when
        # "watching" is true; a change made after that line is seen.
        for changes in watch(
            *args.paths,
            debounce=args.debounce,
            step=50,
            stop_event=stop,
            raise_interrupt=False,
            yield_on_timeout=True,
            rust_timeout=200,
        ):
            if not watching:
                watching = True
                print(f"watching {', '.join(args.paths)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            if not changes:
                continue
            kind, paths = classify_changes(
                (path for _, path in changes),
                templates=template_dir,
                static_dir=args.static_dir,
                static_url=args.static_url,
            )
            from .protocol import reload_request

            request = reload_request(kind, paths, options.spread, options.match)
            try:
                result = publish(request)
            except CommandError as exc:
                # One failed publish (Redis restarting, app redeploying) must not end the watch.
                print(f"distreload watch: {exc}", file=sys.stderr, flush=True)
                continue
            published += 1
            if args.json:
                record = {
                    "version": result.version,
                    "receivers": result.receivers,
                    "kind": kind,
                    "paths": list(paths),
                    "changed": sorted({p for _, p in changes}),
                }
                print(json.dumps(record), flush=True)
            else:
                names = ", ".join(sorted({os.path.relpath(p) for _, p in changes})[:5])
                print(f"{time.strftime('%H:%M:%S')} {names} changed; {result.describe(kind)}", flush=True)
            if args.count is not None and published >= args.count:
                break
    finally:
        if timer is not None:
            timer.cancel()
    return 0


# --- demo ------------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, run_demo

    try:
        return run_demo(
            redis_url=args.redis_url,
            namespace=args.namespace,
            bind=args.bind,
            port=args.port,
            hosts=args.hosts,
            workers=args.workers,
            timeout=args.timeout,
        )
    except DemoError as exc:
        raise CommandError(str(exc)) from None


# --- entry point -----------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


_RUN_UNTIL_STOPPED = ("listen", "watch", "demo")
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "publish": _publish,
    "listen": _listen,
    "status": _status,
    "watch": _watch,
    "demo": _demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (callable from tests)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return _COMMANDS[args.command](args)
    except (CommandError, ConfigError) as exc:
        print(f"distreload {args.command}: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C is how listen, watch and demo are meant to end; it interrupts a publish.
        return 0 if args.command in _RUN_UNTIL_STOPPED else 130
    except BrokenPipeError:
        # `distreload listen | head -1`: the reader went away, which is no error of ours.
        sys.stderr.close()
        return 0
    except Exception as exc:  # anything unforeseen is still one line, never a traceback
        logger.debug("distreload %s failed", args.command, exc_info=True)
        print(f"distreload {args.command}: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 1

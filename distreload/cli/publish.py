"""``distreload publish``: one reload to every worker, through Redis or through a running app (``--url``).

Also the publishing half of ``watch``, which publishes the same way on every change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from .. import __version__
from ..config import DEFAULT_PREFIX, ENV_TOKEN, ConfigError
from .common import (
    CommandError,
    Parser,
    UsageError,
    add_command,
    add_redis_options,
    non_negative_float,
    positive_float,
    printable,
    reason,
    redis_target,
)

if TYPE_CHECKING:
    from ..delivery import WaitSummary
    from ..protocol import PublishResult, ReloadRequest

NAME = "publish"

EXAMPLES = """\
examples:
  distreload publish --redis-url redis://127.0.0.1:6379/0 --namespace shop
  distreload publish --morph                    apply the new HTML in place
  distreload publish --css                      swap every stylesheet, keep the page
  distreload publish --css /static/site.css     swap just this one
  distreload publish --images /static/logo.png  re-fetch one image everywhere
  distreload publish --spread 30 --match '/screens/lobby/*'   a fleet of screens, 30 s apart
  DISTRELOAD_TOKEN=... distreload publish --url https://staging.example.com --json
  distreload publish --url https://staging.example.com --token-file ~/.config/staging-token
  distreload publish --wait 30                  then wait until every open page applied it (CI)
  vault read -field=token secret/staging | distreload publish --url https://staging.example.com --token-file -

--url needs the app to run with a token (DISTRELOAD_TOKEN or token=): it serves
POST <prefix>/publish only then, and answers 401 to a missing or wrong token. Give the
token through DISTRELOAD_TOKEN or --token-file: --token puts it in the command line, which
every user of the machine can read (ps). Redirects are never followed, so the token only
goes to the origin --url names.

exit status with --wait: 0 every page open at publish time applied the reload; 3 a page
failed (the overlay: its server answered an error, or did not answer); 4 a page did not
answer within SECONDS; 1 and 2 as for any error. Paused pages, pages the --match leaves
out and pages closed meanwhile are listed but do not count."""


def add_parser(commands: argparse._SubParsersAction[Parser]) -> Parser:
    parser = add_command(
        commands,
        NAME,
        "reload every page of the cluster",
        "Publish one reload to every worker that shares the Redis and namespace (--redis-url), or ask a\n"
        "running app to publish it (--url, for CI runners that cannot reach Redis). Prints the new cluster\n"
        "version and how many worker processes received it. By default every page reloads; --morph,\n"
        "--css and --images update pages in place instead, keeping scroll position and form state.",
        EXAMPLES,
    )
    add_publish_target_options(parser)
    add_reload_options(parser)
    parser.add_argument(
        "--wait",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="then wait up to SECONDS (after the --spread window) until every page open now has applied "
        "the reload or failed, and say which; exit status 0 only when all applied, "
        f"{EXIT_PAGES_FAILED} when a page failed, {EXIT_PAGES_TIMED_OUT} when one did not answer in time",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(run=run)
    return parser


# Exit statuses of --wait, besides 0 (every page applied), 1 (an error) and 2 (a usage error).
EXIT_PAGES_FAILED = 3
EXIT_PAGES_TIMED_OUT = 4


def run(args: argparse.Namespace) -> int:
    request = reload_request_of(args)
    if args.wait is not None:
        return run_waiting(args, request)
    published = publisher(args)(request)
    if args.json:
        print(json.dumps(result_of(published, request)))
    else:
        print(published.describe(request.kind))
    return 0


def result_of(published: Published, request: ReloadRequest) -> dict[str, Any]:
    """What ``--json`` prints of a publish: one shape, with or without ``--wait``."""
    where = {"endpoint": published.endpoint} if published.endpoint else {"namespace": published.namespace}
    return {
        "version": published.version,
        "receivers": published.receivers,
        "kind": request.kind,
        "paths": list(request.paths),
        "spread": request.spread,
        "match": request.match,
        **where,
    }


def run_waiting(args: argparse.Namespace, request: ReloadRequest) -> int:
    """Publish, wait for the pages, print the summary; the exit status says how it went."""
    from ..delivery import WaitSummary

    seconds = args.wait + request.spread
    if args.url is not None:
        if args.redis_url is not None:
            raise UsageError("pass either --url (publish through the app) or --redis-url, not both")
        endpoint = publish_endpoint(args.url, args.prefix)
        published = publish_over_http(
            endpoint, read_token(args), request, args.http_timeout + seconds, wait=args.wait
        )
        if not isinstance(published.pages, dict):
            raise CommandError(
                f"{endpoint} published {published.version} but did not wait (a distreload before --wait?)"
            )
        summary = WaitSummary.from_dict(published.pages)
    else:
        published, summary = publish_and_wait_blocking(args, request, seconds)
    if args.json:
        print(json.dumps({**result_of(published, request), "pages": summary.to_dict()}))
    else:
        print(published.describe(request.kind))
        for line in summary.describe():
            print(printable(line))
        if summary.outcome == "timed out":
            spread = f" (after the {request.spread:g} s spread)" if request.spread else ""
            print(f"timed out after {args.wait:g} s{spread}")
    return {"applied": 0, "failed": EXIT_PAGES_FAILED}.get(summary.outcome, EXIT_PAGES_TIMED_OUT)


def publish_and_wait_blocking(
    args: argparse.Namespace, request: ReloadRequest, seconds: float
) -> tuple[Published, WaitSummary]:
    from ..delivery import PagesUnavailable, live_workers, wait_for_pages
    from ..protocol import PublishError
    from ..publisher import publish_blocking

    target = redis_target(args)
    progress = ProgressLine(sys.stderr)
    try:
        workers = live_workers(target)
        result = publish_blocking(target, request)
        summary = wait_for_pages(
            target, str(result.version), seconds=seconds, workers=workers, on_progress=progress
        )
    except (PublishError, PagesUnavailable) as exc:
        raise CommandError(str(exc)) from None
    finally:
        progress.end()
    return Published(str(result.version), result.receivers, namespace=target.namespace), summary


class ProgressLine:
    """One line on a terminal, rewritten as pages apply; nothing when stderr is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False
        self.on_terminal = stream.isatty()

    def __call__(self, summary: WaitSummary) -> None:
        if self.on_terminal:
            self.stream.write("\r\x1b[2Kwaiting: " + summary.progress())
            self.stream.flush()
            self.shown = True

    def end(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


# --- Options ---------------------------------------------------------------------------------------------


def add_publish_target_options(parser: argparse.ArgumentParser) -> None:
    add_redis_options(parser)
    parser.add_argument(
        "--url",
        metavar="BASE",
        help="publish through the app at BASE (POST <prefix>/publish) instead of Redis, "
        "e.g. https://staging.example.com",
    )
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-file",
        metavar="PATH",
        default=None,
        help=f"read the bearer token for --url from PATH ('-': standard input) (default: ${ENV_TOKEN})",
    )
    tokens.add_argument(
        "--token",
        metavar="TOKEN",
        default=None,
        help=f"the bearer token itself; discouraged: any user can read it in the process list, "
        f"use ${ENV_TOKEN} or --token-file",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"the app's reload prefix ({DEFAULT_PREFIX})"
    )
    parser.add_argument(
        "--http-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the app to answer (default: 10)",
    )


def add_reload_options(parser: argparse.ArgumentParser) -> None:
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
    add_fleet_options(parser)


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """Which pages follow a reload, and how spread out in time."""
    parser.add_argument(
        "--spread",
        type=non_negative_float,
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
        "segment, ** across segments, ? one character; at most 16 wildcards, never three * in a row), "
        "e.g. '/screens/lobby/*'; letters past ASCII and spaces as typed or percent-encoded, alike",
    )


def reload_request_of(args: argparse.Namespace) -> ReloadRequest:
    """The reload the arguments ask for; anything the protocol refuses is a usage error."""
    from ..protocol import reload_request

    if getattr(args, "morph", False):
        kind, paths, flag = "morph", (), "--morph"
    elif getattr(args, "css", None) is not None:
        kind, paths, flag = "css", tuple(args.css), "--css"
    elif getattr(args, "images", None) is not None:
        kind, paths, flag = "images", tuple(args.images), "--images"
    else:
        kind, paths, flag = "reload", (), ""
    check_paths(paths, flag)
    try:
        return reload_request(kind, paths, args.spread, args.match)
    except ValueError as exc:
        raise UsageError(_option_named(str(exc))) from None


def _option_named(message: str) -> str:
    """The protocol's message about ``spread``/``match``, naming the option the user typed."""
    for field in ("spread", "match"):
        if message.startswith(field + " "):
            return f"--{message}"
    return message


def check_paths(paths: Iterable[str], flag: str) -> None:
    from ..protocol import is_same_origin_path

    for path in paths:
        if not is_same_origin_path(path):
            raise UsageError(
                f"{flag}: {path!r} is not a URL path of the app (it must start with one '/', "
                f"e.g. /static/site.css)"
            )


# --- Publishing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    version: str
    receivers: int
    namespace: str | None = None  # publishing to Redis
    endpoint: str | None = None  # publishing through an app
    pages: dict[str, Any] | None = None  # what became of the pages (the app's answer to a wait)

    def describe(self, kind: str) -> str:
        plural = "" if self.receivers == 1 else "es"
        what = {"css": "stylesheet swap", "images": "image swap", "morph": "morph"}.get(kind, "reload")
        where = f"through {self.endpoint}" if self.endpoint else f"to namespace {self.namespace!r}"
        return f"published {what} {self.version} {where}: received by {self.receivers} worker process{plural}"


Publisher = Callable[["ReloadRequest"], Published]


def publisher(args: argparse.Namespace) -> Publisher:
    """How this command publishes: to Redis, or through a running app when --url is given."""
    if args.url is not None:
        if args.redis_url is not None:
            raise UsageError("pass either --url (publish through the app) or --redis-url, not both")
        endpoint = publish_endpoint(args.url, args.prefix)
        token = read_token(args)
        return lambda request: publish_over_http(endpoint, token, request, args.http_timeout)
    target = redis_target(args)

    def publish(request: ReloadRequest) -> Published:
        from ..protocol import PublishError
        from ..publisher import publish_blocking

        try:
            result: PublishResult = publish_blocking(target, request)
        except PublishError as exc:
            raise CommandError(str(exc)) from None
        return Published(str(result.version), result.receivers, namespace=target.namespace)

    return publish


def read_token(args: argparse.Namespace) -> str:
    """The token for --url: --token-file (or stdin), --token, else the environment."""
    if args.token_file is not None:
        source = "standard input" if args.token_file == "-" else args.token_file
        try:
            if args.token_file == "-":
                text = sys.stdin.readline()
            else:
                with open(args.token_file, encoding="utf-8") as file:
                    text = file.readline()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--token-file: cannot read {source!r}: {reason(exc)}") from None
        # One line, as `echo`, a secrets manager or a mounted secret gives it: the newline is no part of it.
        token = text.strip()
        if not token:
            raise UsageError(f"--token-file: {source} holds no token")
        return token
    token = args.token if args.token is not None else os.environ.get(ENV_TOKEN, "").strip()
    if not token:
        raise UsageError(f"--url needs the app's token: set {ENV_TOKEN} or pass --token-file")
    return token


def app_base(url: str, prefix: str) -> str:
    """The app's reload endpoint: BASE + prefix, unless BASE already ends with the prefix."""
    from urllib.parse import urlsplit

    from ..config import validate_prefix

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise UsageError(f"--url: {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url: {url!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise UsageError(f"--url: {url!r} must not carry a query or fragment")
    try:
        clean_prefix = validate_prefix(prefix)
    except ConfigError as exc:
        raise UsageError(f"--{exc}") from None
    base = url.rstrip("/")
    return base if parts.path.rstrip("/").endswith(clean_prefix) else base + clean_prefix


def publish_endpoint(url: str, prefix: str) -> str:
    base = url.rstrip("/")
    if base.endswith("/publish"):
        base = base[: -len("/publish")]
    return app_base(base, prefix) + "/publish"


_REDIRECTS = (301, 302, 303, 307, 308)


def publish_over_http(
    endpoint: str, token: str, request: ReloadRequest, timeout: float, *, wait: float | None = None
) -> Published:
    import urllib.error
    import urllib.request

    class RefuseRedirects(urllib.request.HTTPRedirectHandler):
        # urllib would follow 301/302/303/307/308 with the Authorization header, to any host and from
        # https to http: the token would go to wherever the app (or a proxy in front of it) points. None is
        # followed; the answer itself is reported as an error below.
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    body = request.to_json().encode()
    if wait is not None:
        body = json.dumps({**json.loads(body), "wait": wait}).encode()
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
    opener = urllib.request.build_opener(RefuseRedirects)
    try:
        with opener.open(http_request, timeout=timeout) as response:
            answer = json.loads(response.read(64 * 1024) or b"{}")
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code in _REDIRECTS:
                location = exc.headers.get("location") or "nowhere"
                raise CommandError(
                    f"{endpoint} redirected ({exc.code}) to {location}: not followed, the token is sent "
                    f"only to the --url given (pass the app's own address)"
                ) from None
            raise CommandError(describe_http_error(endpoint, exc.code, exc.read(4096))) from None
    except urllib.error.URLError as exc:
        raise CommandError(f"cannot reach the app at {endpoint}: {reason(exc.reason)}") from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"no usable answer from {endpoint}: {reason(exc)}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("version"), str):
        raise CommandError(f"{endpoint} answered, but not like a distreload endpoint (no version)")
    receivers = answer.get("receivers")
    pages = answer.get("pages")
    return Published(
        answer["version"],
        receivers if isinstance(receivers, int) else 0,
        endpoint=endpoint,
        pages=pages if isinstance(pages, dict) else None,
    )


def describe_http_error(endpoint: str, status: int, body: bytes) -> str:
    try:
        detail = json.loads(body).get("error", "")
    except (ValueError, AttributeError, RecursionError):
        detail = ""
    detail = detail if isinstance(detail, str) else ""
    if status == 401:
        return f"{endpoint} refused the token (401): it is missing or not the app's {ENV_TOKEN}"
    if status == 404:
        return (
            f"{endpoint} not found (404): the app serves it only when it runs with a token: set "
            f"{ENV_TOKEN} (or token=) where the app runs; check --prefix"
        )
    if status == 503 and detail:
        return f"the app could not publish (503): {detail}"
    return f"{endpoint} answered {status}" + (f": {detail}" if detail else "")

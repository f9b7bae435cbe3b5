"""The ``distreload`` command: publish reloads from a shell, a CI job or a deploy hook."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .config import ENV_NAMESPACE, ENV_REDIS_URL, ConfigError

logger = logging.getLogger(__name__)

DESCRIPTION = """\
distreload: browser live-reload for ASGI apps running as many workers on many hosts.

Every worker of an app wrapped with distreload holds one subscription to a Redis channel; a reload
published there reaches the browsers held by every worker on every host that shares the Redis.
"""


class _CommandError(Exception):
    """A user mistake or an unreachable service: printed as one line, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distreload", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"distreload {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    publish = commands.add_parser(
        "publish", help="reload every page of the cluster",
        description="Publish one reload to every worker that shares the Redis and namespace. Prints the "
                    "new cluster version and how many worker processes received it.")
    _add_target_options(publish)
    publish.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=os.environ.get(ENV_REDIS_URL) or None, metavar="URL",
                        help=f"redis://, rediss:// or unix:// URL (default: ${ENV_REDIS_URL})")
    parser.add_argument("--namespace", default=os.environ.get(ENV_NAMESPACE) or None, metavar="NS",
                        help=f"apps sharing one Redis under different namespaces never reload each other "
                             f"(default: ${ENV_NAMESPACE} or 'default')")


def _publish(args: argparse.Namespace) -> int:
    from .broker import PublishError, publish_to_redis
    from .config import resolve_target

    if not args.redis_url:
        raise _CommandError(f"no Redis to publish to: pass --redis-url or set {ENV_REDIS_URL}")
    target = resolve_target(args.redis_url, args.namespace)
    try:
        result = publish_to_redis(target)
    except PublishError as exc:
        raise _CommandError(str(exc)) from None
    if args.json:
        print(json.dumps({"version": str(result.version), "receivers": result.receivers,
                          "namespace": target.namespace}))
    else:
        plural = "" if result.receivers == 1 else "es"
        print(f"published reload {result.version} to namespace {target.namespace!r}: "
              f"received by {result.receivers} worker process{plural}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (callable from tests)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.command == "publish":
            return _publish(args)
    except (_CommandError, ConfigError) as exc:
        print(f"distreload {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2

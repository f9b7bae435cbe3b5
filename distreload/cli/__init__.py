"""The ``distreload`` command: publish reloads from a shell, a CI job or a deploy hook, and look at the
cluster (``listen``, ``status``), watch files (``watch``) or try it all (``demo``).

One module per command, each building its own arguments (``add_parser``) and running them (``run``);
``common`` holds what they share. Import-light on purpose: ``distreload publish`` imports redis-py (or only
urllib for ``--url``) and never Starlette, so a deploy hook or an editor's save hook pays a few tens of
milliseconds, not a web framework.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..config import ENV_NAMESPACE, ENV_REDIS_URL, ENV_TOKEN, ConfigError
from . import demo, listen, publish, status, watch
from .common import CommandError, Parser, UsageError, one_line

__all__ = ["CommandError", "UsageError", "main"]

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
  distreload publish --url https://staging.example.com  token from ${ENV_TOKEN} (or --token-file)
  distreload status                                    live hosts, workers and browsers
  distreload listen --count 1                          wait for the next reload and print it
  distreload watch templates static --static-dir static --static-url /static

environment:
  {ENV_REDIS_URL}   default for --redis-url
  {ENV_NAMESPACE}   default for --namespace (else 'default')
  {ENV_TOKEN}       the token for publish --url (or --token-file PATH, '-' for stdin)

exit status:
  0 success; 1 the command failed (Redis or the app unreachable or refusing, a timeout); 2 a usage
  error: anything wrong in the arguments themselves or the variables standing in for them (the
  command's usage and one line saying what). Errors are one line on stderr.

Run 'distreload COMMAND --help' for the options of one command.
"""

_COMMANDS = (publish, listen, status, watch, demo)
_RUN_UNTIL_STOPPED = ("listen", "watch", "demo")


def build_parser() -> tuple[Parser, dict[str, Parser]]:
    """The top-level parser, and each command's own (for its usage in errors)."""
    parser = Parser(
        prog="distreload",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"distreload {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what distreload does (debug level)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    return parser, {module.NAME: module.add_parser(commands) for module in _COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (callable from tests)."""
    parser, subparsers = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            # The command's own parser, not the top-level one: its usage and its options to suggest from.
            subparsers[args.command].unrecognized(unknown)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    command = subparsers[args.command]
    try:
        status: int = args.run(args)
        return status
    except UsageError as exc:
        print(f"{command.format_usage()}{command.prog}: {exc} (see '{command.prog} --help')", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"{command.format_usage()}{command.prog}: {exc} (see '{command.prog} --help')", file=sys.stderr)
        return 2
    except CommandError as exc:
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
        print(f"distreload {args.command}: {one_line(exc)}", file=sys.stderr, flush=True)
        return 1

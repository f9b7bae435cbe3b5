"""What every command shares: its errors, its argparse parser class, value types and the Redis options.

Import-light on purpose, like every module of this package: nothing here imports redis-py or Starlette.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import NoReturn

from ..config import ENV_NAMESPACE, ENV_REDIS_URL, ConfigError, Target


class CommandError(Exception):
    """A failure outside the arguments (an unreachable service, a refusal): one line, exit status 1."""


class UsageError(CommandError):
    """Something wrong in the arguments themselves (or the environment variables standing in for them):
    the command's usage and one line, exit status 2, as for the mistakes argparse itself finds."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors show this command's usage, one line of error, and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.format_usage()}{self.prog}: {message} (see '{self.prog} --help')\n")

    def unrecognized(self, arguments: list[str]) -> NoReturn:
        """Refuse arguments this command does not take, suggesting the option the user probably meant."""
        first = arguments[0]
        known = [option for action in self._actions for option in action.option_strings]
        name = first.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) if name.startswith("-") else []
        hint = f"; did you mean {close[0]}?" if close else ""
        # The first one only: what follows a mistyped flag is most likely its value.
        self.error(f"unrecognized argument: {first}{hint}")


def add_command(
    commands: argparse._SubParsersAction[Parser], name: str, summary: str, description: str, epilog: str
) -> Parser:
    parser: Parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


# --- Value types (argparse turns their ArgumentTypeError into a usage error) -----------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


# --- Redis options ---------------------------------------------------------------------------------------


def add_redis_options(parser: argparse.ArgumentParser) -> None:
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


def redis_target(args: argparse.Namespace) -> Target:
    """The Redis and namespace the arguments (else the environment) name; a bad one is a usage error."""
    from ..config import mask_password, resolve_target, validate_namespace, validate_redis_url

    url, setting = args.redis_url, "--redis-url"
    if url is None:
        url, setting = os.environ.get(ENV_REDIS_URL, "").strip() or None, ENV_REDIS_URL
    if url is None:
        raise UsageError(f"no Redis given: pass --redis-url or set {ENV_REDIS_URL}")
    try:
        validate_redis_url(url, setting)
        if args.namespace is not None:
            validate_namespace(args.namespace, "--namespace")
        target = resolve_target(url, args.namespace)
    except ConfigError as exc:
        raise UsageError(one_line_text(exc)) from None
    except ValueError as exc:  # whatever else a URL parser finds it cannot read: in the user's terms
        raise UsageError(
            f"{setting}: {mask_password(url)!r} is not a Redis URL distreload can read ({one_line_text(exc)})"
        ) from None
    if target.is_memory:
        raise UsageError("memory:// lives inside one app process; give the Redis the app uses")
    return target


# --- Output ----------------------------------------------------------------------------------------------


def one_line_text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0]}" if lines else exc.__class__.__name__


def reason(cause: object) -> str:
    if isinstance(cause, BaseException):
        text = str(cause.args[-1] if isinstance(cause, OSError) and cause.args else cause)
        return text or cause.__class__.__name__
    return str(cause)


def printable(text: object) -> str:
    """Text from Redis or the network, safe to print on a terminal: control characters (escape codes,
    carriage returns, bidi overrides) are shown escaped instead of acting on the terminal."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in value)


def with_tls_hint(target: Target, message: str) -> str:
    """A connection to a rediss:// URL that timed out most likely met a Redis without TLS, which reads the
    TLS handshake as the start of a command and never answers: say so, and that nothing was sent."""
    if target.redis_url.startswith(("rediss://", "rediss+sentinel://")) and "Timeout" in message:
        return f"{message} (no TLS handshake completed, nothing was sent: a Redis without TLS takes redis://)"
    return message


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

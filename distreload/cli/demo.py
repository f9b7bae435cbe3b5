"""``distreload demo``: serve a small cluster on this machine (the demo itself lives in distreload.demo)."""

from __future__ import annotations

import argparse

from .common import CommandError, Parser, add_command, port_number, positive_float, positive_int

NAME = "demo"

# A fixed default, so the commands the demo prints stay the same from one run to the next.
DEFAULT_REDIS_PORT = 6390


def add_parser(commands: argparse._SubParsersAction[Parser]) -> Parser:
    parser = add_command(
        commands,
        NAME,
        "serve a demo cluster on this machine",
        "Serve a demo app as several hosts (uvicorn processes) of several workers each on localhost, and\n"
        "print what to try next. With no --redis-url it runs an embedded Redis-protocol server (fakeredis)\n"
        f"inside this command on --redis-port (default {DEFAULT_REDIS_PORT}, the next free one when taken),\n"
        "so it works on a machine with no Redis installed. Ctrl-C stops everything.",
        "examples:\n"
        "  distreload demo\n"
        "  distreload demo --hosts 3 --workers 2 --port 9000\n"
        "  distreload demo --redis-url redis://127.0.0.1:6379/0\n\n"
        "Needs uvicorn and fakeredis: pip install 'distreload[demo]'.",
    )
    parser.add_argument(
        "--redis-url", metavar="URL", default=None, help="use this Redis instead of the embedded server"
    )
    parser.add_argument(
        "--redis-port",
        type=port_number,
        default=DEFAULT_REDIS_PORT,
        metavar="PORT",
        help=f"the embedded server's port (default: {DEFAULT_REDIS_PORT}; 0: any free port)",
    )
    parser.add_argument("--namespace", default="demo", metavar="NS", help="namespace (default: demo)")
    parser.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS", help="address (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=port_number,
        default=8000,
        help="first host's port; the next hosts use the ports after it (0: any free port)",
    )
    parser.add_argument("--hosts", type=positive_int, default=2, metavar="N", help="app servers (default: 2)")
    parser.add_argument(
        "--workers", type=positive_int, default=2, metavar="N", help="worker processes per host (default: 2)"
    )
    parser.add_argument("--timeout", type=positive_float, metavar="SECONDS", help="stop after SECONDS")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoError, run_demo

    try:
        return run_demo(
            redis_url=args.redis_url,
            redis_port=args.redis_port,
            namespace=args.namespace,
            bind=args.bind,
            port=args.port,
            hosts=args.hosts,
            workers=args.workers,
            timeout=args.timeout,
        )
    except DemoError as exc:
        raise CommandError(str(exc)) from None

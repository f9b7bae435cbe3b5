"""``distreload watch``: publish the lightest reload that covers each batch of saved files."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .common import CommandError, Parser, UsageError, add_command, note, positive_int
from .listen import add_bounded_output_options
from .publish import add_fleet_options, add_publish_target_options, publisher, reload_request_of

if TYPE_CHECKING:
    from ..protocol import ReloadRequest

NAME = "watch"

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif", ".ico", ".bmp"})

# Files editors and tools write on the way to saving another one, never what the user saved: sed -i's
# sedXXXXXX; vim's swap files (.x.swp, .x.swo, ... and .x.swx), its write test 4913 (and the numbers after
# it) and its backup x~; JetBrains' x___jb_tmp___ / x___jb_old___; VS Code's x.vsctmp; emacs' .#x and #x#;
# Chrome's x.crswap; and the x.tmp that many tools write and rename over x. The rename itself shows as a
# change of x.
EDITOR_TEMPORARY = re.compile(
    r"""
      sed[A-Za-z0-9]{6}
    | \..*\.s[a-w][a-z]
    | .*\.sw[px]
    | \d+
    | .*~
    | .*___jb_(tmp|old|bak)___
    | .*\.vsctmp
    | \.\#.*
    | \#.*\#
    | .*\.(tmp|temp)
    | .*\.crswap
    """,
    re.VERBOSE,
)


def add_parser(commands: argparse._SubParsersAction[Parser]) -> Parser:
    parser = add_command(
        commands,
        NAME,
        "publish a reload whenever files change",
        "Watch files and directories and publish on every save (saves within --debounce are\n"
        "published once), with the lightest kind that is enough: stylesheets (.css) are swapped, images\n"
        "re-fetched, templates (under --templates) morphed into the pages in place; anything else reloads\n"
        "the pages. Saves of several kinds in one batch reload the pages. Template and asset edits then\n"
        "reach every host without restarting any worker. Editors' temporary, swap and backup files are\n"
        "ignored, and a file saved by writing a copy and renaming it over the original counts as a save\n"
        "of the original (sed -i, vim, JetBrains safe write, VS Code).",
        "examples:\n"
        "  distreload watch templates\n"
        "  distreload watch templates static --static-dir static --static-url /static\n"
        "  distreload watch app/templates --templates app/templates\n\n"
        "With --static-dir, a changed static/css/site.css is announced as /static/css/site.css so pages\n"
        "re-fetch that stylesheet only (images likewise); without it, or past 100 files at once, pages\n"
        "re-fetch all of them. Needs watchfiles: pip install 'distreload[watch]'.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to watch")
    add_publish_target_options(parser)
    add_fleet_options(parser)
    parser.add_argument(
        "--templates",
        metavar="DIR",
        default="templates",
        help="changes under DIR are morphed into the pages (default: templates)",
    )
    parser.add_argument("--static-dir", metavar="DIR", help="the directory served under --static-url")
    parser.add_argument(
        "--static-url",
        metavar="URL",
        default="/static",
        help="the URL path --static-dir is served under (default: /static)",
    )
    parser.add_argument(
        "--debounce",
        type=positive_int,
        default=300,
        metavar="MS",
        help="changes closer together than this are published once (default: 300)",
    )
    add_bounded_output_options(parser, "publish", "publishes")
    parser.set_defaults(run=run)
    return parser


def saved_files(changed: Iterable[str]) -> list[str]:
    """The files the user saved among a batch of changed paths: editors' temporaries and directories (made
    to hold new files, which come in the same batch) left out, each file once."""
    return sorted(
        {
            path
            for path in changed
            if not EDITOR_TEMPORARY.fullmatch(os.path.basename(path)) and not os.path.isdir(path)
        }
    )


def classify_changes(
    changed: Iterable[str], *, templates: str | None, static_dir: str | None, static_url: str
) -> tuple[str, tuple[str, ...]]:
    """The lightest reload that covers a batch of changed files, and the URL paths it names.

    Stylesheets: a css swap; images: an image swap (with their URL paths when they lie under
    ``static_dir``, else all of them); files under ``templates``: a morph; anything else, or changes that
    call for different kinds, a full reload.
    """
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


def request_for(kind: str, paths: tuple[str, ...], options: ReloadRequest) -> ReloadRequest:
    """The reload to publish; one naming more files than a message carries re-fetches all of that kind."""
    from ..protocol import reload_request

    try:
        return reload_request(kind, paths, options.spread, options.match)
    except ValueError:
        # Too many paths (or too long ones) for one message: `--css` with no paths swaps every
        # stylesheet, which still keeps the page, where a full reload would not.
        return reload_request(kind, (), options.spread, options.match)


def run(args: argparse.Namespace) -> int:
    try:
        import threading

        from watchfiles import watch
    except ImportError:
        raise CommandError("watch needs watchfiles: pip install 'distreload[watch]'") from None
    for path in args.paths:
        if not Path(path).exists():
            raise UsageError(f"no such file or directory: {path}")
    if args.static_dir is not None and not Path(args.static_dir).is_dir():
        raise UsageError(f"--static-dir: {args.static_dir!r} is not a directory")
    template_dir = args.templates if Path(args.templates).is_dir() else None
    publish = publisher(args)
    options = reload_request_of(args)  # --spread and --match apply to every publish
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
                note(f"watching {', '.join(args.paths)} (Ctrl-C to stop)")
            saved = saved_files(path for _, path in changes)
            if not saved:
                continue
            kind, paths = classify_changes(
                saved, templates=template_dir, static_dir=args.static_dir, static_url=args.static_url
            )
            request = request_for(kind, paths, options)
            try:
                result = publish(request)
            except CommandError as exc:
                # One failed publish (Redis restarting, app redeploying) must not end the watch.
                note(f"distreload watch: {exc}")
                continue
            published += 1
            if args.json:
                record = {
                    "version": result.version,
                    "receivers": result.receivers,
                    "kind": kind,
                    "paths": list(request.paths),
                    "changed": saved,
                }
                print(json.dumps(record), flush=True)
            else:
                names = ", ".join(sorted({os.path.relpath(p) for p in saved})[:5])
                more = f" and {len(saved) - 5} more" if len(saved) > 5 else ""
                print(
                    f"{time.strftime('%H:%M:%S')} {names}{more} changed; {result.describe(kind)}", flush=True
                )
            if args.count is not None and published >= args.count:
                break
    finally:
        if timer is not None:
            timer.cancel()
    return 0

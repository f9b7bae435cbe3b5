"""Instructions per step of placing the tag in a small page (valgrind's callgrind), step by step.

``python benchmarks/page_steps.py`` counts each step of what the injector does to the 2 KB page of
``apps.py`` (``--page 20k``: its 20 KB page) as FastAPI's HTMLResponse sends it: reading the headers,
looking for a tag already there, finding ``</body>``, joining the bytes, growing Content-Length (with the
copy of the start message), and the whole page through the injector's ``send`` with a ``send`` that does
nothing. Each step runs in a loop of FEW and of MANY calls; the difference over the extra calls is one
call's cost (start-up cancelled out), less that of a loop calling a function that does nothing.

``--source DIR`` counts another checkout's distreload (e.g. an older commit unpacked with ``git archive``):
the steps are taken from whichever of its functions it has.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("headers", "tag search", "</body> search", "join", "Content-Length", "whole page")
FEW, MANY = 200, 2200

_DRIVER = """
import asyncio, sys
sys.path.insert(0, {source!r})
sys.path.insert(1, {root!r})
from distreload import injector
from benchmarks.apps import SAMPLE_TAG as tag, {page}
from starlette.responses import HTMLResponse

response = HTMLResponse({page})
body = response.body
start = {{"type": "http.response.start", "status": 200, "headers": response.raw_headers}}
index = injector._last_marker(body, after=0)
if hasattr(injector, "_page_headers"):  # one pass over the headers, Content-Length grown arithmetically
    read_headers = lambda: injector._page_headers(start)
    kept, length = injector._page_headers(start)
    def grow():
        return {{**start, "headers": injector._with_length(kept, length, len(tag))[0]}}
else:
    read_headers = lambda: injector._headers_to_keep(start)
    kept, length_at = injector._headers_to_keep(start)
    def grow():
        headers = list(kept)
        injector._grow_length(headers, length_at, len(tag))
        return {{**start, "headers": headers}}
try:
    from distreload.tag import holds_tag
    def tag_search():
        return holds_tag(body)
    if hasattr(injector, "_page_headers"):  # the "?" looked for first, holds_tag() only where one is
        def tag_search():
            anchor = body.find(63)
            return anchor != -1 and holds_tag(body, anchor)
        def body_search():  # as the injector does it for a page in one message
            found = body.rfind(b"</body", -injector.SCAN_WINDOW)
            if found == -1 or not body[found + 1 :].islower():
                found = injector._last_marker(body, 0)
            return found
    else:
        body_search = lambda: injector._last_marker(body, after=0)
except ImportError:  # before holds_tag: any "data-distreload" in the page
    from distreload.tag import PRESENT_MARKER
    def tag_search():
        return PRESENT_MARKER in body
    body_search = lambda: injector._last_marker(body, after=0)
def join():
    return b"".join((body[:index], tag, body[index:]))
scope = {{"type": "http", "method": "GET", "path": "/page", "headers": []}}
async def ignore(message):
    pass
async def whole():
    send = injector.injecting(dict(scope), ignore, lambda scope: tag)[1]
    await send(start)
    await send({{"type": "http.response.body", "body": body, "more_body": False}})
steps = {{
    "nothing": lambda: None,
    "headers": read_headers,
    "tag search": tag_search,
    "</body> search": body_search,
    "join": join,
    "Content-Length": grow,
}}
async def nothing():
    pass
async def run_whole(count, call):
    for _ in range(count):
        await call()
step, count = {step!r}, {count}
if step == "whole page":
    asyncio.run(run_whole(count, whole))
elif step == "nothing async":
    asyncio.run(run_whole(count, nothing))
else:
    call = steps[step]
    for _ in range(count):
        call()
"""
_COLLECTED = re.compile(r"Collected : (\d+)")


PAGES = {"2k": "PAGE", "20k": "PAGE_20K"}  # --page: the name of the page in apps.py


def _count(source: Path, step: str, count: int, page: str) -> int:
    script = _DRIVER.format(source=str(source), root=str(ROOT), step=step, count=count, page=PAGES[page])
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed for {step}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def count_steps(source: Path, page: str = "2k") -> dict[str, int]:
    """Instructions of one call of each step on ``page``, for the distreload found in ``source``."""

    def per_call(step: str) -> float:
        return (_count(source, step, MANY, page) - _count(source, step, FEW, page)) / (MANY - FEW)

    loop, async_loop = per_call("nothing"), per_call("nothing async")
    return {step: round(per_call(step) - (async_loop if step == "whole page" else loop)) for step in STEPS}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=ROOT, help="the folder holding the distreload package")
    parser.add_argument("--page", choices=sorted(PAGES), default="2k", help="the page of apps.py to count")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    print("| step | instructions |\n|---|---:|")
    for step, instructions in count_steps(args.source.resolve(), args.page).items():
        print(f"| {step} | {instructions} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

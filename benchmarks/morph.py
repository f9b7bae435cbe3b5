"""The morph against idiomorph, in the same Chromium, on the same page: ``python benchmarks/morph.py``.

A page of 5000 elements (sections of headings, paragraphs, lists, forms with id'd fields) gets one text
change; each round loads the page afresh, parses the new HTML once (the same DOMParser call for both, timed
apart) and times only the morph: distreload's ``morphDocument`` and ``Idiomorph.morph`` on the whole
document, in interleaved rounds. Nothing is fetched: the morph is what is timed.

idiomorph is not part of distreload: ``npm pack idiomorph@VERSION`` fetches it into a temporary directory at
each run (needs npm and the npm registry), or ``--idiomorph PATH`` names a copy of ``dist/idiomorph.js``.
Chromium is /usr/bin/chromium (``DISTRELOAD_TEST_CHROMIUM``) driven by Playwright.

``--watch`` also times what a user meets: a template saved to the page morphed in an open tab, through
``distreload watch`` (its default debounce), Redis (``DISTRELOAD_BENCH_REDIS_URL``, a namespace of its own,
deleted afterwards) and a uvicorn worker serving the template.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REDIS_URL, forget_namespace, free_port, unique_namespace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "distreload" / "client.js"
CHROMIUM = os.environ.get("DISTRELOAD_TEST_CHROMIUM", "/usr/bin/chromium")
IDIOMORPH_VERSION = "0.8.0"
ORIGIN = "http://morph.bench"

# Times one morph in the page: the new HTML parsed first (timed apart), then the library's morph.
MEASURE = """async ([library, html]) => {
  const started = performance.now();
  const fresh = new DOMParser().parseFromString(html, "text/html");
  const parsed = performance.now();
  if (library === "distreload") {
    const result = window.distreload.parts.morphDocument(document, fresh, document.baseURI);
    if (result.reason) throw new Error("distreload refused: " + result.reason);
  } else {
    Idiomorph.morph(document.documentElement, fresh.documentElement);
  }
  const morphed = performance.now();
  return {
    parse: parsed - started,
    morph: morphed - parsed,
    elements: document.body.getElementsByTagName("*").length,
    changed: document.getElementById("changed").textContent,
    typed: document.getElementById("field-3-0").value,
  };
}"""


def page(elements: int, changed_text: str, edit: str = "") -> str:
    """A page whose <body> holds exactly ``elements`` elements, one of which reads ``changed_text``.

    ``edit``: "" (that text only), "every-text" (every paragraph's text changes too) or "insert-first" (a
    section is inserted first, and the last one goes so that the count stays).
    """
    per_section = 28  # section, h2, p, div, ul, 8 x (li, b), form, 3 x (label, input)
    sections = []
    for section in range(elements // per_section):
        rows = "".join(f"<li class='row'>item {section}.{row} <b>{row}</b></li>" for row in range(8))
        fields = "".join(
            f"<label>field {field} <input id='field-{section}-{field}' name='f{field}' value='v'></label>"
            for field in range(3)
        )
        other = f"paragraph {section}" + (" changed" if edit == "every-text" else "")
        paragraph = f"<p id='changed'>{changed_text}</p>" if section == 77 else f"<p>{other}</p>"
        sections.append(
            f"<section class='card'><h2>Section {section}</h2>{paragraph}<div class='meta'></div>"
            f"<ul>{rows}</ul><form>{fields}</form></section>"
        )
    if edit == "insert-first":
        inserted = sections.pop().replace("class='card'", "class='card new'").replace("field-", "new-")
        sections.insert(0, inserted)
    remainder = elements % per_section
    if remainder:
        sections.append("<div class='tail'>" + "<span>x</span>" * (remainder - 1) + "</div>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>morph benchmark</title>"
        "<script src='/client.js'></script><script src='/idiomorph.js'></script></head>"
        "<body>" + "\n".join(sections) + "</body></html>"
    )


def fetch_idiomorph(directory: Path) -> Path:
    """dist/idiomorph.js of idiomorph@IDIOMORPH_VERSION, through ``npm pack`` into ``directory``."""
    subprocess.run(
        ["npm", "pack", f"idiomorph@{IDIOMORPH_VERSION}", "--silent"],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=120,
    )
    archive = next(directory.glob("idiomorph-*.tgz"))
    with tarfile.open(archive) as tar:
        member = tar.getmember("package/dist/idiomorph.js")
        extracted = tar.extractfile(member)
        assert extracted is not None
        target = directory / "idiomorph.js"
        target.write_bytes(extracted.read())
    return target


def run(*, elements: int, rounds: int, idiomorph: Path, edit: str = "") -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    before = page(elements, "the old text")
    after = page(elements, "the new text", edit)
    files = {"/client.js": CLIENT.read_bytes(), "/idiomorph.js": idiomorph.read_bytes()}
    timings: dict[str, dict[str, list[float]]] = {
        name: {"parse": [], "morph": []} for name in ("distreload", "idiomorph")
    }

    def serve(route: Any) -> None:
        path = route.request.url[len(ORIGIN) :].split("?")[0]
        if path == "/":
            route.fulfill(status=200, body=before, content_type="text/html")
        elif path in files:
            route.fulfill(status=200, body=files[path], content_type="text/javascript")
        else:
            route.fulfill(status=404, body="")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context()
            context.route(f"{ORIGIN}/**", serve)
            tab = context.new_page()
            # One warm-up round each (the JIT), then interleaved rounds on a freshly loaded page.
            for index in range(2 + 2 * rounds):
                library = ("distreload", "idiomorph")[index % 2]
                tab.goto(f"{ORIGIN}/")
                tab.evaluate("document.getElementById('field-3-0').value = 'typed by the reader'")
                result = tab.evaluate(MEASURE, [library, after])
                if result["elements"] != elements or result["changed"] != "the new text":
                    raise AssertionError(f"{library} did not morph the page as expected: {result}")
                if index >= 2:
                    timings[library]["parse"].append(result["parse"])
                    timings[library]["morph"].append(result["morph"])
                    timings[library].setdefault("typed", []).append(result["typed"] == "typed by the reader")
            version = browser.version
        finally:
            browser.close()
    summary: dict[str, Any] = {
        "elements": elements,
        "edit": edit or "one-text",
        "rounds": rounds,
        "chromium": version,
    }
    for library, figures in timings.items():
        summary[library] = {
            "morph_ms_median": round(statistics.median(figures["morph"]), 2),
            "morph_ms_min": round(min(figures["morph"]), 2),
            "parse_ms_median": round(statistics.median(figures["parse"]), 2),
            "kept_typed_text": all(figures["typed"]),
        }
    summary["ratio_median"] = round(
        summary["distreload"]["morph_ms_median"] / summary["idiomorph"]["morph_ms_median"], 3
    )
    summary["idiomorph_version"] = IDIOMORPH_VERSION
    return summary


def template_app() -> Any:
    """The page of DISTRELOAD_BENCH_TEMPLATE, read at every request, behind DistReload (uvicorn --factory)."""
    from starlette.responses import HTMLResponse

    from distreload import DistReload

    template = Path(os.environ["DISTRELOAD_BENCH_TEMPLATE"])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await HTMLResponse(template.read_text())(scope, receive, send)

    return DistReload(
        app,
        enabled=True,
        redis_url=os.environ["DISTRELOAD_BENCH_REDIS"],
        namespace=os.environ["DISTRELOAD_BENCH_NS"],
    )


# Records when the changed paragraph's text changes, in wall-clock milliseconds.
WATCH_CHANGES = """() => {
  window.changedAt = [];
  new MutationObserver(() => window.changedAt.push(performance.timeOrigin + performance.now()))
    .observe(document.getElementById("changed"), {characterData: true, childList: true, subtree: true});
}"""


def save_to_morph(*, elements: int, rounds: int) -> dict[str, Any]:
    """Seconds from a template saved to the open page morphed, through ``distreload watch``."""
    from playwright.sync_api import sync_playwright

    namespace = unique_namespace()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="distreload-watch-") as directory:
        templates = Path(directory) / "templates"
        templates.mkdir()
        template = templates / "page.html"
        template.write_text(page(elements, "text 0").replace("<script src='/client.js'></script>", ""))
        port = free_port()
        environment = {
            **os.environ,
            "DISTRELOAD_BENCH_TEMPLATE": str(template),
            "DISTRELOAD_BENCH_REDIS": REDIS_URL,
            "DISTRELOAD_BENCH_NS": namespace,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        seconds: list[float] = []
        try:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "benchmarks.morph:template_app", "--factory"]
                    + ["--port", str(port), "--log-level", "warning"],
                    cwd=ROOT,
                    env=environment,
                )
            )
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distreload",
                        "watch",
                        str(templates),
                        "--templates",
                        str(templates),
                    ]
                    + ["--redis-url", REDIS_URL, "--namespace", namespace],
                    cwd=ROOT,
                    env=environment,
                    stdout=subprocess.DEVNULL,
                )
            )
            url = f"http://127.0.0.1:{port}/"
            for _ in range(100):
                try:
                    urllib.request.urlopen(url, timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
                )
                try:
                    tab = browser.new_page()
                    tab.goto(url)
                    tab.wait_for_function(
                        "window.__distreload && window.__distreload.connected", timeout=20_000
                    )
                    tab.evaluate(WATCH_CHANGES)
                    time.sleep(1.0)  # the watcher's first scan
                    for number in range(1, rounds + 1):
                        saved = time.time() * 1000
                        template.write_text(
                            page(elements, f"text {number}").replace("<script src='/client.js'></script>", "")
                        )
                        tab.wait_for_function(f"window.__distreload.morphs === {number}", timeout=20_000)
                        changed = tab.evaluate("window.changedAt[window.changedAt.length - 1]")
                        seconds.append((changed - saved) / 1000)
                        time.sleep(0.5)
                    if tab.evaluate("document.getElementById('changed').textContent") != f"text {rounds}":
                        raise AssertionError("the page did not follow the template")
                finally:
                    browser.close()
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
            forget_namespace(namespace)
    return {
        "elements": elements,
        "rounds": rounds,
        "save_to_morphed_s_median": round(statistics.median(seconds), 3),
        "save_to_morphed_s_max": round(max(seconds), 3),
        "debounce_ms": 300,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=5000, help="elements in the page's body (5000)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per library (15)")
    parser.add_argument("--idiomorph", type=Path, help="a copy of dist/idiomorph.js (else npm pack)")
    parser.add_argument(
        "--edits",
        default="one-text",
        help="comma-separated: one-text (the target), every-text, insert-first (default: one-text)",
    )
    parser.add_argument("--watch", action="store_true", help="also time a saved template to a morphed page")
    arguments = parser.parse_args(argv)
    summaries = []
    with tempfile.TemporaryDirectory(prefix="distreload-morph-") as directory:
        idiomorph = arguments.idiomorph or fetch_idiomorph(Path(directory))
        for edit in arguments.edits.split(","):
            summaries.append(
                run(
                    elements=arguments.elements,
                    rounds=arguments.rounds,
                    idiomorph=idiomorph,
                    edit="" if edit == "one-text" else edit,
                )
            )
    if arguments.watch:
        summaries.append({"watch": save_to_morph(elements=arguments.elements, rounds=5)})
    print(json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Check the built documentation site in a headless browser, the way a reader meets it.

    python docs/check_site.py docs/_build/html [--screenshots DIR]

Serves the HTML directory on 127.0.0.1 (a random free port) and visits every page with
Debian's Chromium through Playwright. A page fails when

- a link to a page of the site, or to an ``#anchor`` on one, does not resolve (the
  file is missing, or no element on the target page has that id);
- the page logs a console error or throws (an uncaught exception);
- a file it loads from the site is missing (an HTTP error: a broken image or script);
- it holds math that MathJax did not typeset (a ``.math`` element without an
  ``mjx-container``, or raw ``$$``, ``\\(`` or ``\\[`` left in its prose);
- it asks for anything not on 127.0.0.1 (every such request is aborted and counted:
  the site must work offline, with no CDN).

The site search must also find ``adamw``. Prints the counts and exits 1 on any failure.
``--screenshots DIR`` saves a full-page PNG of every page.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import posixpath
import sys
import threading
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

from playwright.sync_api import Page, Route, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOST = "127.0.0.1"
SEARCH_TERM = "adamw"

# What a page reports after loading: its ids, links, and whether its math was typeset.
# MathJax 3 typesets asynchronously; startup.promise settles when the first pass is done.
INSPECT_JS = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  for (const a of document.querySelectorAll('a[name]')) ids.push(a.getAttribute('name'));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const maths = [...document.querySelectorAll('.math')];
  const untypeset = maths.filter(m => !m.querySelector('mjx-container')).length;
  const prose = document.body.cloneNode(true);
  for (const e of prose.querySelectorAll('pre, code, script, style, .highlight, textarea')) {
    e.remove();
  }
  const text = prose.textContent;
  const raw = ['$$', '\\\\(', '\\\\[', '\\\\begin{'].filter(s => text.includes(s));
  return {ids, links, maths: maths.length, untypeset, raw,
          mjx: document.querySelectorAll('mjx-container').length};
}
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # The browser drops connections it no longer needs (a navigation away mid-load):
        # a broken pipe here is not a failure of the site, and the check counts real ones.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def serve(root: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietHandler, directory=str(root))
    server = QuietServer((LOCAL_HOST, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def site_file(root: Path, path: str) -> Path | None:
    """The file a URL path on the site names (a directory means its index.html)."""
    relative = posixpath.normpath(unquote(path)).lstrip("/")
    target = root / relative
    if target.is_dir():
        target = target / "index.html"
    return target if target.is_file() else None


def screenshot_name(relative: str) -> str:
    return relative.removesuffix(".html").replace("/", "__") + ".png"


def check_search(page: Page, base: str) -> list[str]:
    page.goto(f"{base}/search.html?q={SEARCH_TERM}", wait_until="load")
    try:
        page.wait_for_selector("#search-results ul.search li", timeout=20_000)
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError; reported as a failure below
        return [f"search.html?q={SEARCH_TERM} listed no result"]
    hrefs = page.eval_on_selector_all(
        "#search-results ul.search li a", "links => links.map(a => a.href)"
    )
    if not any(SEARCH_TERM in href.lower() for href in hrefs):
        return [f"search for {SEARCH_TERM!r} found no page about it: {hrefs[:5]}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="the built site, e.g. docs/_build/html")
    parser.add_argument("--screenshots", type=Path, help="save a full-page PNG per page here")
    args = parser.parse_args(argv)
    root: Path = args.html.resolve()
    if not (root / "index.html").is_file():
        parser.error(f"html={str(args.html)!r} holds no index.html: build the site first")
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)

    pages = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.html")
        if not p.relative_to(root).parts[0].startswith("_")
    )
    server = serve(root)
    base = f"http://{LOCAL_HOST}:{server.server_address[1]}"

    failures: list[str] = []
    external: list[str] = []
    console_errors: list[str] = []
    ids: dict[str, set[str]] = {}
    links: dict[str, list[str]] = defaultdict(list)  # target URL -> pages linking to it
    math_pages = 0
    current = {"page": ""}

    def route(route: Route) -> None:
        url = route.request.url
        if (
            urlsplit(url).scheme in {"data", "blob", "about"}
            or urlsplit(url).hostname == LOCAL_HOST
        ):
            route.continue_()
        else:
            external.append(f"{current['page']}: {url}")
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", route)
        page = context.new_page()
        page.on(
            "console",
            lambda msg: (
                console_errors.append(f"{current['page']}: console: {msg.text}")
                if msg.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda exc: console_errors.append(f"{current['page']}: {exc}"))
        page.on(
            "response",
            lambda response: (
                failures.append(f"{current['page']}: HTTP {response.status} for {response.url}")
                if response.status >= 400 and urlsplit(response.url).hostname == LOCAL_HOST
                else None
            ),
        )

        for relative in pages:
            current["page"] = relative
            page.goto(f"{base}/{relative}", wait_until="load")
            found = page.evaluate(INSPECT_JS)
            ids[relative] = set(found["ids"])
            for link in found["links"]:
                links[link].append(relative)
            if found["maths"] or found["mjx"]:
                math_pages += 1
            if found["untypeset"]:
                failures.append(
                    f"{relative}: {found['untypeset']} of {found['maths']} math elements "
                    "not typeset by MathJax"
                )
            if found["raw"]:
                failures.append(f"{relative}: raw TeX delimiters in the prose: {found['raw']}")
            if args.screenshots:
                page.screenshot(path=args.screenshots / screenshot_name(relative), full_page=True)

        current["page"] = "search.html"
        search_failures = check_search(page, base)
        failures += search_failures
        browser.close()
    server.shutdown()

    anchors = 0
    internal = 0
    for link, sources in sorted(links.items()):
        parts = urlsplit(link)
        if parts.hostname != LOCAL_HOST:
            continue  # a link out (e.g. in the changelog) is not followed, only listed
        internal += 1
        url, fragment = urldefrag(link)
        target = site_file(root, urlsplit(url).path)
        if target is None:
            failures.append(f"{sources[0]}: broken link {link} (no such file)")
            continue
        if fragment:
            anchors += 1
            relative = target.relative_to(root).as_posix()
            if relative not in ids:
                failures.append(f"{sources[0]}: link {link} has an anchor on a non-page")
            elif unquote(fragment) not in ids[relative]:
                failures.append(f"{sources[0]}: broken anchor {link} (no id {fragment!r})")
    outside = sorted({link for link in links if urlsplit(link).hostname != LOCAL_HOST})

    print(f"pages visited:             {len(pages)}")
    print(f"internal links checked:    {internal}")
    print(f"anchors checked:           {anchors}")
    print(f"links out (not followed):  {len(outside)}")
    print(f"pages with math:           {math_pages}")
    print(f"console errors:            {len(console_errors)}")
    print(f"external requests blocked: {len(external)}")
    print(f"search for {SEARCH_TERM!r}:         {'FAILED' if search_failures else 'ok'}")
    problems = failures + console_errors + [f"external request: {e}" for e in external]
    for problem in problems[:50]:
        print("FAIL", problem)
    if len(problems) > 50:
        print(f"... and {len(problems) - 50} more")
    print("site check:", "FAILED" if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

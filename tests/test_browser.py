"""The built book in a real browser: headless Chromium (Debian's chromium and chromium-driver, installed by
`make browser`) opens every page from a local HTTP server (run after `make book`), offline: every host name but
127.0.0.1 fails to resolve, as on a reader's machine without a network.

Checks what a static HTML parse cannot:

* every image loads and no page shows an error output;
* every formula is typeset by the MathJax served with the book (``mjx-container`` in each ``.math`` element, no
  MathJax error, no raw ``\\(``, ``\\[`` or ``$$`` left in the visible text);
* no page logs a console error (level SEVERE);
* every header button works: its local links (download .ipynb, .md) are served, the Colab button opens the
  committed notebook ``notebooks/<name>.ipynb`` of satlib.config.REPOSITORY_URL, the repository and issue buttons
  point at that repository;
* at 1,280 px every figure is shown at 85% of its natural width or more (else its labels shrink below legibility);
* search finds a word from a chapter.

Screenshots of every page at 1,280 and 390 px (and each figure at 390 px) are kept in ``_build/screenshots/``
as ``<page>-<width>.png`` and ``<page>-390-figure<n>.png``.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from bs4 import BeautifulSoup

from satlib.config import REPOSITORY_URL

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
BOOK_CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
PAGES = [TOC["root"]] + [c["file"] for part in TOC["parts"] for c in part["chapters"]]
CHAPTERS = [p for p in PAGES if p.startswith("book/notebooks/")]
CHROMEDRIVER = shutil.which("chromedriver")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

WIDE, NARROW = 1280, 390
HEIGHT = {WIDE: 1000, NARROW: 844}
#: A figure shown narrower than this share of its natural width has labels too small to read.
MIN_SHOWN_SHARE = 0.85
#: Every host name but the local server's address fails to resolve: the book must work offline.
OFFLINE_RULES = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")

pytestmark = pytest.mark.skipif(
    CHROMEDRIVER is None or BROWSER is None, reason="no chromium/chromedriver: run `make browser` (Debian packages)"
)

# Everything the checks need from one page, gathered in one visit.
PAGE_REPORT_JS = """
const main = document.querySelector('main') || document.body;
const skip = 'pre, code, script, style, mjx-container, .highlight, textarea';
const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {acceptNode: n =>
    n.parentElement && n.parentElement.closest(skip) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
const texts = [];
while (walker.nextNode()) texts.push(walker.currentNode.nodeValue);
const maths = Array.from(document.querySelectorAll('.math'));
return {
  width: window.innerWidth,
  broken_images: Array.from(document.images)
      .filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)).map(i => i.src),
  figures: Array.from(document.querySelectorAll('main figure img')).map(i => ({
      name: i.closest('figure').id || i.getAttribute('src').split('/').pop(),
      number: (i.closest('figure').querySelector('.caption-number') || {textContent: ''}).textContent.trim(),
      natural: i.naturalWidth, shown: i.clientWidth})),
  column: (document.querySelector('.bd-article') || main).clientWidth,
  error_outputs: document.querySelectorAll('.output.error, .output.traceback').length,
  math_elements: maths.length,
  math_unrendered: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
  math_errors: Array.from(document.querySelectorAll('mjx-merror')).map(m => m.textContent.slice(0, 80)),
  mathjax_scripts: Array.from(document.scripts).map(s => s.src).filter(s => /mathjax/i.test(s)),
  visible_text: texts.join('\\n'),
  buttons: Array.from(document.querySelectorAll('.article-header-buttons a[href]')).map(a => ({
      href: a.href, title: a.title || a.getAttribute('aria-label') || a.textContent.trim(),
      classes: a.className})),
};
"""

WAIT_FOR_MATHJAX_JS = """
const done = arguments[arguments.length - 1];
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(() => done('typeset'), error => done('failed: ' + error));
} else {
  done('absent');
}
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    assert (HTML / "index.html").is_file(), "run `make book` first"
    handler = functools.partial(QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WIDE},1000",
                     f"--host-resolver-rules={OFFLINE_RULES}"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def screenshot_name(docname: str, width: int, suffix: str = "") -> Path:
    return SCREENSHOTS / f"{docname.rsplit('/', 1)[-1]}-{width}{suffix}.png"


def visit(browser, server: str, docname: str, width: int = WIDE) -> list[dict[str, Any]]:
    """Open ``docname`` in a window ``width`` px wide and wait until it loaded and MathJax (if any) typeset it.

    Returns the console entries the page logged."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # drop what earlier pages logged
    browser.set_window_size(width, HEIGHT[width])
    browser.get(f"{server}/{docname}.html")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    browser.execute_async_script(WAIT_FOR_MATHJAX_JS)
    return browser.get_log("browser")


@pytest.fixture(scope="module")
def report(browser, server):
    """``report(docname)``: what the page shows at 1,280 px, gathered in one visit per page for all the checks
    below; keeps the page's screenshot."""
    reports: dict[str, dict[str, Any]] = {}

    def page_report(docname: str) -> dict[str, Any]:
        if docname not in reports:
            console = visit(browser, server, docname, WIDE)
            page = browser.execute_script(PAGE_REPORT_JS)
            page["console_errors"] = [entry["message"] for entry in console if entry["level"] == "SEVERE"]
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            path = screenshot_name(docname, WIDE)
            browser.save_screenshot(str(path))
            page["screenshot_bytes"] = path.stat().st_size
            reports[docname] = page
        return reports[docname]

    return page_report


def static_math_count(docname: str) -> int:
    """Formulas in the page's HTML file, counted without a browser."""
    soup = BeautifulSoup((HTML / f"{docname}.html").read_text(), "html.parser")
    return len(soup.select(".math"))


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


@pytest.mark.parametrize("docname", PAGES)
def test_page_images_load_and_no_error_output(report, docname):
    page = report(docname)
    assert page["width"] == WIDE
    assert page["screenshot_bytes"] > 10_000  # a rendered page, not a blank one
    assert page["broken_images"] == [], f"{docname}: images that did not load: {page['broken_images']}"
    if docname in CHAPTERS:
        assert page["figures"], f"{docname}: no figure"
    assert page["error_outputs"] == 0, f"{docname} shows an error output"
    assert "Traceback (most recent call last)" not in page["visible_text"]


@pytest.mark.parametrize("docname", PAGES)
def test_math_renders_offline(report, server, docname):
    page = report(docname)
    expected = static_math_count(docname)
    assert page["math_elements"] == expected
    if expected:
        assert page["mathjax_scripts"], f"{docname} has {expected} formulas but loads no MathJax"
        external = [s for s in page["mathjax_scripts"] if not s.startswith(server)]
        assert external == [], f"{docname}: MathJax loaded from elsewhere than the book: {external}"
    assert page["math_unrendered"] == [], f"{docname}: formulas MathJax did not typeset: {page['math_unrendered'][:5]}"
    assert page["math_errors"] == [], f"{docname}: MathJax errors: {page['math_errors'][:5]}"
    raw = sorted({m.group(0)[:60] for m in RAW_TEX.finditer(page["visible_text"])})
    assert raw == [], f"{docname}: raw TeX shown as text: {raw[:5]}"


def test_the_book_has_math():
    """The math check above is not vacuous: the chapters hold formulas."""
    assert sum(static_math_count(docname) for docname in CHAPTERS) > 0


@pytest.mark.parametrize("docname", PAGES)
def test_no_console_errors(report, docname):
    errors = report(docname)["console_errors"]
    assert errors == [], f"{docname} logs console errors: {errors}"


@pytest.mark.parametrize("docname", PAGES)
def test_header_buttons_lead_somewhere(report, server, docname):
    """Local links are served; Colab opens the committed notebook; repository and issues go to REPOSITORY_URL."""
    buttons = report(docname)["buttons"]
    assert any("download-source" in b["classes"] for b in buttons), f"{docname}: no download button"
    stem = docname.rsplit("/", 1)[1]
    branch = BOOK_CONFIG["repository"]["branch"]
    repository = REPOSITORY_URL.removeprefix("https://github.com/")
    colab = f"{BOOK_CONFIG['launch_buttons']['colab_url']}/github/{repository}/blob/{branch}/notebooks/{stem}.ipynb"
    colab_links = [b["href"] for b in buttons if b["href"].startswith(BOOK_CONFIG["launch_buttons"]["colab_url"])]
    if docname in CHAPTERS:
        assert colab_links == [colab], f"{docname}: Colab buttons {colab_links}, expected {colab}"
        assert (ROOT / "notebooks" / f"{stem}.ipynb").is_file(), "the Colab button opens a notebook that is not in git"
    else:
        assert colab_links == []
    for button in buttons:
        href = button["href"]
        if href.startswith(server):
            status, body = fetch(href)
            assert status == 200 and body, f"{docname}: {button['title']!r} leads to {href}: HTTP {status}"
            if href.endswith(".ipynb"):
                assert "cells" in json.loads(body), f"{docname}: {href} is not a notebook"
        elif href in colab_links:
            continue
        elif "source-repository" in button["classes"]:
            assert href.rstrip("/") == REPOSITORY_URL, f"{docname}: repository button leads to {href}"
        elif "source-issues" in button["classes"]:
            assert href.startswith(f"{REPOSITORY_URL}/issues/new"), f"{docname}: issue button leads to {href}"
        else:
            pytest.fail(f"{docname}: header button {button['title']!r} leads to {href}, which no check covers")


@pytest.mark.parametrize("docname", CHAPTERS)
def test_figures_shown_near_natural_width(report, docname):
    """At 1,280 px each figure is shown at 85% of its natural width or more (else its text is scaled down)."""
    page = report(docname)
    narrow = [f"{f['number']} {f['name']}: {f['shown']}/{f['natural']} px ({f['shown'] / f['natural']:.0%})"
              for f in page["figures"] if f["natural"] and f["shown"] < MIN_SHOWN_SHARE * f["natural"]]  # fmt: skip
    assert narrow == [], (
        f"{docname}: at {WIDE} px (main column {page['column']} px) these figures are shown below "
        f"{MIN_SHOWN_SHARE:.0%} of their natural width: {narrow}"
    )


@pytest.mark.parametrize("docname", PAGES)
def test_screenshots_at_phone_width(browser, server, docname):
    """At 390 px (a phone) every page is drawn without console errors; screenshots of it and of each figure."""
    console = visit(browser, server, docname, NARROW)
    assert browser.execute_script("return window.innerWidth") == NARROW
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = screenshot_name(docname, NARROW)
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    for index, figure in enumerate(browser.find_elements("css selector", "main figure"), 1):
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", figure)
        assert figure.screenshot(str(screenshot_name(docname, NARROW, f"-figure{index}")))
    errors = [entry["message"] for entry in console if entry["level"] == "SEVERE"]
    assert errors == [], f"{docname} at {NARROW} px logs console errors: {errors}"


def test_search_finds_a_word_from_a_chapter(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(WIDE, HEIGHT[WIDE])
    browser.get(f"{server}/search.html?q=anisotropy")
    results = WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "const items = document.querySelectorAll('#search-results li, ul.search li');"
            "return items.length ? Array.from(items).map(i => i.innerText) : null;"
        )
    )
    assert any("Anisotropy" in text for text in results), results[:5]

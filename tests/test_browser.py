"""The built book in a real browser: headless Chromium (Debian's chromium and chromium-driver, installed by
`make browser`) opens every page from a local HTTP server (run after `make book`).

Checks what a static HTML parse cannot: that every figure image actually loads (non-zero natural size), that no
page shows an error output, that each chapter's Colab button points at its source notebook, and that the search
page (a JavaScript index) finds a word from a chapter. Screenshots of the intro and of one chapter are kept in
``_build/screenshots/`` as CI artefacts.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [c["file"] for part in TOC["parts"] for c in part["chapters"]]
CHAPTERS = [p for p in PAGES if p.startswith("book/notebooks/")]
CHROMEDRIVER = shutil.which("chromedriver")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMEDRIVER is None or BROWSER is None, reason="no chromium/chromedriver: run `make browser` (Debian packages)"
)


@pytest.fixture(scope="module")
def server():
    assert (HTML / "index.html").is_file(), "run `make book` first"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    handler.log_message = lambda *args: None
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
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def visit(browser, server: str, docname: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/{docname}.html")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


@pytest.mark.parametrize("docname", PAGES)
def test_page_images_load_and_no_error_output(browser, server, docname):
    visit(browser, server, docname)
    broken = browser.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)).map(i => i.src)"
    )
    assert broken == [], f"{docname}: images that did not load: {broken}"
    figures = browser.execute_script("return document.querySelectorAll('figure img').length")
    if docname in CHAPTERS:
        assert figures >= 1, f"{docname}: no figure"
    errors = browser.execute_script("return document.querySelectorAll('.output.error, .output.traceback').length")
    assert errors == 0, f"{docname} shows an error output"
    assert "Traceback (most recent call last)" not in browser.find_element("tag name", "body").text


@pytest.mark.parametrize("docname", CHAPTERS)
def test_colab_button_points_at_the_source_notebook(browser, server, docname):
    visit(browser, server, docname)
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('a')).map(a => a.href).filter(h => h.includes('colab'))"
    )
    stem = docname.rsplit("/", 1)[1]
    assert links, f"{docname}: no Colab button"
    assert all(link.endswith(f"/notebooks/{stem}.ipynb") and "/book/notebooks/" not in link for link in links)


def test_search_finds_a_word_from_a_chapter(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/search.html?q=anisotropy")
    results = WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "const items = document.querySelectorAll('#search-results li, ul.search li');"
            "return items.length ? Array.from(items).map(i => i.innerText) : null;"
        )
    )
    assert any("Anisotropy" in text for text in results), results[:5]


def test_screenshots_are_kept(browser, server):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for docname, name in ((TOC["root"], "intro.png"), (CHAPTERS[0], "chapter.png")):
        visit(browser, server, docname)
        path = SCREENSHOTS / name
        assert browser.save_screenshot(str(path))
        assert path.stat().st_size > 10_000  # a rendered page, not a blank one

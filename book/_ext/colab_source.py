"""The book's links to its repository: one address, and Colab buttons that open the committed notebooks.

* The repository address lives in one place, :data:`satlib.config.REPOSITORY_URL`. At ``config-inited`` this
  extension sets the theme's ``repository_url`` from it (the repository, issues and Colab buttons derive from that
  option). jupyter-book refuses repository buttons unless _config.yml names a ``repository.url`` too, so the build
  stops with a one-line error if that copy differs.
* The book renders ``book/notebooks/<name>.ipynb`` (executed by papermill, ignored by git); a reader who opens a
  chapter on Colab must get ``notebooks/<name>.ipynb``, the notebook committed to the repository, which runs from
  scratch. Only the path of absolute links (Colab, repository) is rewritten: the download button's link is local
  (``_sources/book/notebooks/<name>.ipynb``, the executed notebook served with the book) and an issue link's query
  names the page as it is published; both stay as the theme wrote them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

EXECUTED_DIR = "/book/notebooks/"
SOURCE_DIR = "/notebooks/"


def use_repository_url(app: Sphinx, config: Config) -> None:
    """``config-inited`` handler: the theme's ``repository_url`` is :data:`satlib.config.REPOSITORY_URL`."""
    from satlib.config import REPOSITORY_URL

    written = config.html_theme_options.get("repository_url")
    if written not in (None, REPOSITORY_URL):
        raise ConfigError(
            f"_config.yml's repository.url {written!r} differs from satlib.config.REPOSITORY_URL {REPOSITORY_URL!r}: "
            "set it to the latter"
        )
    config.html_theme_options = {**config.html_theme_options, "repository_url": REPOSITORY_URL}


def source_notebook_url(url: str) -> str:
    """``url`` with ``/book/notebooks/`` replaced by ``/notebooks/`` in its path, if it is absolute (http or https)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or EXECUTED_DIR not in parts.path:
        return url
    return urlunsplit(parts._replace(path=parts.path.replace(EXECUTED_DIR, SOURCE_DIR)))


def _rewrite(buttons: list[dict[str, Any]]) -> None:
    for button in buttons:
        if isinstance(button.get("url"), str):
            button["url"] = source_notebook_url(button["url"])
        if isinstance(button.get("buttons"), list):
            _rewrite(button["buttons"])


def rewrite_buttons(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """``html-page-context`` handler, run after sphinx-book-theme built its buttons (priority 501)."""
    _rewrite(context.get("header_buttons", []))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", use_repository_url)
    app.connect("html-page-context", rewrite_buttons, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Point launch and source buttons at the clean source notebooks, not at the executed copies.

The book renders ``book/notebooks/<name>.ipynb`` (executed by papermill, ignored by git); readers who open a
chapter on Colab or view its source must get ``notebooks/<name>.ipynb``, the notebook committed to the
repository, which runs from scratch.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx

EXECUTED_DIR = "/book/notebooks/"
SOURCE_DIR = "/notebooks/"


def _rewrite(buttons: list[dict[str, Any]]) -> None:
    for button in buttons:
        if isinstance(button.get("url"), str):
            button["url"] = button["url"].replace(EXECUTED_DIR, SOURCE_DIR)
        if isinstance(button.get("buttons"), list):
            _rewrite(button["buttons"])


def rewrite_buttons(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """``html-page-context`` handler, run after sphinx-book-theme built its buttons (priority 501)."""
    _rewrite(context.get("header_buttons", []))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", rewrite_buttons, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

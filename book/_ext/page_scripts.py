"""Each inline script once per page.

Sphinx 7.4 writes an inline script (``app.add_js_file(None, body=...)``) twice when an extension adds it after the
HTML builder started: once as given (file name ``None``) and once more from the registry in ``prepare_writing``
(file name ``''``), and the two do not compare equal (fixed upstream in Sphinx 8.2, sphinx-doc/sphinx#13402;
jupyter-book 1 keeps Sphinx 7). sphinx-thebe adds ``const THEBE_JS_URL = ...`` that way, so every page threw
"Identifier 'THEBE_JS_URL' has already been declared"; sphinx-togglebutton's selector was doubled too.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def script_key(script: Any) -> tuple:
    """What makes two script entries the same tag: file name (``None`` and ``''`` alike) and attributes."""
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {})
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def drop_repeated_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """``html-page-context`` handler, late (priority 900), so that scripts added for this page are seen too."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

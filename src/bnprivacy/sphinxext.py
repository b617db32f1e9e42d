"""A Sphinx extension for the book's HTML: fixes found by `make check-html` in a real browser.

With Jupyter Book 1.0 on Sphinx 7.4, the inline scripts of sphinx-thebe and sphinx-togglebutton are
added to every page twice; the second ``const THEBE_JS_URL`` is a JavaScript SyntaxError on every
page. We drop repeated scripts from each page's context before it is rendered.

Sphinx never wraps inline code (``span.pre`` is ``white-space: nowrap``), so one long literal in a
table cell (a parameter's default such as ``"noise:10,mislabeled:10,ood:10,atypical:10"``) widened
the rerun page's tables past the content column. :data:`BOOK_CSS` lets literals in tables wrap.
"""
from __future__ import annotations

from pathlib import Path

CSS_NAME = "bnprivacy.css"
BOOK_CSS = """/* bnprivacy: a long literal in a table cell wraps instead of widening the table past the column. */
table code.literal, table code.literal span.pre { white-space: normal; overflow-wrap: anywhere; }
"""


def _script_key(script) -> tuple:
    # The two copies differ only in filename None vs "" (added before and after the builder
    # existed), which is why Sphinx's own de-duplication misses them.
    filename = getattr(script, "filename", script) or ""
    attributes = tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items()))
    return str(filename), attributes


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep the first of every identical script (same file or same inline body) on a page."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def write_book_css(app, exception) -> None:
    """Write :data:`BOOK_CSS` into the built site's ``_static`` (the pages link it)."""
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        (static / CSS_NAME).write_text(BOOK_CSS)


def setup(app):
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    app.add_css_file(CSS_NAME)
    app.connect("build-finished", write_book_css)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

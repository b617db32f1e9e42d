"""A Sphinx extension for the book's HTML: fixes found by `make check-html` in a real browser.

With Jupyter Book 1.0 on Sphinx 7.4, the inline scripts of sphinx-thebe and sphinx-togglebutton are
added to every page twice; the second ``const THEBE_JS_URL`` is a JavaScript SyntaxError on every
page. We drop repeated scripts from each page's context before it is rendered.
"""
from __future__ import annotations


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


def setup(app):
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

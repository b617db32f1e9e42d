"""The browser check of the built book: link resolution offline, and a real Chromium run when present."""

from pathlib import Path

import pytest

from bnprivacy import htmlcheck
from bnprivacy.sphinxext import drop_repeated_scripts

BASE = "http://127.0.0.1:8000/"

# A 1x1 PNG, so that the good page has a real image.
PIXEL = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                      "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def make_site(root: Path) -> Path:
    (root / "book").mkdir(parents=True)
    (root / "_static").mkdir()
    (root / "_static" / "pixel.png").write_bytes(PIXEL)
    head = '<head><link rel="icon" href="data:,"></head>'
    (root / "index.html").write_text(
        f'<html>{head}<body><h1 id="top">Book</h1><a href="book/good.html#part">good</a>'
        '<a href="https://example.org/">external</a><a href="#top">top</a></body></html>')
    (root / "book" / "good.html").write_text(
        f'<html>{head}<body><section id="part"><figure><img src="../_static/pixel.png"></figure>'
        '<a href="../index.html">home</a></section></body></html>')
    (root / "book" / "bad.html").write_text(
        f'<html>{head}<body><img src="../_static/missing.png"><figure><p>no image</p></figure>'
        '<a href="good.html#nowhere">a</a><a href="gone.html">b</a>'
        '<script>undefinedFunction();</script></body></html>')
    return root


def test_internal_links_are_resolved_against_files_and_anchors(tmp_path):
    site = make_site(tmp_path)
    page = BASE + "book/bad.html"
    assert htmlcheck.broken_internal_link(site, BASE, page, "good.html") is None
    assert htmlcheck.broken_internal_link(site, BASE, page, "good.html#part") is None
    assert htmlcheck.broken_internal_link(site, BASE, page, "https://example.org/x") is None
    assert "no anchor #nowhere" in htmlcheck.broken_internal_link(site, BASE, page, "good.html#nowhere")
    assert "book/gone.html does not exist" in htmlcheck.broken_internal_link(site, BASE, page, "gone.html")
    assert htmlcheck.broken_internal_link(site, BASE, BASE + "index.html", "book/") is not None


def test_site_pages_skip_sphinx_generated_pages(tmp_path):
    site = make_site(tmp_path)
    (site / "genindex.html").write_text("<html></html>")
    (site / "_static" / "x.html").write_text("<html></html>")
    assert htmlcheck.site_pages(site) == ["book/bad.html", "book/good.html", "index.html"]


def test_a_missing_browser_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("BNPRIVACY_CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(FileNotFoundError, match="apt-get install chromium chromium-driver"):
        htmlcheck.find_executable("BNPRIVACY_CHROMIUM", htmlcheck.CHROMIUM_CANDIDATES)


def test_an_unbuilt_site_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `make book` first"):
        htmlcheck.check_site(tmp_path)


def test_repeated_scripts_are_dropped_once_per_page():
    class Script(str):
        def __new__(cls, name, **attributes):
            script = super().__new__(cls, name)
            script.filename, script.attributes = name, attributes
            return script

    body = "const THEBE_JS_URL = 1"
    inline_again = Script("", body=body)
    inline_again.filename = None  # how Sphinx 7.4 holds the copy added after the builder existed
    context = {"script_files": [Script("a.js"), Script("", body=body), Script("a.js"), inline_again,
                                Script("", body="other")]}
    drop_repeated_scripts(None, "page", "page.html", context, None)
    assert [(s.filename, s.attributes.get("body")) for s in context["script_files"]] == \
        [("a.js", None), ("", body), ("", "other")]



@pytest.mark.skipif(not htmlcheck.browser_available(), reason="needs Debian's chromium and chromium-driver")
def test_chromium_finds_every_kind_of_problem_and_passes_a_clean_site(tmp_path):
    site = make_site(tmp_path / "site")
    with pytest.raises(htmlcheck.HtmlCheckFailed) as failure:
        htmlcheck.check_site(site, tmp_path / "shots", progress=False)
    message = str(failure.value)
    assert message.startswith("1 of 3 pages have problems")
    for problem in ("console error", "undefinedFunction", "image not loaded: ../_static/missing.png",
                    "file not found on the site: /_static/missing.png", "figure without an image",
                    "no anchor #nowhere", "gone.html does not exist"):
        assert problem in message, problem
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == ["book_bad.png", "book_good.png", "index.png"]
    (site / "book" / "bad.html").unlink()
    reports = htmlcheck.check_site(site, tmp_path / "shots", progress=False)
    assert [r.page for r in reports] == ["book/good.html", "index.html"]
    assert all(r.screenshot.stat().st_size > 0 for r in reports)

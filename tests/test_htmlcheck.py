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


def test_the_screenshot_folder_keeps_every_file_the_check_did_not_write(tmp_path):
    # Issue 38: `check-html --screenshots DIR` deleted DIR with everything in it before checking.
    site = make_site(tmp_path / "site")
    mine = tmp_path / "mine"
    (mine / "chapter").mkdir(parents=True)
    (mine / "thesis.tex").write_text("two years of work")
    (mine / "chapter" / "notes.md").write_text("notes")
    (mine / "book_good-3.txt").write_text("not a screenshot name")
    htmlcheck.prepare_screenshots(mine, htmlcheck.site_pages(site))
    assert (mine / "thesis.tex").read_text() == "two years of work"
    assert (mine / "chapter" / "notes.md").is_file() and (mine / "book_good-3.txt").is_file()


def test_a_check_removes_only_the_screenshots_its_manifest_lists(tmp_path):
    site, shots = make_site(tmp_path / "site"), tmp_path / "shots"
    pages = htmlcheck.site_pages(site)
    htmlcheck.prepare_screenshots(shots, pages)
    for name in ("index.png", "book_good-1.png", "book_good-2.png"):
        (shots / name).write_bytes(PIXEL)
    htmlcheck._write_manifest(shots, ["index.png", "book_good-1.png", "book_good-2.png", "../escape.png"])
    (tmp_path / "escape.png").write_bytes(PIXEL)  # a manifest naming a path outside is never followed
    (shots / "holiday.png").write_bytes(PIXEL)
    htmlcheck.prepare_screenshots(shots, pages)
    assert sorted(p.name for p in shots.glob("*.png")) == ["holiday.png"]
    assert (tmp_path / "escape.png").is_file()


@pytest.mark.parametrize("manifest", ["not json", '{"files": "index.png"}', "[" * 100000, '{"other": 1}'])
def test_a_screenshot_the_check_did_not_write_is_refused_before_any_page_is_visited(tmp_path, manifest):
    site, shots = make_site(tmp_path / "site"), tmp_path / "shots"
    shots.mkdir()
    (shots / "index.png").write_bytes(b"the user's own picture")
    (shots / htmlcheck.SCREENSHOT_MANIFEST).write_text(manifest)  # damaged or foreign: owns nothing
    with pytest.raises(FileExistsError, match=r"holds index.png.*never deletes files it did not create"):
        htmlcheck.check_site(site, shots, progress=False)  # refused before the browser is even looked for
    assert (shots / "index.png").read_bytes() == b"the user's own picture"


def test_a_screenshot_folder_that_is_a_file_is_refused(tmp_path):
    site = make_site(tmp_path / "site")
    (tmp_path / "shots").write_text("a file")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        htmlcheck.check_site(site, tmp_path / "shots", progress=False)
    assert (tmp_path / "shots").read_text() == "a file"


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



def check_failure(site, shots) -> str:
    """The message with which the browser check fails on ``site`` (the test fails if it passes)."""
    with pytest.raises(htmlcheck.HtmlCheckFailed) as failure:
        htmlcheck.check_site(site, shots, progress=False)
    return str(failure.value)


@pytest.mark.skipif(not htmlcheck.browser_available(), reason="needs Debian's chromium and chromium-driver")
def test_chromium_finds_every_kind_of_problem_and_passes_a_clean_site(tmp_path):
    site = make_site(tmp_path / "site")
    message = check_failure(site, tmp_path / "shots")
    assert message.startswith("1 of 3 pages have problems")
    for problem in ("console error", "undefinedFunction", "image not loaded: ../_static/missing.png",
                    "file not found on the site: /_static/missing.png", "figure without an image",
                    "no anchor #nowhere", "gone.html does not exist"):
        assert problem in message, problem
    assert sorted(p.name for p in (tmp_path / "shots").glob("*.png")) == ["book_bad.png", "book_good.png", "index.png"]
    (tmp_path / "shots" / "thesis.tex").write_text("a user's file")
    (site / "book" / "bad.html").unlink()
    reports = htmlcheck.check_site(site, tmp_path / "shots", progress=False)
    assert [r.page for r in reports] == ["book/good.html", "index.html"]
    assert all(r.screenshot.stat().st_size > 0 for r in reports)
    # The earlier check's screenshot of the removed page was its own, so it goes; the user's file stays.
    assert sorted(p.name for p in (tmp_path / "shots").iterdir() if not p.name.startswith(".")) == \
        ["book_good.png", "index.png", "thesis.tex"]


def test_numbers_a_reader_should_not_meet_are_found_in_output_text():
    assert htmlcheck.number_problems("AUC 0.5933, TPR 1.2%, torch 2.14.1, 1e-05") == []
    found = htmlcheck.number_problems("AUC 0.593283 and a nan cell")
    assert [p.split(":")[0] for p in found] == ["an output cell prints nan",
                                                "an output cell prints a number with more than 4 decimals"]
    assert htmlcheck.number_problems("NaN") and not htmlcheck.number_problems("nanoseconds, banana")


def png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def make_layout_site(root: Path) -> Path:
    """A page with each layout problem in a 676 px column, a clean one, and a page 20,000 px tall."""
    (root / "_static").mkdir(parents=True)
    (root / "_static" / "wide.png").write_bytes(png(1500, 300))
    (root / "_static" / "small.png").write_bytes(png(600, 200))
    head = '<head><link rel="icon" href="data:,"></head>'

    def page(body):
        return f'<html>{head}<body><article class="bd-article" style="width:676px">{body}</article></body></html>'

    (root / "index.html").write_text(page(
        '<table><tr><td>fits</td></tr></table><img src="_static/small.png">'
        '<div class="cell_output">AUC 0.593 [0.501, 0.688]</div>'
        '<div style="height:20000px">tall</div>'))
    (root / "crowded.html").write_text(page(
        '<section id="results"><table style="width:1000px"><tr><td>wide</td></tr></table></section>'
        '<table><tr><td style="max-width:40px;overflow:hidden;white-space:nowrap">BN higher than the reference</td>'
        '</tr></table>'
        '<img src="_static/wide.png" style="width:660px">'
        '<div class="cell_output">predicted slope 0.000000 and nan</div>'))
    return root


@pytest.mark.skipif(not htmlcheck.browser_available(), reason="needs Debian's chromium and chromium-driver")
def test_chromium_finds_wide_tables_clipped_cells_squeezed_figures_and_raw_numbers(tmp_path):
    site = make_layout_site(tmp_path / "site")
    message = check_failure(site, tmp_path / "shots")
    assert message.startswith("1 of 2 pages have problems:\ncrowded.html:")
    for problem in ("table 1000 px wide in a 676 px column (results)",
                    "table cell clips its text: 'BN higher than the reference'",
                    "figure _static/wide.png shown at 660 px, less than half its 1500 px",
                    "an output cell prints nan", "an output cell prints a number with more than 4 decimals"):
        assert problem in message, problem
    # the tall page is captured whole, in tiles
    tiles = sorted(p.name for p in (tmp_path / "shots").iterdir() if p.name.startswith("index"))
    assert tiles == ["index-1.png", "index-2.png", "index-3.png"]
    from PIL import Image
    sizes = [Image.open(tmp_path / "shots" / name).size for name in tiles]
    assert all(width == htmlcheck.WINDOW_WIDTH for width, _ in sizes) and sum(h for _, h in sizes) >= 20000


def test_the_verdict_prints_numbers_a_reader_can_read():
    from bnprivacy.analysis.verdict import _number

    printed = [_number(v) for v in (-0.000656, -0.00459, 0.0437, 98.0, 5e-6, 0.0, float("nan"))]
    assert printed == ["-0.0007", "-0.0046", "0.0437", "98", "5.00e-06", "0", "n/a"]
    assert _number(0.0064, rate=True) == "0.64%"
    assert not any(htmlcheck.number_problems(text) for text in printed)

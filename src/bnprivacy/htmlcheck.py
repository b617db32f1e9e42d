"""Check the built HTML book in a real browser: headless Chromium driven by Selenium.

:func:`check_site` serves ``_build/html`` on localhost, visits every page and reports

- a JavaScript console error (Chromium's SEVERE log entries),
- a request for a file of the site that does not exist (broken image, script, stylesheet),
- an image that the browser could not decode, or a figure that holds no image,
- an internal link to a missing page or a missing ``#anchor``,
- an executed cell whose output is a traceback,
- a table wider than the content column, or a table cell that clips its text,
- a figure shown at less than half its natural width (its labels unreadable),
- an output cell that prints ``nan`` or a number with more than 4 decimals (numbers are for people),

and saves screenshots that cover every page whole (in tiles of at most ``TILE_HEIGHT`` pixels) into a
folder it shares with whatever else is there: it lists the files it wrote in ``SCREENSHOT_MANIFEST``
and, on the next check, removes those and nothing else (:func:`prepare_screenshots`).
The window is 1280 px wide, as a reader's laptop. External links are not followed (the book is
checked offline).
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

WINDOW_WIDTH = 1280
TILE_HEIGHT = 8000  # Chromium captures at most about 16k px at once; longer pages come in tiles
SMALLEST_FIGURE_SCALE = 0.5
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
INSTALL_HINT = ("install Debian's packages with `apt-get install chromium chromium-driver` (or set "
                "BNPRIVACY_CHROMIUM and BNPRIVACY_CHROMEDRIVER to the browser and its driver)")
# Flags for a root, sandbox-less, offline machine: without the background-networking ones Chromium
# keeps trying to reach Google's hosts and logs those failures as console errors.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-extensions",
                  f"--window-size={WINDOW_WIDTH},900")
# The list of the screenshots a check wrote into its folder: the only files a later check removes.
SCREENSHOT_MANIFEST = ".bnprivacy-check-html.json"
MANIFEST_MAX_BYTES = 1 << 20
# Pages that Sphinx generates for every site and that carry no book content of ours.
SKIPPED_PAGES = {"genindex.html", "search.html", "py-modindex.html"}


class HtmlCheckFailed(RuntimeError):
    """Some pages of the site have problems; the message lists them page by page."""


@dataclass
class PageReport:
    """What the browser found on one page."""
    page: str
    problems: list[str] = field(default_factory=list)
    screenshot: Path | None = None  # the first (top) of ``screenshots``
    screenshots: list[Path] = field(default_factory=list)


def find_executable(env: str, candidates: tuple[str, ...]) -> str:
    """The browser or driver: ``$env`` if set, else the first candidate that exists."""
    chosen = os.environ.get(env) or next((c for c in candidates if Path(c).is_file()), None)
    if not chosen or not Path(chosen).is_file():
        raise FileNotFoundError(f"no {env.split('_')[-1].lower()} found at {chosen or candidates}; {INSTALL_HINT}")
    return chosen


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site, silently, remembering every request it could not satisfy."""
    missing: list[str]

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def send_error(self, code, message=None, explain=None):
        if code == 404:
            self.server.missing.append(unquote(urlparse(self.path).path))
        super().send_error(code, message, explain)


def serve(folder: Path) -> http.server.ThreadingHTTPServer:
    """Serve ``folder`` on a free localhost port in a daemon thread; ``server.missing`` lists 404s."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.missing = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset[str]:
    """Every ``id``/``name`` in an HTML file: the anchors a ``#fragment`` link may point at."""
    parser = _Anchors()
    parser.feed(path.read_text(errors="replace"))
    return frozenset(parser.ids)


def broken_internal_link(site: Path, base_url: str, page_url: str, href: str) -> str | None:
    """Why ``href`` (as found on ``page_url``) is broken, or None when it is fine or external."""
    url = urljoin(page_url, href)
    if not url.startswith(base_url):
        return None
    address, fragment = urldefrag(url)
    relative = unquote(urlparse(address).path).lstrip("/")
    target = site / relative
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"broken link {href!r}: {relative or 'index.html'} does not exist"
    if fragment and target.suffix == ".html" and unquote(fragment) not in anchors_of(target):
        return f"broken link {href!r}: no anchor #{fragment} in {target.relative_to(site)}"
    return None


# Runs in the page: images that failed to load, figures without an image, links, tracebacks.
PAGE_PROBE = """
const images = Array.from(document.images);
images.forEach(img => { img.loading = 'eager'; });
const broken = images.filter(img => img.getAttribute('src') && img.complete && img.naturalWidth === 0)
                     .map(img => img.getAttribute('src'));
const emptyFigures = Array.from(document.querySelectorAll('figure, div.figure'))
    .filter(f => !f.querySelector('img, svg, canvas, video, object'))
    .map(f => (f.id || (f.querySelector('[id]') || {}).id || f.textContent.trim().slice(0, 60)));
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'));
const tracebacks = document.querySelectorAll('.output.traceback, .output_error, div.cell_output .traceback').length;
const column = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
const columnWidth = column.getBoundingClientRect().width;
const visible = el => el.getBoundingClientRect().width > 0;
const nameOf = el => {
  const holder = el.closest('figure, div.cell, section');
  const caption = el.querySelector && el.querySelector('caption');
  return (caption && caption.textContent.trim().slice(0, 50)) || (holder && holder.id) ||
         (el.closest('section') || {}).id || '';
};
const wideTables = Array.from(column.querySelectorAll('table')).filter(visible)
    .filter(t => t.getBoundingClientRect().width > columnWidth + 1)
    .map(t => ({width: Math.round(t.getBoundingClientRect().width), where: nameOf(t)}));
const clippedCells = Array.from(column.querySelectorAll('td, th')).filter(visible)
    .filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent.trim().slice(0, 40));
const smallFigures = Array.from(column.querySelectorAll('img')).filter(visible)
    .filter(img => img.naturalWidth > 0 && img.getBoundingClientRect().width < __SCALE__ * img.naturalWidth)
    .map(img => ({src: img.getAttribute('src'), natural: img.naturalWidth,
                  shown: Math.round(img.getBoundingClientRect().width)}));
const outputs = Array.from(document.querySelectorAll('div.cell_output')).map(o => o.innerText);
return {broken, emptyFigures, links, tracebacks, height: document.documentElement.scrollHeight,
        columnWidth: Math.round(columnWidth), wideTables, clippedCells, smallFigures, outputs};
""".replace("__SCALE__", str(SMALLEST_FIGURE_SCALE))

# A printed "nan" and a number with 5 or more decimals: raw floats a reader should not meet.
NAN_PATTERN = re.compile(r"(?<![\w.])(nan|NaN)(?![\w])")
LONG_FLOAT_PATTERN = re.compile(r"(?<![\w.])[-+]?\d+\.\d{5,}(?![\w])")


def number_problems(output: str) -> list[str]:
    """What an output cell's text prints that a reader should not meet: ``nan``, or a number with
    more than 4 decimals (each with a little context)."""
    problems = []
    for pattern, what in ((NAN_PATTERN, "prints nan"), (LONG_FLOAT_PATTERN, "prints a number with more than 4 decimals")):
        match = pattern.search(output)
        if match:
            context = " ".join(output[max(0, match.start() - 30): match.end() + 10].split())
            problems.append(f"an output cell {what}: ...{context}...")
    return problems


def layout_problems(found: dict) -> list[str]:
    """The page's tables, figures and output numbers as a reader at 1280 px would meet them."""
    column = found["columnWidth"]
    problems = [f"table {t['width']} px wide in a {column} px column{' (' + t['where'] + ')' if t['where'] else ''}"
                for t in found["wideTables"]]
    problems += [f"table cell clips its text: {text!r}" for text in dict.fromkeys(found["clippedCells"])]
    problems += [f"figure {f['src']} shown at {f['shown']} px, less than half its {f['natural']} px"
                 for f in found["smallFigures"]]
    for output in found["outputs"]:
        problems += number_problems(output)
    return list(dict.fromkeys(problems))



def site_pages(site: Path) -> list[str]:
    """The site's HTML pages, relative to its root, without Sphinx's generated index pages."""
    pages = []
    for path in sorted(site.rglob("*.html")):
        relative = path.relative_to(site).as_posix()
        if relative.startswith(("_static/", "_sources/", "_images/")) or relative in SKIPPED_PAGES:
            continue
        pages.append(relative)
    return pages


def browser_available() -> bool:
    """Whether Chromium and its driver are installed (the browser check can run)."""
    try:
        find_executable("BNPRIVACY_CHROMIUM", CHROMIUM_CANDIDATES)
        find_executable("BNPRIVACY_CHROMEDRIVER", DRIVER_CANDIDATES)
    except FileNotFoundError:
        return False
    return True


def make_driver(profile_dir: str, width: int = WINDOW_WIDTH, height: int = 900):
    """Headless Chromium under Selenium with a fresh profile in ``profile_dir`` and the browser's
    console log switched on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find_executable("BNPRIVACY_CHROMIUM", CHROMIUM_CANDIDATES)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=find_executable("BNPRIVACY_CHROMEDRIVER", DRIVER_CANDIDATES))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_window_size(width, height)
    driver.set_page_load_timeout(60)
    return driver


def check_page(driver, server, site: Path, base_url: str, page: str, screenshots: Path | None) -> PageReport:
    """Visit one page and report its problems; save its screenshot into ``screenshots``."""
    report, url = PageReport(page), urljoin(base_url, page)
    server.missing.clear()
    driver.get(url)
    url = driver.current_url  # index.html redirects: links resolve against the page shown
    found = driver.execute_script(PAGE_PROBE)
    for entry in driver.get_log("browser"):
        if entry.get("level") == "SEVERE":
            report.problems.append(f"console error: {entry.get('message', '')[:300]}")
    report.problems += [f"image not loaded: {src}" for src in found["broken"]]
    report.problems += [f"figure without an image: {name}" for name in found["emptyFigures"]]
    report.problems += [f"file not found on the site: {path}" for path in sorted(set(server.missing))]
    if found["tracebacks"]:
        report.problems.append(f"{found['tracebacks']} cell output(s) show a traceback")
    report.problems += layout_problems(found)
    for href in sorted(set(found["links"])):
        problem = broken_internal_link(site, base_url, url, href)
        if problem:
            report.problems.append(problem)
    if screenshots is not None:
        report.screenshots = save_whole_page(driver, screenshots, screenshot_stem(page), int(found["height"]))
        report.screenshot = report.screenshots[0]
    return report


def screenshot_stem(page: str) -> str:
    """The name a page's screenshots start with: ``book/01_training.html`` -> ``book_01_training``."""
    return re.sub(r"[^\w.-]+", "_", page.removesuffix(".html"))


def _screenshot_of(name: str, stems: set[str]) -> bool:
    """Whether ``name`` is a screenshot this check may write: ``STEM.png`` or ``STEM-K.png``."""
    match = re.fullmatch(r"(.+?)(-\d+)?\.png", name)
    return bool(match) and (match.group(1) in stems or name.removesuffix(".png") in stems)


def _own_screenshots(folder: Path) -> list[str]:
    """The files an earlier check listed in ``folder``'s manifest; none where it is missing or not
    one we wrote (a hand-made or damaged manifest never makes a check delete a file)."""
    manifest = folder / SCREENSHOT_MANIFEST
    if not manifest.is_file() or manifest.is_symlink() or manifest.stat().st_size > MANIFEST_MAX_BYTES:
        return []
    try:
        names = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError):
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n.endswith(".png") and Path(n).name == n
            and not n.startswith(".")]


def _write_manifest(folder: Path, names: list[str]) -> None:
    """List ``names`` as this check's screenshots, written whole (renamed into place)."""
    tmp = folder / f"{SCREENSHOT_MANIFEST}.tmp"
    tmp.write_text(json.dumps({"written_by": "python -m bnprivacy check-html", "files": sorted(set(names))}))
    os.replace(tmp, folder / SCREENSHOT_MANIFEST)


def prepare_screenshots(folder: Path, pages: list[str]) -> None:
    """Make ``folder`` ready for the screenshots of ``pages`` without touching anything a check did
    not write: remove the screenshots an earlier check listed in its manifest (regular files only),
    and refuse, before any page is visited, a file of a screenshot's name that is not one of them."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--screenshots {folder} is a file, not a folder; pass a folder (default _build/check-html)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in _own_screenshots(folder):
        path = folder / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    stems = {screenshot_stem(page) for page in pages}
    in_the_way = sorted(p.name for p in folder.iterdir() if _screenshot_of(p.name, stems))
    if in_the_way:
        shown = ", ".join(in_the_way[:5]) + (f" and {len(in_the_way) - 5} more" if len(in_the_way) > 5 else "")
        raise FileExistsError(
            f"{folder} holds {shown}, which check-html would overwrite but did not write (they are not in its "
            f"{SCREENSHOT_MANIFEST}); check-html never deletes files it did not create: pass --screenshots an "
            "empty or new folder, or move those files away yourself")
    _write_manifest(folder, [])


def save_whole_page(driver, folder: Path, name: str, height: int) -> list[Path]:
    """Screenshots of the whole page, top to bottom, in tiles of at most :data:`TILE_HEIGHT` px
    (the window grows to one tile and scrolls; the last tile ends at the page's bottom and may
    overlap the one before): ``NAME.png`` for a page that fits one tile, else ``NAME-1.png``, ..."""
    height = max(height, 1)
    tile = min(max(height, 900), TILE_HEIGHT)
    tops = list(range(0, height, TILE_HEIGHT))
    driver.set_window_size(WINDOW_WIDTH, tile)
    paths = []
    try:
        for number, top in enumerate(tops, 1):
            driver.execute_script("window.scrollTo(0, arguments[0]);", top)
            path = folder / (f"{name}.png" if len(tops) == 1 else f"{name}-{number}.png")
            driver.save_screenshot(str(path))
            paths.append(path)
    finally:
        driver.execute_script("window.scrollTo(0, 0);")
        driver.set_window_size(WINDOW_WIDTH, 900)
    return paths


def check_site(site: Path, screenshots: Path | None = None, *, progress: bool = True) -> list[PageReport]:
    """Check every page of the built site ``site``; raise :class:`HtmlCheckFailed` listing problems.
    Screenshots go into ``screenshots`` (:func:`prepare_screenshots`: nothing else there is touched)."""
    site = Path(site).resolve()
    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"no built book in {site} (index.html missing); run `make book` first")
    pages = site_pages(site)
    if screenshots is not None:
        prepare_screenshots(screenshots, pages)
    anchors_of.cache_clear()
    server = serve(site)
    base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    profile_dir = tempfile.mkdtemp(prefix="bnprivacy-chromium-")
    driver = make_driver(profile_dir)
    try:
        reports = []
        for page in pages:
            reports.append(check_page(driver, server, site, base_url, page, screenshots))
            if screenshots is not None:  # listed as they come: an interrupted check still owns its files
                _write_manifest(screenshots, [p.name for r in reports for p in r.screenshots])
            if progress:
                state = "ok" if not reports[-1].problems else f"{len(reports[-1].problems)} problem(s)"
                print(f"checked {page}: {state}", flush=True)
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(profile_dir, ignore_errors=True)
    failing = [r for r in reports if r.problems]
    if failing:
        lines = [f"{r.page}:\n" + "\n".join(f"  - {p}" for p in r.problems) for r in failing]
        raise HtmlCheckFailed(f"{len(failing)} of {len(reports)} pages have problems:\n" + "\n".join(lines))
    return reports

"""Run the book's chapters through papermill and build the HTML with Jupyter Book.

Chapters are MyST-markdown notebooks (jupytext) listed in ``_toc.yml``. For each one:
jupytext reads it, papermill executes it with the profile's parameters from ``book/profiles.yml``
(plus any overrides) and writes the executed notebook into the staging folder
``_build/stage/`` beside a copy of ``_config.yml``, ``_toc.yml`` and the plain pages; Jupyter Book
then renders the staged, already executed notebooks into ``_build/html`` without executing them
again. This is the only module that knows the book exists.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .progress import relayed
from .values import as_plain, check_literal, parse_value, read_yaml

BUILD = Path("_build")
STAGE = BUILD / "stage"
PROFILES_FILE = Path("book") / "profiles.yml"
KERNEL = "python3"


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the message names the chapter, the cell and the error."""


# A line in a non-notebook page that the build replaces with every chapter's parameter table.
PARAMETER_TABLES = "% bnprivacy: parameter tables"


def find_root(start: Path | None = None) -> Path:
    """The book's root: the nearest folder at or above ``start`` that holds ``_toc.yml``."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file() and (folder / PROFILES_FILE).is_file():
            return folder
    raise FileNotFoundError(
        f"no _toc.yml with {PROFILES_FILE} found at or above {start}; run this from the "
        "bnprivacy repository (the folder with the Makefile)"
    )


def toc_files(root: Path) -> list[str]:
    """Every page of ``_toc.yml`` in reading order, as paths without suffix (e.g. ``book/intro``)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []) or []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return [str(Path(f).with_suffix("")) for f in files]


def is_notebook(path: Path) -> bool:
    """A MyST page is a notebook when its front matter declares a jupytext kernel."""
    text = path.read_text()
    if not text.startswith("---"):
        return False
    front = text.split("---", 2)[1]
    return "jupytext" in front and "kernelspec" in front


def chapter_names(root: Path) -> list[str]:
    """Short names (e.g. ``01_training``) of the pages that are executable notebooks."""
    return [Path(f).name for f in toc_files(root) if is_notebook(root / f"{f}.md")]


def load_profiles(root: Path) -> dict:
    """``book/profiles.yml``, read as data (:func:`values.read_yaml`) and checked against the
    chapters: a map of profile names to maps of chapter names (or ``_all``) to maps of declared
    parameter names to values. Anything else raises ValueError naming the profile and the key."""
    path = root / PROFILES_FILE
    text = path.read_text()
    key = (str(path), text, tuple(_chapter_stamp(root)))
    if key not in _PROFILES:
        _PROFILES.clear()
        _PROFILES[key] = check_profiles(root, read_yaml(text, str(PROFILES_FILE)))
    return _PROFILES[key]


# Checked profiles by the text of profiles.yml and the chapters' files: checking reads every
# chapter's parameters cell, which takes a second, and the parameter tables ask for every profile.
_PROFILES: dict = {}


def _chapter_stamp(root: Path):
    for page in toc_files(root):
        source = root / f"{page}.md"
        if source.is_file():
            stat = source.stat()
            yield page, stat.st_size, stat.st_mtime_ns


def check_profiles(root: Path, profiles) -> dict:
    """``profiles`` (as read from ``book/profiles.yml``) if every profile is a map of chapters (or
    ``_all``) to maps of parameters each chapter declares; else ValueError naming what is wrong."""
    where = str(PROFILES_FILE)
    if profiles is None:
        return {}
    if not isinstance(profiles, dict):
        raise ValueError(f"{where} holds a {_kind(profiles)}; expected a map of profile names to their chapters, "
                         "e.g. 'quick: {01_training: {epochs: 5}}'")
    chapters = chapter_names(root)
    declared = {chapter: set(chapter_parameters(root, chapter)) - {"profile"} for chapter in chapters}
    for profile, entries in profiles.items():
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ValueError(f"{where}: profile {profile!r} holds a {_kind(entries)}; expected a map of chapter "
                             f"names (or _all) to their parameters; chapters: {', '.join(chapters)}")
        for chapter, params in entries.items():
            if chapter != "_all" and chapter not in declared:
                raise ValueError(f"{where}: profile {profile!r} has the key {chapter!r}, which is not a chapter; "
                                 f"allowed keys: _all, {', '.join(chapters)}")
            if params is None:
                continue
            if not isinstance(params, dict):
                raise ValueError(f"{where}: profile {profile!r}, {chapter}: holds a {_kind(params)}; expected a map "
                                 "of parameter names to values, e.g. '{epochs: 5}'")
            allowed = set().union(*declared.values()) if chapter == "_all" else declared[chapter]
            unknown = sorted(set(params) - allowed)
            if unknown:
                owner = "any chapter" if chapter == "_all" else chapter
                raise ValueError(f"{where}: profile {profile!r}, {chapter}: {', '.join(map(str, unknown))} is not a "
                                 f"parameter of {owner}; allowed names: {', '.join(sorted(allowed))}")
    return profiles


def _kind(value) -> str:
    return {list: "list", str: "text", int: "number", float: "number", bool: "boolean"}.get(type(value), type(value).__name__)


def profile_parameters(root: Path, profile: str, chapter: str) -> dict:
    """Parameters of ``chapter`` under ``profile``: the profile's ``_all`` entries, then the chapter's."""
    profiles = load_profiles(root)
    if profile not in profiles:
        raise ValueError(
            f"profile {profile!r} is not in {PROFILES_FILE}; allowed profiles: {sorted(profiles)}"
        )
    entries = profiles[profile] or {}
    # `_all` applies to every chapter that has the parameter (the verdict chapter has no device).
    declared = chapter_parameters(root, chapter)
    params = {k: v for k, v in (entries.get("_all") or {}).items() if k in declared}
    params.update(entries.get(chapter) or {})
    params["profile"] = profile
    return params


def parse_overrides(pairs: list[tuple[str, str]] | None, flag: str = "-p") -> dict:
    """``[("epochs", "5"), ("dataset", "cifar10")]`` -> typed values, read as data by
    :func:`values.parse_value` (5 is an int, ``1e-3`` a float also inside a list, a ``#`` is never
    a silent comment, and no YAML type but text, numbers, booleans, null, lists and maps)."""
    return {key: parse_value(text, f"{flag} {key}") for key, text in pairs or []}


def check_overrides(root: Path, chapters: list[str], overrides: dict) -> None:
    """Refuse an override that no chapter of ``chapters`` declares, and ``profile`` (chosen by
    ``--profile``), before anything runs: papermill would only warn and run the defaults."""
    if "profile" in overrides:
        raise ValueError("-p profile is not allowed: choose the profile with --profile NAME (make: PROFILE=NAME); "
                         f"allowed profiles: {', '.join(sorted(load_profiles(root)))}")
    declared = set().union(*(chapter_parameters(root, c) for c in chapters)) - {"profile"}
    unknown = sorted(set(overrides) - declared)
    if unknown:
        where = chapters[0] if len(chapters) == 1 else "any of the chapters " + ", ".join(chapters)
        raise ValueError(f"-p {', '.join(unknown)}: not a parameter of {where}; allowed names: "
                         f"{', '.join(sorted(declared))} (make params CH=<chapter> lists them with their meaning)")


def book_config(root: Path) -> dict:
    """The Jupyter Book configuration, ``_config.yml``."""
    return yaml.safe_load((root / "_config.yml").read_text()) or {}


def repository_url(root: Path) -> str:
    """The book's git repository (``repository.url`` in ``_config.yml``), or "" when none is set."""
    return str((book_config(root).get("repository") or {}).get("url", "")).rstrip("/")


def add_install_cell(root: Path, notebook) -> None:
    """Put a hidden first cell in ``notebook`` that installs bnprivacy from the book's repository
    when the notebook runs where the package is missing (Colab, Binder, a student's laptop)."""
    import nbformat

    url = repository_url(root)
    if not url:
        return
    source = ("# Outside the book's repository (Colab, Binder): install the bnprivacy package first.\n"
              "import importlib.util\n"
              "if importlib.util.find_spec(\"bnprivacy\") is None:\n"
              f"    %pip install --quiet \"bnprivacy[notebooks] @ git+{url}@main\"")
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["remove-cell", "install-bnprivacy"]})
    notebook.cells.insert(0, cell)


def stage_static(root: Path) -> Path:
    """Copy the config, the TOC and every non-notebook page into the staging folder."""
    stage = root / STAGE
    (stage / "book").mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    for page in toc_files(root):
        source = root / f"{page}.md"
        if not is_notebook(source):
            text = source.read_text()
            if PARAMETER_TABLES in text:
                text = text.replace(PARAMETER_TABLES, parameter_tables(root))
            (stage / f"{page}.md").write_text(text)
    for extra in (root / "book").glob("*"):
        if extra.suffix in (".png", ".svg", ".jpg", ".bib", ".css"):
            shutil.copy2(extra, stage / "book" / extra.name)
    return stage


def execute_chapter(root: Path, chapter: str, profile: str = "quick",
                    overrides: dict | None = None, *, log_output: bool = False) -> Path:
    """Execute one chapter with papermill; return the executed notebook's path.

    Raises :class:`ChapterFailed` naming the chapter, the failing cell and the error; the executed
    notebook with the traceback is kept for inspection.
    """
    import jupytext
    import papermill

    page = chapter_page(root, chapter)
    profile_parameters(root, profile, chapter)  # an unknown profile stops here, naming the allowed ones
    check_overrides(root, [chapter], overrides or {})
    stage = stage_static(root)
    source = root / f"{page}.md"
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    add_install_cell(root, notebook)
    staged_input = root / BUILD / "inputs" / f"{chapter}.ipynb"
    staged_input.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(notebook, staged_input, fmt="ipynb")
    output = stage / f"{page}.ipynb"
    params = profile_parameters(root, profile, chapter)
    params.update(overrides or {})
    params = as_plain(params)
    check_gpu(chapter, profile, params)
    check_literal(params)  # the injected cell assigns these values and runs nothing else
    check_results_writable()
    check_data_writable(params)
    started = time.perf_counter()
    print(f"executing {chapter} ({profile}); its training progress follows", flush=True)
    try:
        with relayed(root / BUILD / "progress" / f"{chapter}.log", f"  {chapter}: "):
            papermill.execute_notebook(
                str(staged_input), str(output), parameters=params, kernel_name=KERNEL,
                cwd=str(root), progress_bar=False, log_output=log_output,
            )
    except papermill.PapermillExecutionError as error:
        raise ChapterFailed(_failure_message(chapter, error, output)) from None
    _collapse_injected_parameters(output)
    print(f"executed {chapter} ({profile}) in {time.perf_counter() - started:.0f} s -> {output}")
    return output


def check_gpu(chapter: str, profile: str, params: dict) -> None:
    """Stop a chapter that is to run on ``device: cuda`` (the ``gpu`` profile) when no CUDA GPU is
    visible, before any kernel starts (``ValueError`` saying what to do)."""
    if params.get("device") != "cuda":
        return
    import torch  # only here: the command line starts without torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"{chapter} under profile {profile!r} runs on device 'cuda', but no CUDA GPU is visible here. Run "
            "it on a machine with an NVIDIA GPU, or pass -p device auto (or cpu) to run it on this CPU anyway "
            "(at this profile's scale that takes days: see BENCHMARKS.md).")


def check_results_writable(folder: Path | None = None) -> None:
    """Raise ValueError in one line when ``folder`` (the results folder by default) cannot be
    created or written, before a chapter runs: otherwise it fails in a later cell, after minutes."""
    from .runs.disk import RESULTS_DIR_ENV, results_dir

    _check_writable(Path(folder or results_dir()), RESULTS_DIR_ENV, "results are stored there")


def check_data_writable(params: dict) -> None:
    """Raise ValueError in one line, before a chapter runs, when its dataset will write into the data
    folder (an image folder's decode cache goes to ``data/cache/``) and that cannot be written."""
    from .config import IMAGEFOLDER_PREFIX
    from .data import DATA_DIR_ENV, data_dir

    if str(params.get("dataset", "")).startswith(IMAGEFOLDER_PREFIX):
        _check_writable(data_dir() / "cache", DATA_DIR_ENV, "the decoded images are cached there")


def _check_writable(folder: Path, variable: str, why: str) -> None:
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write into {folder} ({error.strerror or error}); make it writable, or point "
                         f"{variable} at a folder you can write ({why})") from None


def _collapse_injected_parameters(path: Path) -> None:
    """Show papermill's injected-parameters cell folded in the HTML rather than in full."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
    nbformat.write(notebook, path)


def chapter_page(root: Path, chapter: str) -> str:
    """The TOC entry (``book/NN_name``) of the notebook chapter ``chapter``."""
    pages = {Path(f).name: f for f in toc_files(root) if is_notebook(root / f"{f}.md")}
    if chapter not in pages:
        raise ValueError(f"chapter {chapter!r} is not a notebook in _toc.yml; chapters: {sorted(pages)}")
    return pages[chapter]


def _failure_message(chapter: str, error, output: Path) -> str:
    source = (error.source or "").strip()
    if len(source) > 600:
        source = source[:600] + "\n..."
    return (
        f"chapter {chapter} failed in cell {error.cell_index} (execution count {error.exec_count}): "
        f"{error.ename}: {error.evalue}\n--- failing cell ---\n{source}\n---\n"
        f"The executed notebook with the full traceback is {output}"
    )


def unexecuted_chapters(root: Path) -> list[str]:
    """The chapters that have no executed notebook in the staging folder yet."""
    return [c for c in chapter_names(root) if not (root / STAGE / "book" / f"{c}.ipynb").is_file()]


def build_html(root: Path, *, mark_unexecuted: bool = False) -> Path:
    """Render the staged, executed notebooks with Jupyter Book into ``_build/html``. A chapter not
    executed yet is refused, or, with ``mark_unexecuted`` (``book --only``), rendered as a page
    that says so (:func:`not_executed_page`), removed from the staging folder after the build."""
    stage = stage_static(root)
    missing = unexecuted_chapters(root)
    if missing and not mark_unexecuted:
        raise FileNotFoundError(
            f"chapters {missing} have not been executed yet; run `make book` or "
            f"`python -m bnprivacy chapter {missing[0]}` first"
        )
    placeholders = [not_executed_page(root, chapter) for chapter in missing]
    try:
        _run_jupyter_book(root, stage)
    finally:
        for placeholder in placeholders:  # never taken for an executed chapter by a later build
            placeholder.unlink(missing_ok=True)
    index = root / BUILD / "html" / "index.html"
    _complete_redirect_page(index, book_config(root).get("title", "Book"))
    print(f"HTML book: {index}")
    return index


def not_executed_page(root: Path, chapter: str) -> Path:
    """A staged notebook for ``chapter`` that holds only its title and a note that it was not
    executed in this build, with the command that executes it; its path."""
    import nbformat

    source = (root / f"{chapter_page(root, chapter)}.md").read_text()
    title = next((line for line in source.splitlines() if line.startswith("# ")), f"# {chapter}")
    note = (f"{title}\n\n```{{warning}}\nThis chapter was not executed in this build, so this page shows none of "
            f"its results. Execute it with `python -m bnprivacy chapter {chapter}` (with the same `--profile` "
            "and `-p` values), then rebuild the pages with `make html`.\n```\n")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(note)])
    notebook.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    path = root / STAGE / "book" / f"{chapter}.ipynb"
    nbformat.write(notebook, path)
    return path


def _run_jupyter_book(root: Path, stage: Path) -> None:
    command = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage),
               "--path-output", str(root), "--builder", "html",
               # Warnings are errors: an unknown glue key or a broken reference fails the build.
               "-W", "-n", "--keep-going"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    completed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(
            "jupyter-book build failed:\n" + completed.stdout[-4000:] + completed.stderr[-4000:]
        )


def _complete_redirect_page(index: Path, title: str) -> None:
    """Jupyter Book's root ``index.html`` is a bare redirect; give it a title and the book's icon,
    or browsers ask for a ``/favicon.ico`` the site does not have."""
    text = index.read_text() if index.is_file() else ""
    redirect = re.search(r'url=([^"\s]+)', text)
    if "Refresh" not in text or "<link" in text or not redirect:
        return
    icon = '<link rel="icon" href="_static/favicon.svg" />' if (index.parent / "_static" / "favicon.svg").is_file() else ""
    index.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8" />\n{text.strip()}\n{icon}\n'
        f'<title>{html.escape(title)}</title></head>\n'
        f'<body><a href="{redirect[1]}">Open the book</a></body></html>\n')


def build_book(root: Path, profile: str = "quick", chapters: list[str] | None = None,
               overrides: dict | None = None) -> Path:
    """Execute the chapters (all by default) under ``profile``, then build the HTML. An override
    applies to the chapters that declare it; one that no chapter declares is refused. With
    ``chapters`` given, the pages of the others show their last executed notebook, or, where there
    is none, say that they were not executed (said before the first chapter runs)."""
    only = chapters is not None
    chapters = chapters or chapter_names(root)
    overrides = overrides or {}
    check_overrides(root, chapters, overrides)
    left_out = [c for c in unexecuted_chapters(root) if c not in chapters] if only else []
    if left_out:
        print(f"note: {', '.join(left_out)} will not be executed and have no executed notebook yet; "
              "their pages will say that they were not executed", flush=True)
    for chapter in chapters:
        declared = chapter_parameters(root, chapter)
        params = {**profile_parameters(root, profile, chapter), **{k: v for k, v in overrides.items() if k in declared}}
        check_gpu(chapter, profile, params)  # before the first chapter: a GPU book must not die hours in
    for chapter in chapters:
        declared = chapter_parameters(root, chapter)
        execute_chapter(root, chapter, profile, {k: v for k, v in overrides.items() if k in declared})
    return build_html(root, mark_unexecuted=only)


def parameter_tables(root: Path) -> str:
    """Markdown: per chapter, a table of its parameters with their default (the chapter's value)
    and meaning (the parameters cell's inline comment), then what each profile sets instead, as
    a list (a column per profile made the table three times wider than the page)."""
    profiles = [p for p in load_profiles(root)]
    sections = []
    for chapter in chapter_names(root):
        params = chapter_parameters(root, chapter)
        rows = [["parameter", "default", "meaning"], ["---"] * 3]
        rows += [[f"`{name}`", f"`{spec['default']}`", _escape_cell(spec["help"])] for name, spec in params.items()]
        table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
        sets = []
        for profile in profiles:
            values = profile_parameters(root, profile, chapter)
            changed = [f"`{name}` = `{_yaml_inline(values[name])}`" for name in params
                       if name != "profile" and name in values]
            sets.append(f"- `{profile}`: {', '.join(changed) if changed else 'the defaults'}")
        sections.append(f"### {chapter}\n\n`make chapter CH={chapter} ARGS=\"-p NAME VALUE\"`\n\n{table}\n\n"
                        "The profiles set instead:\n\n" + "\n".join(sets) + "\n")
    return "\n".join(sections)


def _yaml_inline(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def chapter_parameters(root: Path, chapter: str) -> dict:
    """The parameters cell of ``chapter`` as papermill sees it: name -> {default, help, type}."""
    import jupytext
    import papermill

    notebook = jupytext.read(root / f"{chapter_page(root, chapter)}.md")
    path = root / BUILD / "inputs" / f"{chapter}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(notebook, path, fmt="ipynb")
    return papermill.inspect_notebook(str(path))

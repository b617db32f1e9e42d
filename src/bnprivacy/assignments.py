"""Classroom notebooks from the chapters: a teacher version with the solutions, a student version without.

A chapter's exercises are written for sphinx-exercise (the book shows each solution in a dropdown)::

    ```{exercise}
    :label: ex-02-typical
    What to do.
    ```

    ```{solution-start} ex-02-typical
    :class: dropdown
    ```

    Explanation (markdown) ...

    ```{code-cell} ipython3
    ### BEGIN SOLUTION
    code ...
    ### END SOLUTION
    ```

    ```{solution-end}
    ```

Everything between ``solution-start`` and ``solution-end`` is solution. The student notebook keeps
the exercise, replaces the solution's explanation by an answer cell and the code between the
nbgrader markers by ``raise NotImplementedError()``; both versions carry nbgrader cell metadata, so
nbgrader (``generate_assignment``) can take the teacher notebook as its source version. The
notebooks are plain Jupyter: the sphinx-exercise directives become bold headings.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from .book import KERNEL, add_install_cell, chapter_page

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUDENT_CODE = "# YOUR CODE HERE\nraise NotImplementedError()"
STUDENT_ANSWER = "YOUR ANSWER HERE"
# A directive's opening fence (three or more backticks or colons) and its name and argument.
OPENING = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}\s*(?P<arg>.*)$")


class AssignmentError(ValueError):
    """A chapter's exercises are not in the form the classroom notebooks need."""


@dataclass
class Block:
    """A directive in a markdown cell: its name, argument, options and body lines."""
    name: str
    arg: str
    options: dict
    body: list[str]


def split_markdown(source: str, where: str) -> list[str | Block]:
    """A markdown cell as a list of plain lines and directive blocks (exercise, solution-*)."""
    lines, out, i = source.splitlines(), [], 0
    while i < len(lines):
        match = OPENING.match(lines[i].strip())
        if not match or not (match["name"] == "exercise" or match["name"].startswith("solution")):
            out.append(lines[i])
            i += 1
            continue
        fence, block, i = match["fence"], Block(match["name"], match["arg"].strip(), {}, []), i + 1
        while i < len(lines) and lines[i].strip() != fence:
            option = re.match(r"^:(\w[\w-]*):\s*(.*)$", lines[i].strip())
            if option and not block.body:
                block.options[option[1]] = option[2]
            else:
                block.body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssignmentError(f"{where}: the {{{block.name}}} directive opened with {fence} is never closed")
        out.append(block)
        i += 1
    return out


def nbgrader_metadata(grade_id: str, *, solution: bool, grade: bool = False, points: int = 0) -> dict:
    """Cell metadata as nbgrader (schema 3) writes it."""
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def classroom_versions(notebook, chapter: str):
    """``(teacher, student, solutions)`` from a chapter notebook (jupytext-read MyST); ``solutions``
    lists every non-blank line of the solutions (explanations and code), for leak checks.

    Raises :class:`AssignmentError` when a solution is not closed, a solution code cell lacks the
    ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers, or a label is reused.
    """
    import nbformat

    teacher, student = copy.deepcopy(notebook), copy.deepcopy(notebook)
    teacher.cells, student.cells = [], []
    state = {"solution": None, "labels": set(), "lines": []}
    for index, cell in enumerate(notebook.cells):
        where = f"{chapter}, cell {index}"
        if cell.cell_type == "markdown":
            for kind, text, label in _markdown_segments(cell.source, state, where):
                if kind == "plain":
                    teacher.cells.append(nbformat.v4.new_markdown_cell(text))
                    student.cells.append(nbformat.v4.new_markdown_cell(text))
                    continue
                state["lines"].extend(line.strip() for line in text.splitlines() if line.strip())
                meta = nbgrader_metadata(f"{label}-answer", solution=True, grade=True, points=1)
                teacher.cells.append(nbformat.v4.new_markdown_cell(text, metadata={"nbgrader": meta}))
                student.cells.append(nbformat.v4.new_markdown_cell(STUDENT_ANSWER, metadata={"nbgrader": dict(meta)}))
        elif cell.cell_type == "code" and state["solution"]:
            label = state["solution"]
            if BEGIN not in cell.source or END not in cell.source:
                raise AssignmentError(
                    f"{where}: a code cell inside the solution of {label} has no '{BEGIN}' / '{END}' "
                    f"markers; put them around the solution code so the student version can remove it")
            t_cell, s_cell = copy.deepcopy(cell), copy.deepcopy(cell)
            t_cell.metadata["nbgrader"] = nbgrader_metadata(f"{label}-code", solution=True)
            s_cell.metadata["nbgrader"] = nbgrader_metadata(f"{label}-code", solution=True)
            s_cell.source = strip_solution_code(cell.source, where)
            s_cell.outputs, s_cell.execution_count = [], None
            code = cell.source.split(BEGIN, 1)[1].rsplit(END, 1)[0]
            state["lines"].extend(line.strip() for line in code.splitlines() if line.strip())
            teacher.cells.append(t_cell)
            student.cells.append(s_cell)
        else:
            teacher.cells.append(copy.deepcopy(cell))
            student.cells.append(copy.deepcopy(cell))
    if state["solution"]:
        raise AssignmentError(f"{chapter}: the solution of {state['solution']} has no {{solution-end}}")
    return teacher, student, state["lines"]


def strip_solution_code(source: str, where: str) -> str:
    """Replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region by the student stub."""
    pattern = re.compile(rf"^([ \t]*){re.escape(BEGIN)}.*?^[ \t]*{re.escape(END)}[^\n]*$", re.S | re.M)
    stripped, count = pattern.subn(lambda m: "\n".join(m[1] + line for line in STUDENT_CODE.splitlines()), source)
    if count != source.count(BEGIN) or BEGIN in stripped or END in stripped:
        raise AssignmentError(f"{where}: unbalanced '{BEGIN}' / '{END}' markers")
    return stripped


def _markdown_segments(source: str, state: dict, where: str) -> list[tuple[str, str, str]]:
    """A markdown cell as ``(kind, text, label)`` segments: kind "plain" or "solution" (an
    explanation between solution-start and solution-end); tracks whether we are in a solution."""
    segments: list[list] = []

    def add(kind, line, label=""):
        if not segments or segments[-1][0] != kind:
            segments.append([kind, [], label])
        segments[-1][1].append(line)

    for part in split_markdown(source, where):
        if isinstance(part, str):
            add("solution" if state["solution"] else "plain", part, state["solution"] or "")
        elif part.name == "exercise":
            label = part.options.get("label") or part.arg
            if not label:
                raise AssignmentError(f"{where}: an exercise without a :label:; give it one (ex-NN-name)")
            if label in state["labels"]:
                raise AssignmentError(f"{where}: the exercise label {label} is used twice")
            state["labels"].add(label)
            for line in (f"**Exercise {label}.**", "", *part.body):
                add("plain", line)
        elif part.name in ("solution-start", "solution"):
            if state["solution"]:
                raise AssignmentError(f"{where}: a solution starts inside the solution of {state['solution']}")
            label = part.arg or part.options.get("label", "")
            if label not in state["labels"]:
                raise AssignmentError(f"{where}: a solution for {label!r}, which is no exercise above it")
            if part.name == "solution":  # one block: its body is the whole solution
                for line in part.body:
                    add("solution", line, label)
                segments.append(["plain", [], ""])
            else:
                state["solution"] = label
        elif part.name == "solution-end":
            if not state["solution"]:
                raise AssignmentError(f"{where}: a {{solution-end}} without a {{solution-start}}")
            state["solution"] = None
    texts = [(kind, "\n".join(lines).strip(), label) for kind, lines, label in segments]
    return [segment for segment in texts if segment[1]]


def write_assignments(root: Path, chapters: list[str], out: Path) -> dict[str, list[Path]]:
    """Write ``out/teacher/<chapter>.ipynb`` and ``out/student/<chapter>.ipynb`` for ``chapters``."""
    import jupytext
    import nbformat

    written = {"teacher": [], "student": []}
    for chapter in chapters:
        notebook = jupytext.read(root / f"{chapter_page(root, chapter)}.md")
        notebook.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
        notebook.metadata.pop("jupytext", None)
        add_install_cell(root, notebook)
        teacher, student, _ = classroom_versions(notebook, chapter)
        versions = {"teacher": teacher, "student": student}
        for version, nb in versions.items():
            path = out / version / f"{chapter}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.validate(nb)
            nbformat.write(nb, path)
            written[version].append(path)
    return written

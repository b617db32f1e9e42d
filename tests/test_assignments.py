"""Classroom notebooks: the student version keeps the exercises and loses every solution."""

import json
from pathlib import Path

import jupytext
import nbformat
import pytest

from bnprivacy import assignments, book

REPO = Path(__file__).resolve().parents[1]

CHAPTER = '''---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

# A chapter

```{code-cell} ipython3
x = 21
```

## Exercises

```{exercise}
:label: ex-99-double
Double `x`.
```

```{solution-start} ex-99-double
:class: dropdown
```

Multiply by two, the secret word is ostrich.

```{code-cell} ipython3
### BEGIN SOLUTION
answer = 2 * x  # pelican
### END SOLUTION
print(answer)
```

```{solution-end}
```

```{exercise}
:label: ex-99-explain
Explain in words.
```

```{solution} ex-99-explain
:class: dropdown
Because of the flamingo.
```
'''


def read(text):
    return jupytext.reads(text, fmt="md:myst")


def sources(notebook):
    return "\n".join(cell.source for cell in notebook.cells)


def test_student_version_keeps_exercises_and_replaces_solutions():
    teacher, student, lines = assignments.classroom_versions(read(CHAPTER), "99")
    text = sources(student)
    assert "Double `x`." in text and "Explain in words." in text
    for secret in ("ostrich", "pelican", "flamingo"):
        assert secret not in text and secret in sources(teacher)
        assert any(secret in line for line in lines)
    code = [c for c in student.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex-99-double-code"]
    assert code[0].source == "# YOUR CODE HERE\nraise NotImplementedError()\nprint(answer)"
    answers = [c for c in student.cells if c.source == assignments.STUDENT_ANSWER]
    assert len(answers) == 2 and all(c.metadata["nbgrader"]["solution"] for c in answers)
    assert "{solution" not in sources(teacher) and "{exercise" not in sources(teacher)


def test_teacher_version_has_the_nbgrader_source_layout():
    teacher, student, _ = assignments.classroom_versions(read(CHAPTER), "99")
    assert len(teacher.cells) == len(student.cells)
    for t, s in zip(teacher.cells, student.cells):
        assert t.metadata.get("nbgrader") == s.metadata.get("nbgrader")
        if "nbgrader" not in t.metadata:
            assert t.source == s.source
    nbformat.validate(teacher)
    nbformat.validate(student)


@pytest.mark.parametrize("broken, message", [
    (CHAPTER.replace("### BEGIN SOLUTION\n", "").replace("### END SOLUTION\n", ""), "no '### BEGIN SOLUTION'"),
    (CHAPTER.split("```{solution-end}")[0], "has no {solution-end}"),
    (CHAPTER.replace("```{solution-end}\n```\n", ""), "a solution starts inside the solution of ex-99-double"),
    (CHAPTER.replace(":label: ex-99-explain", ":label: ex-99-double"), "used twice"),
    (CHAPTER.replace("```{solution-start} ex-99-double", "```{solution-start} ex-99-nothing"), "no exercise above it"),
    (CHAPTER.replace("### END SOLUTION\n", ""), "no '### BEGIN SOLUTION' / '### END SOLUTION'"),
])
def test_malformed_exercises_are_refused_with_the_cause(broken, message):
    with pytest.raises(assignments.AssignmentError, match=message):
        assignments.classroom_versions(read(broken), "99")


@pytest.mark.parametrize("chapter", book.chapter_names(REPO))
def test_every_chapter_has_exercises_and_no_solution_leaks(chapter):
    notebook = jupytext.read(REPO / f"{book.chapter_page(REPO, chapter)}.md")
    teacher, student, lines = assignments.classroom_versions(notebook, chapter)
    labels = [c for c in teacher.cells if c.metadata.get("nbgrader", {}).get("grade_id", "").endswith("-answer")]
    assert 2 <= len(labels) <= 3, f"{chapter} should end with 2-3 exercises, has {len(labels)}"
    shared = sources(nbformat.v4.new_notebook(cells=[c for c in teacher.cells if "nbgrader" not in c.metadata]))
    student_text = sources(student)
    leaked = [line for line in lines if line in student_text and line not in shared]
    assert not leaked, f"solution text in the student notebook of {chapter}: {leaked}"


def test_write_assignments_writes_valid_notebooks(tmp_path):
    written = assignments.write_assignments(REPO, ["01_training"], tmp_path)
    for version in ("teacher", "student"):
        (path,) = written[version]
        assert path == tmp_path / version / "01_training.ipynb"
        notebook = nbformat.read(path, as_version=4)
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        assert any("parameters" in c.metadata.get("tags", []) for c in notebook.cells)
    student = json.loads((tmp_path / "student" / "01_training.ipynb").read_text())
    assert "first_epoch_reaching" not in json.dumps(student)

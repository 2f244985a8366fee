#!/usr/bin/env python
"""Write the student edition of the course: solutions blanked, outputs stripped.

The exercise convention (shared/STYLE.md):

* an exercise is a code cell tagged ``exercise`` (cell metadata ``tags``);
* its solution sits between a line ``# BEGIN SOLUTION`` and a line ``# END SOLUTION``
  (a cell may hold several such blocks, e.g. two functions to fill in);
* the next code cell is a *check cell*: it asserts against minidiff's reference
  (``assert ...``, ``torch.testing.assert_close(...)`` or a ``check_*(...)`` helper).

The student edition replaces each block, markers included, by two lines indented like the
``BEGIN`` line::

    # YOUR CODE HERE
    raise NotImplementedError("Exercise 2: write your solution here")

so an unsolved exercise stops the notebook right there, either in the exercise cell (top-level
code) or in its check cell (when the blank is inside a function the check then calls).

    python tools/student_edition.py                # every notebooks/*.ipynb -> build/student/
    python tools/student_edition.py 01 03          # only chapters 01 and 03
    python tools/student_edition.py --check        # validate the convention, write nothing

``tests/test_student_edition.py`` tests this script and runs each student edition up to its
first exercise.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

# tools/ is on sys.path whether these scripts run directly or under pytest (pythonpath = tools)
from strip_outputs import select_notebooks, strip_notebook

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "student"

EXERCISE_TAG = "exercise"
MIN_EXERCISES = 3

# A marker is a comment line of its own (words after it are fine, e.g. a note for the
# instructor); code or a string that merely mentions the words is not a marker.
BEGIN_RE = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\b")
END_RE = re.compile(r"^[ \t]*#\s*END SOLUTION\b")

# What makes a cell a check cell. Comment lines are ignored so "# assert later" does not count.
CHECK_RE = re.compile(
    r"\bassert\b"                 # assert statement
    r"|\bassert_\w*\s*\("         # torch.testing.assert_close(...), np.testing.assert_allclose(...)
    r"|\bcheck(?:_\w+)?\s*\("     # check(...), check_q_sample(...), minidiff.checks.check_elbo(...)
)


def is_exercise(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and EXERCISE_TAG in cell.metadata.get("tags", [])


def is_check_cell(cell: nbformat.NotebookNode) -> bool:
    if cell.cell_type != "code" or is_exercise(cell):
        return False
    code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("#"))
    return CHECK_RE.search(code) is not None


def describe(index: int, cell: nbformat.NotebookNode) -> str:
    """'cell 12 (id 3f2a…, "def q_sample(x0, t, …")' — enough to find the cell in Jupyter."""
    first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
    if len(first) > 50:
        first = first[:47] + "..."
    cell_id = cell.get("id")
    return f"cell {index}" + (f" (id {cell_id})" if cell_id else "") + f' "{first}"'


def blank_solutions(source: str, exercise_number: int) -> str:
    """Replace every ``# BEGIN SOLUTION`` … ``# END SOLUTION`` block of ``source``.

    Raises ``ValueError`` (without cell context; callers add it) when there is no block or the
    markers are unbalanced or nested.
    """
    lines = source.splitlines()
    out: list[str] = []
    begin_line: int | None = None  # 1-based line of the open BEGIN marker, if any
    blocks = 0
    for number, line in enumerate(lines, start=1):
        begin, end = BEGIN_RE.match(line), END_RE.match(line)
        if begin:
            if begin_line is not None:
                raise ValueError(
                    f"line {number}: BEGIN SOLUTION inside the block opened at line {begin_line} "
                    "(blocks cannot nest)"
                )
            begin_line = number
            indent = begin.group("indent")
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("Exercise {exercise_number}: write your solution here")')
        elif end:
            if begin_line is None:
                raise ValueError(f"line {number}: END SOLUTION without a BEGIN SOLUTION before it")
            begin_line = None
            blocks += 1
        elif begin_line is None:
            out.append(line)
        # else: a solution line, dropped
    if begin_line is not None:
        raise ValueError(f"line {begin_line}: BEGIN SOLUTION has no END SOLUTION after it")
    if blocks == 0:
        raise ValueError("no '# BEGIN SOLUTION' / '# END SOLUTION' block in an exercise cell")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _check_syntax(source: str) -> None:
    """Raise SyntaxError if ``source`` (IPython magics allowed) is not valid Python."""
    try:  # translate `%time`, `!ls`, ... into Python first; IPython comes with ipykernel
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except ImportError:  # pragma: no cover - IPython is always there in the course env
        pass
    ast.parse(source)


def make_student_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """Return a blanked, output-free copy of ``nb``. ``name`` is used in error messages.

    Raises ``ValueError`` naming the cell for an exercise cell without markers, unbalanced or
    nested markers, markers in an untagged cell (the solution would leak), or a blanked cell
    that is no longer valid Python.
    """
    # from_dict deep-copies: the instructor notebook is untouched. Every output goes,
    # including nbval's reference outputs: students see only what they run.
    student = strip_notebook(nbformat.from_dict(nb), keep_checked=False)
    exercise_number = 0
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        where = f"{name}: {describe(index, cell)}"
        if not is_exercise(cell):
            if any(BEGIN_RE.match(line) or END_RE.match(line) for line in cell.source.splitlines()):
                raise ValueError(
                    f"{where}: has SOLUTION markers but no '{EXERCISE_TAG}' tag, so its solution "
                    "would ship in the student edition; tag the cell"
                )
            continue
        exercise_number += 1
        try:
            cell.source = blank_solutions(cell.source, exercise_number)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        try:
            _check_syntax(cell.source)
        except SyntaxError as err:
            raise ValueError(
                f"{where}: not valid Python once blanked ({err.msg}, line {err.lineno}); "
                "put the markers around whole statements"
            ) from None
    return student


def exercise_problems(nb: nbformat.NotebookNode, min_exercises: int = MIN_EXERCISES) -> list[str]:
    """What breaks the exercise convention in ``nb``; empty when it is followed.

    Wants at least ``min_exercises`` exercise cells, each followed (markdown in between is fine)
    by a check cell: the next code cell, untagged, containing an assert or a ``check*(`` call.
    """
    problems = []
    cells = nb.cells
    exercises = [i for i, cell in enumerate(cells) if is_exercise(cell)]
    if len(exercises) < min_exercises:
        problems.append(f"{len(exercises)} exercise cell(s) tagged '{EXERCISE_TAG}', want >= {min_exercises}")
    for i in exercises:
        following = next((j for j in range(i + 1, len(cells)) if cells[j].cell_type == "code"), None)
        if following is None or not is_check_cell(cells[following]):
            problems.append(
                f"exercise {describe(i, cells[i])} is not followed by a check cell "
                "(next code cell must assert or call a check function)"
            )
    return problems


def check_exercises(nb: nbformat.NotebookNode, name: str = "notebook", min_exercises: int = MIN_EXERCISES) -> None:
    """Raise ``ValueError`` listing every breach of the exercise convention in ``nb``."""
    problems = exercise_problems(nb, min_exercises)
    if problems:
        raise ValueError(f"{name}: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the student edition (solutions blanked).")
    parser.add_argument("notebooks", nargs="*", help="'01', '02_ddpm', or a path (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: build/student)")
    parser.add_argument("--check", action="store_true", help="only validate the exercise convention")
    args = parser.parse_args(argv)

    paths = select_notebooks(args.notebooks)
    if not paths:
        print("no notebooks/*.ipynb yet")
        return 0
    failures = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        try:
            check_exercises(nb, path.stem)
            student = make_student_notebook(nb, path.stem)
        except ValueError as err:
            failures += 1
            print(f"ERROR {err}", file=sys.stderr)
            continue
        n = sum(is_exercise(c) for c in nb.cells)
        if args.check:
            print(f"ok    {path.stem}: {n} exercises")
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / path.name
        nbformat.write(student, target)
        print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} ({n} exercises blanked)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

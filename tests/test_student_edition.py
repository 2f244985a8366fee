"""The student edition: solutions blanked (tools/student_edition.py) and still runnable.

Unit tests build small notebooks with nbformat; the integration test runs every chapter's
student edition up to its first exercise and checks that the exercise stops it there.
"""

from __future__ import annotations


import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from _notebooks import EACH_NOTEBOOK
import student_edition as se
from render_course import run_notebook



def exercise(source: str) -> nbformat.NotebookNode:
    return new_code_cell(source, metadata={"tags": ["exercise"]})


def ran(cell: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Give ``cell`` an execution count and an output, as if it had been run."""
    cell.execution_count = 7
    cell.outputs = [new_output("stream", name="stdout", text="42\n")]
    return cell


def synthetic_notebook() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [
        new_markdown_cell("# Chapter 0: synthetic"),
        ran(new_code_cell("import math")),
        ran(exercise("# BEGIN SOLUTION\nx = 2 + 2\n# END SOLUTION")),
        new_code_cell("assert x == 4"),
        exercise(
            "def area(r):\n"
            "    '''Area of a disc.'''\n"
            "    # BEGIN SOLUTION\n"
            "    a = math.pi * r**2\n"
            "    return a\n"
            "    # END SOLUTION\n"
            "\n"
            "def double(v):\n"
            "\t# BEGIN SOLUTION\n"
            "\treturn 2 * v\n"
            "\t# END SOLUTION"
        ),
        new_markdown_cell("Check it:"),
        new_code_cell("check_area(area)"),
        exercise("y = 1\n# BEGIN SOLUTION\ny += 1\n# END SOLUTION\nprint(y)"),
        new_code_cell("import torch\ntorch.testing.assert_close(torch.tensor(y), torch.tensor(2))"),
    ]
    return nb


# ---------------------------------------------------------------------------------- blanking


def test_markers_replaced_and_indentation_kept():
    student = se.make_student_notebook(synthetic_notebook(), "synthetic")
    first, second, third = (c.source for c in student.cells if se.is_exercise(c))

    assert first == (
        "# YOUR CODE HERE\n"
        'raise NotImplementedError("Exercise 1: write your solution here")'
    )
    assert second == (
        "def area(r):\n"
        "    '''Area of a disc.'''\n"
        "    # YOUR CODE HERE\n"
        '    raise NotImplementedError("Exercise 2: write your solution here")\n'
        "\n"
        "def double(v):\n"
        "\t# YOUR CODE HERE\n"
        '\traise NotImplementedError("Exercise 2: write your solution here")'
    )
    assert third.splitlines()[0] == "y = 1" and third.splitlines()[-1] == "print(y)"
    for source in (first, second, third):
        assert "SOLUTION" not in source and "math.pi" not in source and "2 + 2" not in source


def test_outputs_stripped_and_original_untouched():
    nb = synthetic_notebook()
    student = se.make_student_notebook(nb, "synthetic")
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    # The instructor notebook is not modified in place.
    assert nb.cells[1].outputs and "2 + 2" in nb.cells[2].source
    nbformat.validate(student)


def test_non_exercise_cells_unchanged():
    nb = synthetic_notebook()
    student = se.make_student_notebook(nb, "synthetic")
    for before, after in zip(nb.cells, student.cells):
        if not se.is_exercise(before):
            assert after.source == before.source


@pytest.mark.parametrize(
    "source, message",
    [
        ("# BEGIN SOLUTION\nx = 1", "has no END SOLUTION"),
        ("x = 1\n# END SOLUTION", "without a BEGIN SOLUTION"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n# END SOLUTION", "cannot nest"),
        ("x = 1", "no '# BEGIN SOLUTION'"),
    ],
    ids=["begin-only", "end-only", "nested", "no-markers"],
)
def test_bad_markers_raise_naming_the_cell(source, message):
    nb = synthetic_notebook()
    nb.cells[4] = exercise(source)
    nb.cells[4].id = "bad-cell"
    with pytest.raises(ValueError, match=message) as info:
        se.make_student_notebook(nb, "synthetic")
    assert "synthetic: cell 4 (id bad-cell)" in str(info.value)


def test_markers_in_untagged_cell_raise():
    nb = synthetic_notebook()
    nb.cells[1] = new_code_cell("# BEGIN SOLUTION\nsecret = 1\n# END SOLUTION")
    with pytest.raises(ValueError, match=r"cell 1 .*no 'exercise' tag"):
        se.make_student_notebook(nb, "synthetic")


def test_blank_that_breaks_syntax_raises():
    nb = synthetic_notebook()
    # Markers around a loop header but not its body leave the body indented under nothing.
    nb.cells[2] = exercise("# BEGIN SOLUTION\nfor i in range(3):\n# END SOLUTION\n    x = i")
    with pytest.raises(ValueError, match="not valid Python once blanked"):
        se.make_student_notebook(nb, "synthetic")


def test_ipython_magics_are_fine():
    nb = synthetic_notebook()
    nb.cells[2] = exercise("%%time\n# BEGIN SOLUTION\nx = 4\n# END SOLUTION")
    student = se.make_student_notebook(nb, "synthetic")
    assert student.cells[2].source.startswith("%%time\n# YOUR CODE HERE")


# ------------------------------------------------------------------------ exercise convention


def test_convention_satisfied_by_synthetic_notebook():
    assert se.exercise_problems(synthetic_notebook()) == []


def test_convention_needs_three_exercises():
    nb = synthetic_notebook()
    nb.cells = nb.cells[:4]
    assert any("1 exercise cell(s)" in p for p in se.exercise_problems(nb))
    with pytest.raises(ValueError, match="want >= 3"):
        se.check_exercises(nb, "synthetic")


@pytest.mark.parametrize("follower", ["print(x)", "# assert x == 4\nprint(x)", None])
def test_convention_needs_a_check_cell_after_each_exercise(follower):
    nb = synthetic_notebook()
    if follower is None:
        del nb.cells[3]  # exercise 1 now followed by exercise 2: not a check cell
    else:
        nb.cells[3] = new_code_cell(follower)
    problems = se.exercise_problems(nb)
    assert len(problems) == 1 and "cell 2" in problems[0] and "check cell" in problems[0]


@pytest.mark.parametrize(
    "source",
    ["assert x == 4", "np.testing.assert_allclose(a, b)", "check_q_sample(q_sample)", "checks.check(x)"],
)
def test_check_cell_recognised(source):
    assert se.is_check_cell(new_code_cell(source))


@pytest.mark.parametrize("source", ["print(x)", "load_checkpoint(path)", "# assert x"])
def test_non_check_cell_rejected(source):
    assert not se.is_check_cell(new_code_cell(source))


# -------------------------------------------------------------------------- the real chapters


def first_stop(nb: nbformat.NotebookNode) -> tuple[int, int]:
    """(index of the first exercise cell, index of its check cell)."""
    first = next(i for i, c in enumerate(nb.cells) if se.is_exercise(c))
    check = next(j for j in range(first + 1, len(nb.cells)) if nb.cells[j].cell_type == "code")
    return first, check


@EACH_NOTEBOOK
def test_chapter_follows_exercise_convention(path):
    se.check_exercises(nbformat.read(path, as_version=4), path.stem)


@pytest.mark.slow
@EACH_NOTEBOOK
def test_student_edition_runs_to_first_exercise(path):
    """Cells before the first exercise run; the first exercise then stops the notebook.

    The blank raises NotImplementedError in the exercise cell itself (top-level code) or, when
    it sits inside a function, in the check cell that calls it. Only those cells run: the
    rest of the chapter needs the solutions.
    """
    nb = nbformat.read(path, as_version=4)
    se.check_exercises(nb, path.stem)
    student = se.make_student_notebook(nb, path.stem)
    first, check = first_stop(student)
    student.cells = student.cells[: check + 1]

    # Environment: this process's, i.e. MINIDIFF_QUICK=1, TQDM_DISABLE=1, MPLBACKEND=Agg
    # (tests/conftest.py); kernel: this interpreter; working directory: notebooks/.
    run = run_notebook(student, cwd=path.parent, timeout=600)

    assert not run.ok, (
        f"{path.stem}: the student edition ran through exercise 1 and its check without "
        "NotImplementedError: is the solution still there?"
    )
    assert run.failed_cell in (first, check) and run.ename == "NotImplementedError", (
        f"{path.stem}: student edition failed in cell {run.failed_cell} with {run.message} "
        f"(want NotImplementedError in cell {first} or {check})\n{run.details}"
    )

"""Committed notebooks are clean and well-formed (fix with `python tools/strip_outputs.py`).

Outputs are not committed: diffs stay readable, no machine paths or timings leak into git, and
nbval checks the assertions in the cells rather than stale outputs. `make course` renders
executed copies into build/. The exception: a cell marked `# NBVAL_CHECK_OUTPUT` must store its
(quick-mode, text) output, since nbval compares nothing for a cell that never ran; `make refs`
records it.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from _notebooks import EACH_NOTEBOOK
from strip_outputs import copy_checked_outputs, dirty_reasons, strip_notebook

NAME_RE = re.compile(r"^(?P<number>\d{2})_[a-z0-9]+(?:_[a-z0-9]+)*$")  # NN_slug
TITLE_RE = re.compile(r"^# Chapter (?P<number>\d+)\b")


@EACH_NOTEBOOK
def test_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    reasons = dirty_reasons(nb)
    assert not reasons, (
        f"{path.name}: {'; '.join(reasons)}. "
        f"`make strip NB={path.stem[:2]}` removes outputs; `make refs NB={path.stem[:2]}` records checked ones"
    )


@EACH_NOTEBOOK
def test_notebook_is_valid_and_named(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert NAME_RE.match(path.stem), f"{path.name}: want NN_slug.ipynb (two digits, lower-case slug)"


@EACH_NOTEBOOK
def test_first_cell_is_chapter_title(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells, f"{path.name} is empty"
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{path.name}: cell 1 must be markdown (title, goals, prerequisites)"
    title = next((line for line in first.source.splitlines() if line.strip()), "")
    match = TITLE_RE.match(title)
    assert match, f"{path.name}: cell 1 must start with '# Chapter N: ...', got {title!r}"
    number = NAME_RE.match(path.stem)
    if number:
        assert int(match["number"]) == int(number["number"]), (
            f"{path.name}: title says chapter {match['number']}, file name says {number['number']}"
        )


def test_strip_notebook_removes_outputs_and_counts():
    nb = new_notebook()
    nb.cells = [new_code_cell("print(1)", execution_count=3, outputs=[new_output("stream", text="1\n")])]
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00Z"}
    assert dirty_reasons(nb) == ["cell 0 has 1 output(s)", "cell 0 has execution_count 3"]
    strip_notebook(nb)
    assert dirty_reasons(nb) == [] and "execution" not in nb.cells[0].metadata
    assert nb.cells[0].source == "print(1)"


def test_checked_cells_keep_their_reference_output():
    nb = new_notebook()
    out = new_output("stream", text="0.123\n")
    nb.cells = [new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(0.123)", execution_count=9, outputs=[out])]
    strip_notebook(nb)
    assert nb.cells[0].outputs == [out] and nb.cells[0].execution_count == 1
    assert dirty_reasons(nb) == []
    strip_notebook(nb, keep_checked=False)
    assert nb.cells[0].outputs == [] and nb.cells[0].execution_count is None
    assert "stores no reference output" in dirty_reasons(nb)[0]


def test_copy_checked_outputs_from_executed_copy():
    nb = new_notebook()
    nb.cells = [new_code_cell("x = 1"), new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(x)")]
    executed = nbformat.from_dict(nb)
    executed.cells[0].outputs = [new_output("stream", text="noise\n")]
    executed.cells[1].outputs = [new_output("stream", text="1\n")]
    assert copy_checked_outputs(nb, executed) == 1
    strip_notebook(nb)
    assert nb.cells[0].outputs == [] and nb.cells[1].outputs[0].text == "1\n"
    executed.cells[1].source = "print(x + 1)"
    with pytest.raises(ValueError, match="cell 1 differs"):
        copy_checked_outputs(nb, executed)

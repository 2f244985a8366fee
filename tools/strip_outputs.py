#!/usr/bin/env python
"""Strip outputs from notebooks so they are committed clean; record nbval reference outputs.

Notebooks in ``notebooks/`` are committed without outputs or execution counts: diffs stay
readable, nothing machine-specific (paths, timings, images) leaks into git, and nbval in lax
mode checks the assertions inside cells rather than stale outputs. ``make course`` renders
executed copies into ``build/`` for reading.

The one exception is a cell marked ``# NBVAL_CHECK_OUTPUT``: nbval compares its output with the
one stored in the notebook, and skips the comparison when the stored cell never ran
(``execution_count`` is null). Such a cell keeps its output, with execution count 1, and must
print rounded, deterministic values *as produced in quick mode* (nbval runs quick mode).
Record those outputs from a quick-mode run with ``--from-executed`` (``make refs`` does both
steps)::

    python tools/strip_outputs.py                 # strip every notebooks/*.ipynb in place
    python tools/strip_outputs.py 01 03           # chapters 01 and 03 ('01', '01_forward', a path)
    python tools/strip_outputs.py --check         # exit 1 listing dirty notebooks, change nothing
    python tools/render_course.py --quick --no-html --out build/quick 01
    python tools/strip_outputs.py --from-executed build/quick 01   # copy checked outputs back

``tests/test_notebooks_clean.py`` runs the same check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
CHECK_OUTPUT_MARK = "# NBVAL_CHECK_OUTPUT"

# Cell metadata that front-ends add when a cell runs (JupyterLab's `execution` timings, the
# ExecuteTime extension, collapsed/scrolled view state): noise in a diff, never content.
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")
# Notebook metadata written by executing front-ends (widget state holds whole progress bars).
VOLATILE_NOTEBOOK_METADATA = ("widgets",)


def checks_output(cell: nbformat.NotebookNode) -> bool:
    """Whether nbval --nbval-lax compares this cell's output with the stored one."""
    return cell.cell_type == "code" and any(
        line.strip() == CHECK_OUTPUT_MARK for line in cell.source.splitlines()
    )


def strip_notebook(nb: nbformat.NotebookNode, keep_checked: bool = True) -> nbformat.NotebookNode:
    """Remove outputs, execution counts and volatile metadata from ``nb`` in place; return it.

    ``keep_checked``: keep the outputs of ``# NBVAL_CHECK_OUTPUT`` cells (their execution count
    becomes 1, the smallest value nbval treats as "ran"). False strips everything (the student
    edition).
    """
    for key in VOLATILE_NOTEBOOK_METADATA:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue  # markdown/raw attachments (pasted images) are content: keep them
        if keep_checked and checks_output(cell) and cell.outputs:
            cell.execution_count = 1
        else:
            cell.outputs = []
            cell.execution_count = None
    return nb


def dirty_reasons(nb: nbformat.NotebookNode) -> list[str]:
    """Why ``nb`` is not clean: one line per problem, empty when clean."""
    reasons = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if checks_output(cell):
            if not cell.outputs or cell.execution_count is None:
                reasons.append(
                    f"cell {index} is marked {CHECK_OUTPUT_MARK} but stores no reference output "
                    "(nbval would compare nothing)"
                )
            # Images and tracebacks never compare equal across machines / versions.
            bad = {key for out in cell.outputs for key in out.get("data", {}) if key.startswith("image/")}
            bad |= {"error" for out in cell.outputs if out.output_type == "error"}
            if bad:
                reasons.append(
                    f"cell {index} is marked {CHECK_OUTPUT_MARK} but its output holds {sorted(bad)}: "
                    "print rounded values instead"
                )
            continue
        if cell.get("outputs"):
            reasons.append(f"cell {index} has {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            reasons.append(f"cell {index} has execution_count {cell.execution_count}")
    return reasons


def copy_checked_outputs(nb: nbformat.NotebookNode, executed: nbformat.NotebookNode, name: str = "notebook") -> int:
    """Copy outputs of ``# NBVAL_CHECK_OUTPUT`` cells from ``executed`` into ``nb``; return the count.

    Cells are matched by position and must have the same source (the executed copy must come
    from this very version of the notebook).
    """
    if len(executed.cells) != len(nb.cells):
        raise ValueError(f"{name}: executed copy has {len(executed.cells)} cells, notebook {len(nb.cells)}: re-run it")
    copied = 0
    for index, (cell, ran) in enumerate(zip(nb.cells, executed.cells)):
        if not checks_output(cell):
            continue
        if ran.source != cell.source:
            raise ValueError(f"{name}: cell {index} differs from the executed copy: re-run it")
        cell.outputs = ran.outputs
        cell.execution_count = 1 if ran.outputs else None
        copied += 1
    return copied


def select_notebooks(selectors: list[str], notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks named by ``selectors`` ('01', '01_forward', a path); all of them when empty."""
    available = sorted(notebook_dir.glob("*.ipynb"))
    if not selectors:
        return available
    chosen: list[Path] = []
    for selector in selectors:
        as_path = Path(selector)
        if as_path.suffix == ".ipynb" and as_path.exists():
            matches = [as_path]
        else:
            matches = [p for p in available if p.stem.startswith(Path(selector).stem)]
        if not matches:
            names = ", ".join(p.stem for p in available) or "none"
            raise SystemExit(f"no notebook matches {selector!r} in {notebook_dir} (have: {names})")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Strip notebook outputs (all but # NBVAL_CHECK_OUTPUT cells).")
    parser.add_argument("notebooks", nargs="*", help="'01', '02_ddpm', or a path (default: all)")
    parser.add_argument("--check", action="store_true", help="report dirty notebooks; write nothing")
    parser.add_argument("--from-executed", type=Path, metavar="DIR",
                        help="first copy the outputs of # NBVAL_CHECK_OUTPUT cells from DIR/NN_slug.ipynb")
    args = parser.parse_args(argv)

    paths = select_notebooks(args.notebooks)
    dirty = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if args.check:
            reasons = dirty_reasons(nb)
            if reasons:
                dirty += 1
                print(f"{path.name}: not clean: " + "; ".join(reasons))
            continue
        before = nbformat.writes(nb)
        if args.from_executed:
            executed = nbformat.read(args.from_executed / path.name, as_version=4)
            n = copy_checked_outputs(nb, executed, path.stem)
            print(f"{path.name}: recorded {n} checked output(s) from {args.from_executed / path.name}")
        strip_notebook(nb)
        if nbformat.writes(nb) != before:  # only touch files that change: mtimes, open editors
            nbformat.write(nb, path)  # Jupyter's own layout (indent 1, trailing newline)
            print(f"stripped {path}")
    if args.check:
        print(f"{len(paths) - dirty}/{len(paths)} notebook(s) clean")
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Execute the course notebooks and render them for reading.

For each ``notebooks/NN_slug.ipynb`` this writes ``build/NN_slug.ipynb`` (executed, with
outputs) and ``build/NN_slug.html`` (figures embedded, math typeset by a MathJax copied into
``build/_static/mathjax``: the pages read offline), then ``build/index.html``, the chapter map
(title, link, runtime and mode of every chapter rendered so far; see ``course_html``). It prints
one progress line per notebook and a table of times at the end, and exits non-zero if any
notebook fails, naming the failing cell.

    python tools/render_course.py                 # all chapters, full mode
    MINIDIFF_QUICK=1 python tools/render_course.py 01 03   # chapters 01 and 03, quick mode
    python tools/render_course.py --quick         # same as MINIDIFF_QUICK=1

``make course`` / ``make course QUICK=1`` call this script.

The kernel
----------
Notebooks run in a kernel started from *this* interpreter (``sys.executable``), whatever
kernelspec is stored in the notebook or registered in ``~/.local/share/jupyter``: a stale user
kernelspec named ``python3`` pointing at another Python would otherwise silently run the course
against a different torch / minidiff. This is what ``pytest --nbval-current-env`` does too.
Kernels run with the notebook folder as working directory, like nbval and Jupyter Lab.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ipykernel.kernelspec
import nbformat
import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets import default

# tools/ is on sys.path whether these scripts run directly or under pytest (pythonpath = tools)
import course_html
from strip_outputs import NOTEBOOK_DIR, select_notebooks
from student_edition import describe

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build"
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CurrentEnvKernelManager(AsyncKernelManager):
    """Starts ipykernel with ``sys.executable``, ignoring installed kernelspecs."""

    @default("transport_encryption")
    def _transport_encryption_default(self) -> str:
        # Let the manager provision CurveZMQ keys (ipykernel's spec declares support), so the
        # kernel does not print "Kernel is running over TCP without encryption" every start.
        return "auto" if zmq.has("curve") else "disabled"

    @property
    def kernel_spec(self) -> KernelSpec:
        if self._kernel_spec is None:
            # get_kernel_dict() builds argv = [sys.executable, "-m", "ipykernel_launcher", ...]
            self._kernel_spec = KernelSpec(
                resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
            )
        return self._kernel_spec


def course_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for kernels that render the course for reading.

    MPLBACKEND is removed: with ``MPLBACKEND=Agg`` (right for tests) ipykernel does not switch
    to the inline backend and every figure would be missing from the HTML. Progress bars are
    off (static HTML cannot animate them and their carriage returns clutter the output).
    """
    env = dict(os.environ if base is None else base)
    env.pop("MPLBACKEND", None)
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences debugpy's frozen-modules note
    return env


@dataclass
class NotebookRun:
    nb: nbformat.NotebookNode
    seconds: float
    failed_cell: int | None = None  # index into nb.cells, when a cell failed
    ename: str | None = None  # exception class name, e.g. "NotImplementedError"
    message: str | None = None  # one-line summary
    details: str | None = None  # nbclient's report: cell source + traceback

    @property
    def ok(self) -> bool:
        return self.message is None


def run_notebook(
    nb: nbformat.NotebookNode,
    cwd: Path | str = NOTEBOOK_DIR,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> NotebookRun:
    """Execute ``nb`` in place in a current-env kernel; stop at the first failing cell.

    ``env``: the kernel's environment (default: this process's). ``timeout``: seconds per cell.
    Never raises for a failing notebook; the returned ``NotebookRun`` says what went wrong.
    """
    current: dict[str, int | None] = {"index": None}

    def on_cell_start(cell, cell_index, **_):  # nbclient hook: remember where we are
        current["index"] = cell_index

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",  # a name ipykernel-aware code paths recognise; the spec is ours
        kernel_manager_class=CurrentEnvKernelManager,
        resources={"metadata": {"path": str(cwd)}},
        on_cell_start=on_cell_start,
    )
    start = time.perf_counter()
    run = NotebookRun(nb=nb, seconds=0.0)
    try:
        client.execute(env=dict(os.environ if env is None else env))
    except CellExecutionError as err:
        run.ename, run.message, run.details = err.ename, f"{err.ename}: {err.evalue}", str(err)
    except CellTimeoutError as err:
        run.ename, run.message, run.details = "CellTimeoutError", f"timed out after {timeout} s", str(err)
    except DeadKernelError as err:
        run.ename, run.message, run.details = "DeadKernelError", f"kernel died ({err})", str(err)
    except Exception as err:  # kernel failed to start, etc.: no cell to blame
        current["index"] = None
        run.ename, run.message, run.details = type(err).__name__, f"{type(err).__name__}: {err}", repr(err)
    run.seconds = time.perf_counter() - start
    if not run.ok:
        run.failed_cell = current["index"]
        lines = ANSI_RE.sub("", run.message or "").strip().splitlines()
        run.message = lines[0][:200] if lines else run.ename
        run.details = ANSI_RE.sub("", run.details or "")
    return run


def chapter_record(stem: str, run: NotebookRun, mode: str, where: str) -> course_html.ChapterRecord:
    """What index.html says about one rendered notebook."""
    return course_html.ChapterRecord(
        stem=stem,
        title=course_html.notebook_title(run.nb, fallback=stem),
        html=f"{stem}.html",
        mode=mode,
        seconds=round(run.seconds, 1),
        status="ok" if run.ok else f"FAILED in {where}: {run.message}",
        environment=course_html.environment(ROOT),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute the course notebooks into build/ (ipynb + HTML).")
    parser.add_argument("notebooks", nargs="*", help="'01', '02_ddpm', or a path (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: build)")
    parser.add_argument("--quick", action="store_true", help="quick mode (sets MINIDIFF_QUICK=1)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per cell (default: 3600)")
    parser.add_argument("--no-html", action="store_true", help="write executed notebooks only")
    parser.add_argument("-x", "--fail-fast", action="store_true", help="stop at the first failing notebook")
    args = parser.parse_args(argv)

    paths = select_notebooks(args.notebooks, NOTEBOOK_DIR)
    if not paths:
        print(f"no notebooks in {NOTEBOOK_DIR}")
        return 0
    env = course_env()
    if args.quick:
        env["MINIDIFF_QUICK"] = "1"
    mode = "quick" if env.get("MINIDIFF_QUICK", "") not in ("", "0") else "full"
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"rendering {len(paths)} notebook(s) into {args.out} ({mode} mode, kernel {sys.executable})")
    # Before any notebook runs: a missing MathJax package should not cost a full build.
    mathjax = None if args.no_html else course_html.install_mathjax(args.out)

    runs: list[tuple[str, NotebookRun]] = []
    width = max(len(p.stem) for p in paths)
    for k, path in enumerate(paths, start=1):
        print(f"[{k}/{len(paths)}] {path.stem:<{width}} ... ", end="", flush=True)
        nb = nbformat.read(path, as_version=4)
        run = run_notebook(nb, cwd=path.parent, env=env, timeout=args.timeout)
        runs.append((path.stem, run))
        cell = run.failed_cell
        where = "kernel startup" if cell is None else f"cell {cell}"
        # Written even on failure: the executed copy shows the traceback in place.
        nbformat.write(run.nb, args.out / path.name)
        if mathjax is not None:
            record = chapter_record(path.stem, run, mode, where)
            course_html.write_page(run.nb, args.out / record.html, record.title)
            # After every chapter, so the map is usable while a long full build goes on.
            course_html.write_index(args.out, course_html.update_manifest(args.out, [record]), mathjax)
        if run.ok:
            print(f"{run.seconds:.1f} s", flush=True)
        else:
            detail = describe(cell, run.nb.cells[cell]) if cell is not None else where
            print(f"FAILED after {run.seconds:.1f} s in {detail}: {run.message}", flush=True)
            if args.fail_fast:
                break

    # Summary table.
    print()
    print(f"{'notebook':<{width}}  {'status':<6}  {'time':>9}")
    for stem, run in runs:
        print(f"{stem:<{width}}  {'ok' if run.ok else 'FAILED':<6}  {run.seconds:>7.1f} s")
    print(f"{'total':<{width}}  {'':<6}  {sum(r.seconds for _, r in runs):>7.1f} s")

    failed = [(stem, run) for stem, run in runs if not run.ok]
    for stem, run in failed:
        where = f"cell {run.failed_cell}" if run.failed_cell is not None else "kernel startup"
        print(f"\n==== {stem}: FAILED in {where} ====\n{run.details}", file=sys.stderr)
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: {', '.join(s for s, _ in failed)}", file=sys.stderr)
        return 1
    print(f"\nall {len(runs)} notebook(s) ok; open {args.out}/{'*.ipynb' if args.no_html else 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

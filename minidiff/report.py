"""Small helpers that turn a notebook's measured numbers into text: tables and timings.

The course writes its "what the numbers say" cells from results, never by hand; these helpers keep
that code short and uniform across chapters.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["Stopwatch", "md_table", "stopwatch"]


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: ``header`` (k names) and ``rows`` (each k already formatted cells).

    The first column is left-aligned (labels), the others right-aligned (numbers)."""
    if isinstance(header, str) or not isinstance(header, Sequence) or not header:
        raise TypeError(f"header must be a non-empty sequence of column names, got {header!r}")
    k = len(header)
    for i, row in enumerate(rows):
        if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != k:
            raise ValueError(f"row {i} must have {k} cells like the header {list(header)}, got {row!r}")
    align = ["---" if i else ":---" for i in range(k)]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


class Stopwatch:
    """Elapsed wall time of a ``with stopwatch() as sw:`` block, in seconds (``sw.seconds``)."""

    seconds: float = float("nan")


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    """Time a block: ``with stopwatch() as sw: ...``, then ``sw.seconds`` (wall clock, perf_counter)."""
    sw, start = Stopwatch(), time.perf_counter()
    try:
        yield sw
    finally:
        sw.seconds = time.perf_counter() - start

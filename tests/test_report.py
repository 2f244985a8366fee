"""minidiff.report: Markdown tables and the stopwatch that notebooks' computed prose is built with."""
import time

import pytest

from minidiff import md_table, stopwatch


def test_md_table_aligns_labels_left_and_numbers_right():
    text = md_table(["model", "loss"], [["a", "0.10"], ["b", 2]])
    assert text.splitlines() == ["| model | loss |", "| :--- | --- |", "| a | 0.10 |", "| b | 2 |"]


@pytest.mark.parametrize("header, rows", [([], []), ("ab", []), (["a", "b"], [["x"]]), (["a"], ["x"])])
def test_md_table_rejects_ragged_or_empty_input(header, rows):
    with pytest.raises((TypeError, ValueError), match="header|row"):
        md_table(header, rows)


def test_stopwatch_measures_the_block():
    with stopwatch() as sw:
        time.sleep(0.02)
    assert 0.015 < sw.seconds < 1.0

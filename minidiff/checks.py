"""Argument checks that teach: one place that turns a bad number into a ValueError naming the argument.

Used by the continuous-time modules (:mod:`minidiff.clock`, :mod:`minidiff.sde`, :mod:`minidiff.ode`,
:mod:`minidiff.dsm`) and the toy data (:mod:`minidiff.data.toys`). Python bools are rejected
everywhere a number is expected (``True`` is an int to Python, never a step count or a tolerance).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_real", "check_int"]


def _scalar(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        return value.item()
    return value


def check_real(value: Any, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """``value`` as a finite float in the given range, else a ValueError naming ``name``.

    ``low``/``high`` are inclusive bounds unless ``low_open``/``high_open``; ``hint`` is appended
    to the message (what to pass instead).
    """
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__}){hint}")
    value = float(value)
    if low is not None and high is not None:
        want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        want = f"{'<' if high_open else '<='} {high:g}"
    else:
        want = "finite"
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{'' if want == 'finite' else ' ' + want}, got {value}{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{name} must be {want}, got {value:g}{hint}")
    return value


def check_int(value: Any, name: str, *, low: int = 1, hint: str = "") -> int:
    """``value`` as an int >= ``low`` (a Python or NumPy integer, not a bool or a float), else a ValueError."""
    value = _scalar(value)
    want = {1: "a positive int", 0: "a non-negative int"}.get(low, f"an int >= {low}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {want}, got {value!r} ({type(value).__name__}){hint}")
    if value < low:
        raise ValueError(f"{name} must be {want}, got {value}{hint}")
    return int(value)

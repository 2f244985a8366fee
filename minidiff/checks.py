"""Argument checks that teach: one home for "is this a positive int / a finite number in range?".

Every public function validates its numeric and enum arguments here, so a bad value fails at the
call with a message naming the argument, the valid range and the fix, instead of giving a silently
wrong number (``chunk=-1`` skipping every ELBO term) or an internal error deep in torch or NumPy.

Type problems (a bool, a float where an int is needed, a string) raise ``TypeError``; values of the
right type outside their range (zero, negative, NaN, inf) raise ``ValueError``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["check_int", "check_real", "check_choice", "check_tensor", "check_positive_tensor", "check_labels"]


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None, *, hint: str = "") -> int:
    """``value`` as an int in [low, high] (either bound optional); bools and floats are TypeErrors.

    Python and NumPy integers and 1-element integer tensors are accepted; ``hint`` is appended to the
    message (what the argument means, or what to pass instead).
    """
    value = _scalar(value)
    if low is not None and high is not None:
        want = f"an int in [{low}, {high}]"
    else:
        want = "an int" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}{hint}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {want}, got {value}{hint}")
    return value


def check_real(value: Any, name: str, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """``value`` as a finite float in the interval given by ``low``/``high`` (closed unless ``*_open``).

    Accepts Python/NumPy numbers and 1-element tensors; rejects bools and non-numbers (TypeError), NaN,
    ±inf and values outside the interval (ValueError). ``hint`` is appended to the message.
    """
    value = _scalar(value)
    if low is not None and high is not None:
        want = "in " + _interval(low, high, low_open, high_open)
    elif low is not None:
        want = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        want = f"{'<' if high_open else '<='} {high:g}"
    else:
        want = ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{' ' + want if want else ''}, "
                        f"got {type(value).__name__} {value!r}{hint}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite{' and ' + want if want else ''}, got {value}{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{name} must be {want}, got {value:g}{hint}")
    return value


def _scalar(value: Any) -> Any:
    """A 1-element, non-bool tensor as its Python number; anything else unchanged."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        return value.item()
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of the names in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_tensor(value: Any, name: str, *, floating: bool = False, min_ndim: int = 0, nonempty: bool = False) -> Tensor:
    """``value`` if it is a tensor (floating-point if asked) with at least ``min_ndim`` dims (and a batch)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}; convert it with .float()")
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s) (batch first), got shape {tuple(value.shape)}")
    if nonempty and (value.ndim == 0 or value.shape[0] == 0):
        raise ValueError(f"{name} is an empty batch, shape {tuple(value.shape)}; pass at least one example")
    return value


def check_positive_tensor(value: Tensor | float, name: str, *, allow_zero: bool = False, upper: float | None = None,
                          upper_open: bool = False) -> None:
    """Raise unless every entry of ``value`` (a number or a tensor) is finite and > 0 (≥ 0 with
    ``allow_zero``) and, with ``upper``, below it (≤ unless ``upper_open``). Used for variances and stds."""
    v = torch.as_tensor(value) if not isinstance(value, Tensor) else value
    if isinstance(value, bool) or v.dtype == torch.bool:
        raise TypeError(f"{name} must be a number or a floating-point tensor, got a bool")
    if v.numel() == 0:
        return
    lo, hi = v.min(), v.max()
    bad_low = lo < 0 if allow_zero else lo <= 0
    bad_high = upper is not None and (hi >= upper if upper_open else hi > upper)
    if bad_low or bad_high or not bool(torch.isfinite(v).all()):
        interval = _interval(0, upper, not allow_zero, upper_open)
        raise ValueError(f"{name} must be finite and in {interval}, got min {float(lo):.4g} and max {float(hi):.4g}")


def check_labels(value: Any, name: str, batch: int, num_classes: int | None = None, *,
                 device: torch.device | str | None = None, broadcast: bool = False) -> Tensor:
    """Integer class labels of shape (batch,) as a LongTensor on ``device``, each in [0, num_classes) when
    ``num_classes`` is given. ``broadcast``: a single int (0-d) is repeated to the batch. A float, bool or
    complex tensor is refused (a float label is a bug, not a class)."""
    try:
        labels = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError):
        accepted = "(B,) or an int" if broadcast else "(B,)"
        raise TypeError(f"{name} must be integer class labels {accepted}, got {type(value).__name__}") from None
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class labels, got dtype {labels.dtype}")
    if broadcast and labels.ndim == 0:
        labels = labels.expand(batch)
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"{name} must have shape (B,)=({batch},), got {tuple(labels.shape)}")
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes}), got min {int(labels.min())}, max {int(labels.max())}")
    return labels.long()


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
    right = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    return f"{left}, {right}"

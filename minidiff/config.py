"""Run-time configuration: quick mode, seeding and devices (used by every chapter).

Quick mode (``MINIDIFF_QUICK=1``, set by the test suite and CI) shrinks step counts so that
every notebook runs in minutes on a laptop CPU; full mode is what students run. Both modes
go through the same code: only the numbers passed to it change (see :func:`pick`).
"""
from __future__ import annotations

import os
import random
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}


def is_quick() -> bool:
    """True when ``MINIDIFF_QUICK`` is set to 1/true/yes/on (read at call time, not import)."""
    return os.environ.get("MINIDIFF_QUICK", "0").strip().lower() in _TRUE


def pick(quick: T, full: T) -> T:
    """Return ``quick`` in quick mode and ``full`` otherwise, e.g. ``steps = pick(300, 20_000)``."""
    return quick if is_quick() else full


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch's global RNGs and return a fresh CPU ``torch.Generator``.

    minidiff itself never draws from the global RNGs when a ``generator`` is passed; seeding them
    too makes layer initialisation (``nn.Linear`` uses the global RNG) reproducible.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    """The device minidiff uses when none is given: always the CPU.

    GPUs are opt-in (``device="cuda"``) so that results are identical on every machine unless the
    user asks otherwise.
    """
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``None``/``"cpu"``/``"cuda"``/``"cuda:1"``/``"mps"`` into a usable ``torch.device``.

    Raises a ValueError that says what to do when the requested accelerator is not available.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but torch.cuda.is_available() is False "
            "(CPU-only torch build or no GPU). Pass device='cpu' or install a CUDA build of torch."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r} was requested but MPS is not available; use 'cpu'.")
    return dev


def show_progress(progress: bool = True) -> bool:
    """Whether a loop should draw a tqdm bar: ``progress`` unless ``TQDM_DISABLE`` is set.

    (tqdm reads ``TQDM_DISABLE`` only as a default, and minidiff passes ``disable=`` explicitly.)
    """
    return bool(progress) and os.environ.get("TQDM_DISABLE", "0").strip().lower() not in _TRUE

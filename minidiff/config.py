"""Run-time configuration: quick mode, seeding and devices (used by every chapter).

Quick mode (``MINIDIFF_QUICK=1``, set by the test suite and CI) shrinks step counts so that
every notebook runs in minutes on a laptop CPU; full mode is what students run. Both modes
go through the same code: only the numbers passed to it change (see :func:`pick`).
"""
from __future__ import annotations

import numbers
import os
import random
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _env_flag(name: str) -> bool:
    """An on/off environment variable; a value that is neither (a typo like "ture") is an error."""
    value = os.environ.get(name, "0").strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"environment variable {name}={os.environ[name]!r} is not a switch; "
                         f"set it to one of {sorted(_TRUE)} or {sorted(_FALSE - {''})}")
    return value in _TRUE


def is_quick() -> bool:
    """True when ``MINIDIFF_QUICK`` is set to 1/true/yes/on, False for unset/0/false/no/off (read at
    call time, not import); any other value raises a ValueError rather than silently meaning "full"."""
    return _env_flag("MINIDIFF_QUICK")


def pick(quick: T, full: T) -> T:
    """Return ``quick`` in quick mode and ``full`` otherwise, e.g. ``steps = pick(300, 20_000)``.

    Both must be of one kind (ints and floats mix), so a test run in quick mode checks the kind
    of value the full run gets.
    """
    if not _same_kind(quick, full):
        raise TypeError(f"pick(quick, full) needs values of one kind, got {type(quick).__name__} "
                        f"and {type(full).__name__}")
    return quick if is_quick() else full


def _same_kind(a: object, b: object) -> bool:
    def real(v: object) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)
    return (real(a) and real(b)) or type(a) is type(b)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch's global RNGs and return a fresh CPU ``torch.Generator``.

    minidiff itself never draws from the global RNGs when a ``generator`` is passed; seeding them
    too makes layer initialisation (``nn.Linear`` uses the global RNG) reproducible.
    """
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
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
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a str like 'cpu' / 'cuda:0' or a torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from err
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
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
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {type(progress).__name__}")
    return progress and not _env_flag("TQDM_DISABLE")

"""Session-wide test defaults. Keep this file small and generic.

Environment defaults are set at import time, not in a fixture: pytest imports this file
before it imports any test module (so matplotlib and tqdm see them) and before nbval starts
the notebook kernels (which inherit this process's environment). `setdefault`, so a caller
can still override, e.g. `MINIDIFF_QUICK=0 pytest tests/test_train.py`.

No global seeding here: tests that need randomness take the `generator` fixture (or seed
their own), so no test depends on which tests ran before it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

TEST_ENV = {
    "MINIDIFF_QUICK": "1",  # small models, few steps: the whole suite stays within minutes
    "TQDM_DISABLE": "1",  # progress bars on stderr only clutter test logs
    "MPLBACKEND": "Agg",  # headless; no figure windows
    "HF_HUB_OFFLINE": "1",  # tests never download: a missing file fails fast instead of hanging
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # quiets debugpy's note at every kernel start
}
for _name, _value in TEST_ENV.items():
    os.environ.setdefault(_name, _value)

# Every run starts from an empty model cache (DESIGN.md: tests must pass without one). The
# notebooks that nbval starts inherit it, so the digit classifier is trained once per session.
if "MINIDIFF_CACHE" not in os.environ:
    os.environ["MINIDIFF_CACHE"] = tempfile.mkdtemp(prefix="minidiff-cache-")
    atexit.register(shutil.rmtree, os.environ["MINIDIFF_CACHE"], True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds pyproject.toml, notebooks/, data/)."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def generator():
    """A fresh CPU ``torch.Generator`` seeded with 0, for ``generator=`` arguments."""
    import torch  # imported here so tests that never need torch do not pay for it

    return torch.Generator().manual_seed(0)

"""A small on-disk cache for models several chapters reuse (e.g. the digit classifier metric).

Entries are keyed by a hash of the config that produced them, so changing a hyper-parameter
retrains instead of loading stale weights. The cache is an optimisation only: everything works
from an empty cache. Location: ``$MINIDIFF_CACHE`` or ``~/.cache/minidiff``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .train import load_checkpoint, save_checkpoint

__all__ = ["cache_dir", "cache_path", "load_or_train"]


def cache_dir() -> Path:
    return Path(os.environ.get("MINIDIFF_CACHE", Path.home() / ".cache" / "minidiff"))


def cache_path(name: str, config: dict[str, Any]) -> Path:
    """``<cache>/<name>-<hash of config>.pt``; config must be JSON-serialisable."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{digest}.pt"


def load_or_train(name: str, config: dict[str, Any], model: nn.Module,
                  train_fn: Callable[[nn.Module], None], use_cache: bool = True) -> nn.Module:
    """Load ``model``'s weights from the cache, or run ``train_fn(model)`` and store them."""
    path = cache_path(name, config)
    if use_cache and path.is_file():
        load_checkpoint(path, model)
        return model.eval()
    train_fn(model)
    if use_cache:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_checkpoint(tmp, model, meta=config)
        os.replace(tmp, path)  # atomic: parallel test workers never read half a file
    return model.eval()

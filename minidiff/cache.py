"""A small on-disk cache for models several chapters reuse (e.g. the digit classifier metric).

Entries are checkpoint folders (:mod:`minidiff.checkpoint`) keyed by a hash of the config that produced
them and of the model's own recorded config, so changing a hyper-parameter or the architecture retrains
instead of loading stale weights. The cache is an optimisation only: everything works from an empty
cache, and an unreadable entry is retrained. Location: ``$MINIDIFF_CACHE`` or ``~/.cache/minidiff``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint, model_config, save_checkpoint

__all__ = ["cache_dir", "cache_path", "load_or_train", "load_or_train_logged"]


def cache_dir() -> Path:
    return Path(os.environ.get("MINIDIFF_CACHE", Path.home() / ".cache" / "minidiff"))


def cache_path(name: str, config: dict[str, Any], model: nn.Module | None = None) -> Path:
    """``<cache>/<name>-<hash>``: the hash covers ``config`` (JSON-serialisable) and, if given and
    recorded, the model's class and constructor config."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a non-empty file-name-like str, got {name!r}")
    key: dict[str, Any] = {"config": config}
    if model is not None:
        try:
            key["model"] = model_config(model)
        except TypeError:                  # a model that does not record its config: keyed by config alone
            pass
    try:
        blob = json.dumps(key, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"config must be JSON-serialisable to key the cache: {err}") from None
    return cache_dir() / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def load_or_train(name: str, config: dict[str, Any], model: nn.Module,
                  train_fn: Callable[[nn.Module], Any], use_cache: bool = True) -> nn.Module:
    """Load ``model``'s weights from the cache, or run ``train_fn(model)`` and store them; eval mode."""
    return load_or_train_logged(name, config, model, train_fn, use_cache)[0]


def load_or_train_logged(name: str, config: dict[str, Any], model: nn.Module,
                         train_fn: Callable[[nn.Module], Mapping[str, Any] | None],
                         use_cache: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_or_train` that also keeps what training reported: ``train_fn`` may return a JSON-serialisable
    mapping (e.g. ``{"losses": [...], "seconds": 41.2}``), stored beside the weights and returned on every later
    load, so a chapter can plot its loss curve whether it trained now or read the cache. Returns (model, log)."""
    path = cache_path(name, config, model)
    if use_cache and path.exists():
        try:
            meta = load_checkpoint(path, model)
            return model.eval(), dict(meta.get("training_log") or {})
        except ValueError as err:          # e.g. a half-deleted or foreign entry: retrain and replace it
            warnings.warn(f"ignoring the unreadable cache entry {path}: {err}")
            shutil.rmtree(path, ignore_errors=True)
    log = train_fn(model)
    if log is not None and not isinstance(log, Mapping):
        raise TypeError(f"train_fn must return None or a mapping (the training log), got {type(log).__name__}")
    log = dict(log or {})
    if use_cache:
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        save_checkpoint(tmp, model, meta={**config, "training_log": log} if log else config)
        try:
            os.replace(tmp, path)          # atomic: parallel test workers never read half an entry
        except OSError:                    # another worker stored it first
            shutil.rmtree(tmp, ignore_errors=True)
    return model.eval(), log

"""A LoRA adapter as a small file (chapter 6): ``save_lora(model, path)`` … ``load_lora(model, path)``.

The file is a safetensors file holding only one adapter's A and B matrices, keyed by layer path::

    down.1.attn.0.transformer_blocks.0.attn2.to_q.lora_A   (r, k)            (r, c_in, k_h, k_w) for a conv
    down.1.attn.0.transformer_blocks.0.attn2.to_q.lora_B   (d, r)

and its metadata (strings, as safetensors requires): ``format`` = ``"minidiff-lora"``, ``name``, ``r`` and
``alpha`` (JSON: one number, or ``{path: value}`` when layers differ), ``targets`` (JSON list of the layer
paths) and ``layers`` (JSON ``{path: [type, r, alpha]}``). It is a few KB where the model is MB: the
point of LoRA (Hu et al. 2021, Sec. 4.2: "reduce the checkpoint size by roughly 10,000×").

``load_lora`` puts the adapter into a base model that does not have it yet (injecting it with the file's
r and α) or overwrites an adapter of the same name and shapes; it checks every key and shape before it
changes anything, and a mismatch names the key and both shapes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .inject import (
    LoRAReport,
    _attach,
    _candidates,
    _close_names,
    _kind,
    _report,
    _shape,
    adapter_names,
    lora_layers,
)
from .layers import SUPPORTED, LoRALayer, _check_name

__all__ = ["FORMAT", "load_lora", "lora_state_dict", "read_lora_metadata", "save_lora"]

FORMAT = "minidiff-lora"


def lora_state_dict(model: nn.Module, name: str = "default") -> dict[str, Tensor]:
    """``{"<path>.lora_A": A, "<path>.lora_B": B}`` of adapter ``name`` (detached, on the CPU)."""
    layers = {p: m for p, m in lora_layers(model).items() if name in m.adapters}
    if not layers:
        raise KeyError(f"no adapter named {name!r} in the model; it has {adapter_names(model)}")
    out = {}
    for p, m in layers.items():
        out[f"{p}.lora_A"] = m.lora_A[name].detach().cpu().contiguous()
        out[f"{p}.lora_B"] = m.lora_B[name].detach().cpu().contiguous()
    return out


def _one_or_map(values: dict[str, Any]) -> Any:
    distinct = set(values.values())
    return distinct.pop() if len(distinct) == 1 else values


def save_lora(model: nn.Module, path: str | Path, name: str = "default") -> Path:
    """Write adapter ``name`` of ``model`` to the safetensors file ``path`` (module docstring); returns the path."""
    tensors = lora_state_dict(model, name)
    layers = {p: m for p, m in lora_layers(model).items() if name in m.adapters}
    table = {p: [_kind(m), m.r[name], m.alpha[name]] for p, m in layers.items()}
    meta = {"format": FORMAT, "version": "1", "name": name, "targets": json.dumps(list(layers)),
            "r": json.dumps(_one_or_map({p: m.r[name] for p, m in layers.items()})),
            "alpha": json.dumps(_one_or_map({p: m.alpha[name] for p, m in layers.items()})),
            "layers": json.dumps(table)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def read_lora_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a LoRA file: ``{"name", "r", "alpha", "targets", "layers"}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minidiff LoRA file (metadata format={meta.get('format')!r}, expected "
                         f"{FORMAT!r}); for diffusers-format files use diffusers' load_lora_weights")
    return {"name": meta["name"], "r": json.loads(meta["r"]), "alpha": json.loads(meta["alpha"]),
            "targets": json.loads(meta["targets"]), "layers": json.loads(meta["layers"])}


def _expected(module: nn.Module, r: int) -> dict[str, tuple[int, ...]]:
    """Shapes of A and B for a rank-r adapter on ``module`` (a Linear/Conv2d or a LoRA layer)."""
    w = module.base.weight if isinstance(module, LoRALayer) else module.weight
    return {"lora_A": (r, *w.shape[1:]), "lora_B": (w.shape[0], r)}


def _check_layer(model: nn.Module, candidates: dict[str, nn.Module], path: str, kind: str, r: int, alpha: float,
                 tensors: dict[str, Tensor], name: str) -> None:
    if path not in candidates:
        close = _close_names(path, list(candidates))
        raise ValueError(f"the LoRA file has a layer {path!r} that {type(model).__name__} does not have"
                         f"{'; close names: ' + str(close) if close else ''} (was it saved from another model?)")
    module = candidates[path]
    if not isinstance(module, (LoRALayer, *SUPPORTED)) or _kind(module) != kind:
        raise TypeError(f"layer {path!r} is a {_kind(module)} in this model but a {kind} in the LoRA file")
    for part, want in _expected(module, r).items():
        key = f"{path}.{part}"
        if key not in tensors:
            raise ValueError(f"the LoRA file lacks the key {key!r}")
        got = tuple(tensors[key].shape)
        if got != want:
            raise ValueError(f"shape mismatch for {key!r}: {got} in the file but {want} in this model "
                             f"(a {kind} with d, k = {_shape(module)}); the file was saved from a model of other "
                             "shapes")
    if isinstance(module, LoRALayer):
        if module.merged:
            raise RuntimeError(f"layer {path!r} is merged: unmerge_lora(model) before loading")
        if name in module.adapters and (module.r[name], module.alpha[name]) != (r, alpha):
            raise ValueError(f"layer {path!r} has adapter {name!r} with r={module.r[name]}, alpha="
                             f"{module.alpha[name]:g} but the file has r={r}, alpha={alpha:g}; load it under another "
                             "name= or remove_lora(model, name) first")


def load_lora(model: nn.Module, path: str | Path, name: str | None = None, *, freeze: bool = True) -> LoRAReport:
    """Load a LoRA file into ``model`` as adapter ``name`` (default: the name in the file), in place.

    Layers without that adapter get it (injected with the file's r and α; scale 1), layers with it have
    their A and B overwritten. freeze: as :func:`~minidiff.lora.inject_lora` (only this adapter trainable).
    Every key and shape is checked before the model changes.
    """
    meta = read_lora_metadata(path)
    name = _check_name(meta["name"] if name is None else name)
    if not isinstance(freeze, bool):
        raise TypeError(f"freeze must be True or False, got {freeze!r}")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    candidates = _candidates(model)
    for p, (kind, r, alpha) in meta["layers"].items():
        _check_layer(model, candidates, p, kind, r, alpha, tensors, name)
    if freeze:
        model.requires_grad_(False)
    for p, (_, r, alpha) in meta["layers"].items():
        module = candidates[p]
        if not (isinstance(module, LoRALayer) and name in module.adapters):
            module = _attach(model, p, module, name, r, alpha)
        with torch.no_grad():
            module.lora_A[name].copy_(tensors[f"{p}.lora_A"])
            module.lora_B[name].copy_(tensors[f"{p}.lora_B"])
        module.lora_A[name].requires_grad_(True)
        module.lora_B[name].requires_grad_(True)
    return _report(model, name, list(meta["layers"]))

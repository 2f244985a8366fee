"""Putting LoRA into a network and taking it out again (chapter 6).

``inject_lora(model, target, r, alpha)`` replaces each targeted ``nn.Linear`` / ``nn.Conv2d`` by a
:class:`~minidiff.lora.LoRALinear` / :class:`~minidiff.lora.LoRAConv2d` around it (or adds a new named
adapter to a layer that is a LoRA layer already), freezes everything else and reports what it did.
The eps-model contract is untouched: the adapted net is called exactly like the base.

**Targets** name modules by their path in ``model.named_modules()``:

* a plain name matches a path equal to it or ending in ``"." + name`` — ``"to_q"`` finds every
  ``…attn1.to_q``, ``"to_out.0"`` every output projection (peft's ``target_modules`` rule); it must name
  Linear/Conv2d layers;
* a string with ``* ? [`` is a glob over the whole path (``"up.*.attn2.to_k"``), a compiled ``re.Pattern``
  a regular expression (``re.compile(r".*attn2\\.to_[kv]")``); patterns select the supported layers
  among the modules they match.

The names mirror diffusers (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), so one target list adapts a
minidiff :class:`~minidiff.UNet`, a :class:`~minidiff.TinyCLIP` and a diffusers ``UNet2DConditionModel``.
"""
from __future__ import annotations

import contextlib
import difflib
import fnmatch
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checks import check_int, check_real
from .layers import SUPPORTED, LoRALayer, _check_name, wrap

__all__ = ["LoRAReport", "Target", "adapter_names", "find_targets", "inject_lora", "lora_disabled", "lora_layers",
           "lora_parameters", "lora_scales", "merge_lora", "remove_lora", "set_lora_scale",
           "trainable_parameter_count", "unmerge_lora"]

Target = str | re.Pattern | Sequence[str | re.Pattern]


@dataclass(frozen=True)
class LoRAReport:
    """What :func:`inject_lora` (or :func:`~minidiff.lora.load_lora`) did.

    name: the adapter. modules: ``{path: (layer type, d, k, r, alpha)}`` in model order.
    added: LoRA parameters added, Σ r (d + k). total: parameters of the model afterwards (base + all adapters).
    """

    name: str
    modules: dict[str, tuple[str, int, int, int, float]]
    added: int
    total: int

    @property
    def paths(self) -> list[str]:
        return list(self.modules)

    def __str__(self) -> str:
        share = 100 * self.added / max(self.total, 1)
        rows = [f"LoRA adapter {self.name!r}: {len(self.modules)} layers, {self.added:,} parameters "
                + f"({share:.2f}% of {self.total:,})"]
        rows += [f"  {p}: {kind} d={d} k={k} r={r} alpha={a:g}" for p, (kind, d, k, r, a) in self.modules.items()]
        return "\n".join(rows)


# --------------------------------------------------------------------------- finding layers
def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """``{path: LoRA layer}`` of every LoRA layer in ``model``, in model order."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRALayer)}


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters present anywhere in ``model``, in the order first seen."""
    return list(dict.fromkeys(n for layer in lora_layers(model).values() for n in layer.adapters))


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Every module path except the root and the insides of LoRA layers (their ``base`` and A/B tables)."""
    inside = tuple(p + "." for p in lora_layers(model))
    return {p: m for p, m in model.named_modules() if p and not (inside and p.startswith(inside))}


def _targets(target: Any) -> list[str | re.Pattern]:
    items = [target] if isinstance(target, (str, re.Pattern)) else target
    if isinstance(items, (bytes, nn.Module)) or not isinstance(items, Sequence) or not items:
        raise TypeError("target must be a module name, a glob, a re.Pattern or a non-empty list of them, e.g. "
                        f"['to_q', 'to_k', 'to_v', 'to_out.0'], got {target!r}")
    for t in items:
        if not isinstance(t, (str, re.Pattern)) or (isinstance(t, str) and not t):
            raise TypeError(f"each target must be a non-empty str or a re.Pattern, got {t!r}")
    return list(items)


def _text(t: str | re.Pattern) -> str:
    return t.pattern if isinstance(t, re.Pattern) else t


def _is_pattern(t: str | re.Pattern) -> bool:
    return isinstance(t, re.Pattern) or any(c in t for c in "*?[")


def _matches(t: str | re.Pattern, path: str) -> bool:
    if isinstance(t, re.Pattern):
        return t.fullmatch(path) is not None
    if _is_pattern(t):
        return fnmatch.fnmatchcase(path, t)
    return path == t or path.endswith("." + t)


def _close_names(t: str | re.Pattern, paths: Sequence[str]) -> list[str]:
    """Paths and path tails (``to_q``, ``attn1.to_q``, …) that look like ``t`` (difflib)."""
    tails = {".".join(p.split(".")[i:]) for p in paths for i in range(len(p.split(".")))}
    return difflib.get_close_matches(_text(t), sorted(tails), n=6, cutoff=0.5)


def _supported(module: nn.Module) -> bool:
    return isinstance(module, (LoRALayer, *SUPPORTED))


def find_targets(model: nn.Module, target: Target) -> list[str]:
    """Paths of the layers ``target`` selects (module docstring), in model order.

    Raises ValueError for a target that matches nothing (listing close names) and TypeError for a plain
    name that matches a layer LoRA cannot wrap, or a pattern that matches only such layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    candidates = _candidates(model)
    chosen: set[str] = set()
    for t in _targets(target):
        hits = [p for p in candidates if _matches(t, p)]
        if not hits:
            close = _close_names(t, list(candidates))
            hint = f"; close names: {close}" if close else f"; the model has e.g. {list(candidates)[:8]}"
            raise ValueError(f"target {_text(t)!r} matches no module of "
                             f"{type(model).__name__}{hint}")
        good = [p for p in hits if _supported(candidates[p])]
        bad = {p: type(candidates[p]).__name__ for p in hits if not _supported(candidates[p])}
        if bad and (not _is_pattern(t) or not good):
            raise TypeError(f"target {_text(t)!r} selects layers LoRA cannot wrap "
                            f"(it supports nn.Linear and nn.Conv2d): {dict(list(bad.items())[:6])}; name the "
                            "Linear/Conv2d layers inside them instead")
        chosen.update(good)
    return [p for p in candidates if p in chosen]


# --------------------------------------------------------------------------- injecting
def _shape(module: nn.Module) -> tuple[int, int]:
    """(d, k) of a Linear/Conv2d weight flattened to a matrix."""
    w = module.base.weight if isinstance(module, LoRALayer) else module.weight
    return w.shape[0], w[0].numel()


def _kind(module: nn.Module) -> str:
    return type(module.base if isinstance(module, LoRALayer) else module).__name__


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def inject_lora(model: nn.Module, target: Target, r: int = 4, alpha: float | None = None, dropout: float = 0.0, *,
                name: str = "default", freeze: bool = True, generator: torch.Generator | None = None) -> LoRAReport:
    """Add a LoRA adapter ``name`` of rank r and scaling α/r to every layer ``target`` selects (in place).

    r: an int in [1, min(d, k)] for every selected layer. alpha: > 0 (default r, so α/r = 1). dropout on
    the LoRA input, in [0, 1). freeze: make every parameter of the model except this adapter's A and B
    non-trainable (the base and any other adapters), so :func:`minidiff.train.train` optimises only it.
    generator: the CPU generator A's Kaiming-uniform initialisation draws from (B starts at 0).

    Nothing is changed when an argument is wrong: the checks (targets, rank per layer, a name already
    used on a selected layer) all run before the first layer is wrapped.
    """
    name = _check_name(name)
    r = check_int(r, "r (LoRA rank)", 1)
    if alpha is not None:
        alpha = check_real(alpha, "alpha (LoRA scaling α)", 0.0, low_open=True)
    dropout = check_real(dropout, "dropout", 0.0, 1.0, high_open=True)
    if not isinstance(freeze, bool):
        raise TypeError(f"freeze must be True or False, got {freeze!r}")
    paths = find_targets(model, target)
    modules = {p: model.get_submodule(p) for p in paths}
    for p, m in modules.items():
        d, k = _shape(m)
        if r > min(d, k):
            raise ValueError(f"r (LoRA rank) must be <= min(d, k) = {min(d, k)} for layer {p!r} ({_kind(m)} with "
                             f"d={d}, k={k}), got r={r}; a rank that large is no longer low-rank (use full "
                             "fine-tuning)")
        if isinstance(m, LoRALayer) and name in m.adapters:
            raise ValueError(f"adapter {name!r} is already injected in {p!r}: double injection; pass another "
                             "name= for a second adapter, or remove_lora(model, name) first")
        if isinstance(m, LoRALayer) and m.merged:
            raise RuntimeError(f"layer {p!r} is merged: unmerge_lora(model) before adding an adapter")
    if freeze:
        model.requires_grad_(False)
    for p, m in modules.items():
        _attach(model, p, m, name, r, alpha, dropout, generator)
    return _report(model, name, paths)


def _attach(model: nn.Module, path: str, module: nn.Module, name: str, r: int, alpha: float | None,
            dropout: float = 0.0, generator: torch.Generator | None = None) -> LoRALayer:
    """Add adapter ``name`` to the layer at ``path`` (wrapping a plain layer in place); its A, B trainable."""
    layer = wrap(module, r, alpha, dropout, name, generator)
    if layer is not module:
        _replace(model, path, layer)
    layer.lora_A[name].requires_grad_(True)
    layer.lora_B[name].requires_grad_(True)
    return layer


def _report(model: nn.Module, name: str, paths: Sequence[str]) -> LoRAReport:
    layers = {p: model.get_submodule(p) for p in paths}
    info = {p: (_kind(m), *_shape(m), m.r[name], m.alpha[name]) for p, m in layers.items()}
    return LoRAReport(name, info, sum(r * (d + k) for _, d, k, r, _ in info.values()),
                      sum(q.numel() for q in model.parameters()))


# --------------------------------------------------------------------------- parameters
def lora_parameters(model: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """The A and B parameters of adapter ``name`` (of every adapter if None), in model order."""
    layers = lora_layers(model)
    if name is not None and name not in adapter_names(model):
        raise KeyError(f"no adapter named {name!r} in the model; it has {adapter_names(model)}")
    return [t[n] for m in layers.values() for n in m.adapters if name in (None, n) for t in (m.lora_A, m.lora_B)]


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (what an optimiser updates)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- scales
def _layers_with(model: nn.Module, name: str) -> list[LoRALayer]:
    layers = [m for m in lora_layers(model).values() if name in m.adapters]
    if not layers:
        raise KeyError(f"no adapter named {name!r} in the model; it has {adapter_names(model)}")
    return layers


def set_lora_scale(model: nn.Module, name: str, scale: float) -> None:
    """Set the run-time scale s of adapter ``name`` on every layer (h = W₀x + Σ s_n (α_n/r_n) B_n A_n x)."""
    scale = check_real(scale, f"scale of adapter {name!r}")
    for layer in _layers_with(model, name):
        layer.set_scale(name, scale)


@contextlib.contextmanager
def lora_scales(model: nn.Module, **scales: float) -> Iterator[nn.Module]:
    """Temporarily set adapter scales, e.g. ``with lora_scales(model, slider=-2.0, star=0.5): ...``."""
    for name, scale in scales.items():
        check_real(scale, f"scale of adapter {name!r}")
    old = {name: [(layer, layer.scale[name]) for layer in _layers_with(model, name)] for name in scales}
    try:
        for name, scale in scales.items():
            set_lora_scale(model, name, scale)
        yield model
    finally:
        for name, pairs in old.items():
            for layer, value in pairs:
                layer.scale[name] = value


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the frozen base: every LoRA layer computes W₀x alone inside the block (merged layers refuse)."""
    layers = list(lora_layers(model).values())
    merged = [p for p, m in lora_layers(model).items() if m.merged]
    if merged:
        raise RuntimeError(f"cannot disable merged LoRA layers {merged[:4]}: unmerge_lora(model) first")
    before = [m.disabled for m in layers]
    try:
        for m in layers:
            m.disabled = True
        yield model
    finally:
        for m, value in zip(layers, before):
            m.disabled = value


# --------------------------------------------------------------------------- merge, unmerge, remove
def _all_layers(model: nn.Module) -> dict[str, LoRALayer]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers: inject_lora(model, ...) first")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (:meth:`LoRALayer.merge`); refuses if any layer is merged."""
    layers = _all_layers(model)
    merged = [p for p, m in layers.items() if m.merged]
    if merged:
        raise RuntimeError(f"LoRA layers {merged[:4]} are already merged; merging twice would add ΔW twice "
                           "(unmerge_lora(model) first)")
    for m in layers.values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract every adapter from its base weight again; refuses if some layer is not merged."""
    layers = _all_layers(model)
    unmerged = [p for p, m in layers.items() if not m.merged]
    if unmerged:
        raise RuntimeError(f"LoRA layers {unmerged[:4]} are not merged: there is nothing to unmerge")
    for m in layers.values():
        m.unmerge()
    return model


def remove_lora(model: nn.Module, name: str | None = None, *, merge: bool = False) -> nn.Module:
    """Remove adapter ``name`` (all adapters if None); a layer left with none is replaced by its base module.

    merge=False restores the original layers (unmerging merged ones first); merge=True folds the removed
    adapters into the base weights first (peft's ``merge_and_unload``), giving a plain model that computes
    what the adapted one did. The base parameters keep the ``requires_grad`` inject_lora gave them.
    """
    if not isinstance(merge, bool):
        raise TypeError(f"merge must be True or False, got {merge!r}")
    if name is None:
        layers = _all_layers(model)
    else:
        _layers_with(model, name)                                   # KeyError naming the adapters there are
        layers = {p: m for p, m in lora_layers(model).items() if name in m.adapters}
    for path, layer in layers.items():
        was_merged = layer.merged
        if was_merged:
            layer.unmerge()
        names = list(layer.adapters) if name is None else [name]
        if merge:
            with torch.no_grad():
                for n in names:
                    layer.base.weight += layer.delta_weight(n)
        for n in names:
            layer.remove_adapter(n)
        if layer.adapters:
            if was_merged:
                layer.merge()
        else:
            _replace(model, path, layer.base)
    return model

"""A minidiff LoRA in the format diffusers' ``load_lora_weights`` reads (chapters 6 and 10).

diffusers (≥ 0.26) keeps LoRAs in peft's layout, one safetensors file per pipeline, keys prefixed by the
component they adapt::

    unet.<module path>.lora_A.weight    (r, k)              (r, c_in, k_h, k_w) for a conv
    unet.<module path>.lora_B.weight    (d, r)              (d, r, 1, 1) for a conv

and, since 0.34, the ``LoraConfig`` arguments in the file's metadata under ``"lora_adapter_metadata"``
(JSON ``{"unet.r": …, "unet.lora_alpha": …, "unet.target_modules": […], "unet.rank_pattern": {…},
"unet.alpha_pattern": {…}}``). Without that metadata diffusers assumes α = r (scaling 1), so a state
dict handed over *in memory* must carry α/r inside B: ``diffusers_lora_state_dict(..., bake_scaling=True)``.

The module paths are those of the model the adapter was injected into, so a LoRA put into a diffusers
``UNet2DConditionModel`` with :func:`~minidiff.lora.inject_lora` loads into any pipeline with that U-Net.
The run-time scale s is not stored: set it on the diffusers side with ``pipe.set_adapters([name], [s])``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from .inject import adapter_names, lora_layers
from .layers import LoRAConv2d, LoRALayer

__all__ = ["METADATA_KEY", "diffusers_lora_config", "diffusers_lora_state_dict", "save_diffusers_lora"]

#: the safetensors metadata key diffusers reads the LoraConfig from (diffusers.loaders.lora_base)
METADATA_KEY = "lora_adapter_metadata"


def _layers(model: nn.Module, name: str) -> dict[str, LoRALayer]:
    layers = {p: m for p, m in lora_layers(model).items() if name in m.adapters}
    if not layers:
        raise KeyError(f"no adapter named {name!r} in the model; it has {adapter_names(model)}")
    return layers


def _check_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not prefix or prefix.startswith(".") or prefix.endswith("."):
        raise ValueError(f"prefix must name the pipeline component, e.g. 'unet' or 'text_encoder', got {prefix!r}")
    return prefix


def diffusers_lora_state_dict(model: nn.Module, name: str = "default", prefix: str = "unet", *,
                              bake_scaling: bool = False) -> dict[str, Tensor]:
    """Adapter ``name`` as ``{"<prefix>.<path>.lora_A.weight": A, "<prefix>.<path>.lora_B.weight": B}``.

    Conv B matrices get their 1×1 kernel dims back, (d, r) -> (d, r, 1, 1), as peft stores them.
    bake_scaling: multiply B by α/r (diffusers' default α = r then reproduces ΔW = (α/r) BA); use it when
    the dict is loaded without the metadata of :func:`diffusers_lora_config`.
    """
    prefix = _check_prefix(prefix)
    if not isinstance(bake_scaling, bool):
        raise TypeError(f"bake_scaling must be True or False, got {bake_scaling!r}")
    out = {}
    for p, m in _layers(model, name).items():
        a, b = m.lora_A[name].detach().cpu(), m.lora_B[name].detach().cpu()
        if bake_scaling:
            b = b * (m.alpha[name] / m.r[name])
        if isinstance(m, LoRAConv2d):
            b = b[:, :, None, None]
        out[f"{prefix}.{p}.lora_A.weight"] = a.contiguous()
        out[f"{prefix}.{p}.lora_B.weight"] = b.contiguous()
    return out


def diffusers_lora_config(model: nn.Module, name: str = "default") -> dict[str, Any]:
    """The peft ``LoraConfig`` arguments of adapter ``name``: r, lora_alpha, target_modules (full paths) and
    rank_pattern / alpha_pattern for layers whose r or α differ from the most common one."""
    layers = _layers(model, name)
    ranks = {p: m.r[name] for p, m in layers.items()}
    alphas = {p: m.alpha[name] for p, m in layers.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    return {"r": r, "lora_alpha": alpha, "target_modules": list(layers),
            "rank_pattern": {p: v for p, v in ranks.items() if v != r},
            "alpha_pattern": {p: v for p, v in alphas.items() if v != alpha}}


def save_diffusers_lora(model: nn.Module, path: str | Path, name: str = "default", prefix: str = "unet") -> Path:
    """Write adapter ``name`` as a diffusers LoRA file (unscaled A, B + the LoraConfig metadata).

    Load it with ``pipe.load_lora_weights(path.parent, weight_name=path.name, adapter_name=...)``.
    """
    tensors = diffusers_lora_state_dict(model, name, prefix)
    config = {f"{prefix}.{k}": v for k, v in diffusers_lora_config(model, name).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", METADATA_KEY: json.dumps(config, sort_keys=True)})
    return path

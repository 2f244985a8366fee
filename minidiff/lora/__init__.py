r"""LoRA from scratch (chapter 6): low-rank adapters for any Linear/Conv2d network, checked against peft.

Hu et al. 2021, eq. 3: h = W₀x + (α/r)·B A x with W₀ frozen, B ∈ ℝ^{d×r} zero-initialised and
A ∈ ℝ^{r×k}, r ≪ min(d, k). The package is split by idea:

* :mod:`~minidiff.lora.layers` — :class:`LoRALinear`, :class:`LoRAConv2d`: named adapters with their own
  scales (adapter arithmetic), ``merge`` / ``unmerge``;
* :mod:`~minidiff.lora.inject` — :func:`inject_lora` by names or patterns, :func:`remove_lora`,
  :func:`merge_lora`, :func:`lora_parameters`, :func:`trainable_parameter_count`, scales and
  :func:`lora_disabled` (the frozen base, which Concept Sliders need);
* :mod:`~minidiff.lora.io` — :func:`save_lora` / :func:`load_lora`, a few-KB safetensors file;
* :mod:`~minidiff.lora.diffusers_format` — the same adapter as diffusers' ``load_lora_weights`` reads it;
* :mod:`~minidiff.lora.spectrum` — :func:`weight_deltas`, :func:`energy_share`: why low rank works (ΔW's SVD).

In a notebook::

    report = inject_lora(ld.unet, ["to_q", "to_k", "to_v", "to_out.0"], r=4, alpha=4)
    fit(ld, ld.loss(), (latents, {"context": contexts}), steps=300)      # trains only A and B
    save_lora(ld.unet, "star.safetensors")
"""
from .diffusers_format import (
    diffusers_lora_config,
    diffusers_lora_state_dict,
    save_diffusers_lora,
)
from .inject import (
    LoRAReport,
    adapter_names,
    find_targets,
    inject_lora,
    lora_disabled,
    lora_layers,
    lora_parameters,
    lora_scales,
    merge_lora,
    remove_lora,
    set_lora_scale,
    trainable_parameter_count,
    unmerge_lora,
)
from .io import load_lora, lora_state_dict, read_lora_metadata, save_lora
from .layers import LoRAConv2d, LoRALayer, LoRALinear
from .spectrum import best_rank_r, effective_weight, energy_share, weight_deltas

__all__ = ["LoRAConv2d", "LoRALayer", "LoRALinear", "LoRAReport", "adapter_names", "best_rank_r",
           "diffusers_lora_config", "diffusers_lora_state_dict", "effective_weight", "energy_share", "find_targets",
           "inject_lora", "load_lora", "lora_disabled", "lora_layers",
           "lora_parameters", "lora_scales", "lora_state_dict", "merge_lora", "read_lora_metadata", "remove_lora",
           "save_diffusers_lora", "save_lora", "set_lora_scale", "trainable_parameter_count", "unmerge_lora",
           "weight_deltas"]

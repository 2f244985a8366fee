r"""Text to image with minidiff's own sampler and guidance on Stable Diffusion (chapter 10).

:func:`text_to_latents` is chapter 5's sampling recipe, unchanged, on SD's parts:

1. prompts -> context (B, L, D) and the null context (:mod:`minidiff.sd.prompts`);
2. the U-Net as an eps-model (:class:`~minidiff.sd.SDEps`), wrapped by
   :class:`~minidiff.guidance.ClassifierFreeGuidance` with diffusers' ``guidance_scale`` g = 1 + w
   (Ho & Salimans 2022, eq. 6: ε̃ = ε(∅) + g (ε(c) − ε(∅)));
3. :func:`minidiff.samplers.sample` with DDIM (Song et al. 2021, eq. 12) on the steps diffusers' scheduler
   would visit (:func:`~minidiff.sd.ddim_options`);
4. decode with the VAE through chapter 5's :class:`~minidiff.latent.DiffusersCodec` (:func:`decode_latents`).

Given the same initial latents, this reproduces ``StableDiffusionPipeline(..., output_type="latent")`` with a
``DDIMScheduler`` to float rounding (tests/test_sd.py checks 1e-4).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..checks import check_int, check_tensor
from ..guidance import ClassifierFreeGuidance, check_guidance_scale
from ..latent import DiffusersCodec
from ..samplers import sample
from .prompts import check_prompts, prompt_condition
from .unet import SDEps, ddim_options, sd_schedule

__all__ = ["decode_latents", "latent_shape", "text_to_latents"]


def latent_shape(pipe: Any, batch: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
    """(B, latent_channels, height/f, width/f); height/width default to the U-Net's ``sample_size``·f."""
    f = pipe.vae_scale_factor
    size = pipe.unet.config.sample_size * f
    height = check_int(size if height is None else height, "height", f)
    width = check_int(size if width is None else width, "width", f)
    if height % f or width % f:
        raise ValueError(f"height and width must be multiples of the VAE factor {f} (latents are f times smaller), "
                         f"got {height}x{width}; try {height // f * f}x{width // f * f}")
    return (check_int(batch, "batch", 1), pipe.unet.config.in_channels, height // f, width // f)


def text_to_latents(pipe: Any, prompts: str | Sequence[str], *, guidance_scale: float = 7.5, steps: int = 50,
                    eta: float = 0.0, negative: str | Sequence[str] | None = None, num_per_prompt: int = 1,
                    height: int | None = None, width: int | None = None, generator: torch.Generator | None = None,
                    latents: Tensor | None = None, eps_model: Any = None, extra_cond: Mapping[str, Tensor] | None = None,
                    progress: bool = True) -> Tensor:
    """Latents (B, 4, h, w) for the prompts, sampled by minidiff's DDIM with classifier-free guidance.

    guidance_scale: diffusers' g >= 1 (1: no guidance, the unconditional half is skipped as diffusers does).
    latents: the start x_T (B, 4, h, w); default drawn from ``generator`` in float32 on the CPU (diffusers'
    ``randn_tensor`` draws the same numbers for a CPU generator and float32). eps_model: the eps-model to sample
    (default ``SDEps.from_pipeline(pipe)``; pass a LoRA-adapted or steered one — its condition must then be a
    mapping whose "context" entry this function fills). extra_cond: more condition entries with batch B, e.g.
    ``{"c_add": edges}`` for a steered model; guidance nulls only the context, so they reach both halves.
    B = len(prompts) · num_per_prompt.
    """
    g = check_guidance_scale(guidance_scale, "guidance_scale")
    if g < 1:
        raise ValueError(f"guidance_scale is diffusers' g = 1 + w and must be >= 1 (1 = no guidance), got {g}")
    cond, null = prompt_condition(pipe, check_prompts(prompts), negative, num_per_prompt)
    model = SDEps.from_pipeline(pipe, null["context"]) if eps_model is None else eps_model
    shape = latent_shape(pipe, cond["context"].shape[0], height, width)
    if extra_cond is not None:
        if not isinstance(extra_cond, Mapping) or "context" in extra_cond:
            raise ValueError("extra_cond must be a mapping of condition entries other than 'context' "
                             f"(e.g. {{'c_add': edges}}), got {extra_cond!r:.80}")
        cond = {**cond, **extra_cond}
    if latents is not None:
        check_tensor(latents, "latents", floating=True)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (B = {shape[0]} prompts x num_per_prompt, latent "
                             f"size height/f x width/f), got {tuple(latents.shape)}")
    if g > 1:
        model = ClassifierFreeGuidance.from_guidance_scale(model, g, null=null)
    device = next(pipe.unet.parameters()).device
    return sample(model, sd_schedule(pipe), shape, "ddim", steps, eta, cond, generator, device=device, x_T=latents,
                  progress=progress, **ddim_options(pipe.scheduler))


@torch.no_grad()
def decode_latents(pipe: Any, latents: Tensor) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] from SD latents (B, 4, h, w), through chapter 5's
    :class:`~minidiff.latent.DiffusersCodec` (z / s, then the VAE decoder)."""
    codec = DiffusersCodec(pipe.vae)
    images = codec.decode(latents.to(pipe.vae.dtype)).float()
    return ((images + 1) / 2).clamp(0, 1)

r"""Blended latent diffusion: edit a masked region, keep the rest (Avrahami, Fried & Lischinski 2023; seed 002).

Given a source image's latents z_src, a mask m at latent resolution (1 = edit, 0 = keep) and a prompt for the
edited region, every denoising step is followed by a blend with the source *noised to the same level*:

.. math:: z_{t'} \leftarrow m \odot z^{fg}_{t'} + (1 - m) \odot z^{bg}_{t'},\qquad
          z^{bg}_{t'} = \sqrt{\bar\alpha_{t'}}\,z_{src} + \sqrt{1-\bar\alpha_{t'}}\,\varepsilon_{t'}

(Blended Latent Diffusion, Alg. 1: z_fg is the text-guided DDIM step from z_t, z_bg a fresh forward-process
sample q(z_{t'} | z_src), DDPM eq. 4, with new noise at every step). Outside the mask the trajectory *is*
the re-noised source, so the background of the result is z_src itself after the last step (t' = "x_0"); inside,
the model fills in the region in a way that matches the noisy context around it. The mask lives at latent
resolution — a latent cell covers f×f pixels — so :func:`latent_mask` shrinks an image mask by max-pooling
(a cell is edited if any of its pixels is).

:func:`blended_ddim_loop` is a sampler option for any eps-model (a generator of states, like
:func:`minidiff.samplers.ddim_loop`); :func:`blended_edit` runs it on a Stable Diffusion pipeline with text and
classifier-free guidance.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import check_int, check_real, check_tensor
from ..config import show_progress
from ..eps import EpsModel, call_eps
from ..forward import q_sample
from ..guidance import ClassifierFreeGuidance, check_guidance_scale
from ..samplers import ddim_step, ddim_timesteps, run_loop
from ..schedules import NoiseSchedule
from .prompts import prompt_condition
from .unet import SDEps, ddim_options, sd_schedule

__all__ = ["blended_ddim_loop", "blended_edit", "check_mask", "latent_mask"]


def latent_mask(mask: Tensor, factor: int) -> Tensor:
    """An image mask (B, 1, H, W) or (H, W) in [0, 1] -> (B or 1, 1, H/f, W/f): 1 where any pixel of the f×f
    cell is in the edit region (max-pooling), so the edit never misses a masked pixel."""
    f = check_int(factor, "factor", 1, hint=" (the VAE's downsampling factor, pipe.vae_scale_factor)")
    check_tensor(mask, "mask", floating=True)
    if mask.ndim == 2:
        mask = mask[None, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    if mask.shape[-2] % f or mask.shape[-1] % f:
        raise ValueError(f"mask size {tuple(mask.shape[-2:])} is not divisible by the VAE factor {f}; give the mask at "
                         "the image's size")
    return F.max_pool2d(mask, f)


def check_mask(mask: Any, latents: Tensor) -> Tensor:
    """``mask`` as a float tensor (1 or B, 1, h, w) in [0, 1] matching latents (B, c, h, w)."""
    check_tensor(mask, "mask", floating=True)
    b, _, h, w = latents.shape
    if mask.ndim != 4 or mask.shape[1] != 1 or tuple(mask.shape[-2:]) != (h, w) or mask.shape[0] not in (1, b):
        raise ValueError(f"mask must be at latent resolution, (1 or {b}, 1, {h}, {w}) for latents {tuple(latents.shape)},"
                         f" got {tuple(mask.shape)}; shrink an image mask with latent_mask(mask, pipe.vae_scale_factor)")
    if mask.numel() and (mask.min() < 0 or mask.max() > 1 or not torch.isfinite(mask).all()):
        raise ValueError(f"mask values must lie in [0, 1] (1 = edit, 0 = keep), got min {float(mask.min()):.3g} and "
                         f"max {float(mask.max()):.3g}")
    return mask.to(device=latents.device, dtype=latents.dtype)


@torch.no_grad()
def _blend_steps(eps_model: EpsModel, schedule: NoiseSchedule, x: Tensor, source: Tensor, mask: Tensor,
                 ts: list[int], cond: Any, eta: float, final_alpha_bar: float, generator: torch.Generator | None,
                 progress: bool) -> Iterator[dict[str, Any]]:
    for t, t_prev in tqdm(list(zip(ts, ts[1:] + [-1])), desc="blended DDIM", disable=not show_progress(progress),
                          leave=False):
        eps = call_eps(eps_model, x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), cond)
        foreground = ddim_step(schedule, x, t, t_prev, eps, eta, generator=generator, final_alpha_bar=final_alpha_bar)
        # the source at the same noise level, with fresh noise (Alg. 1); at the end (t' = -1) the source itself
        background = source if t_prev < 0 else q_sample(schedule, source, t_prev, generator=generator)
        x = mask * foreground + (1 - mask) * background       # exact where m is 0 or 1
        yield {"t": t, "x": x, "foreground": foreground, "background": background}


def blended_ddim_loop(eps_model: EpsModel, schedule: NoiseSchedule, source: Tensor, mask: Tensor, *,
                      steps: int = 50, cond: Any = None, x_T: Tensor | None = None, t_start: int | None = None,
                      eta: float = 0.0, generator: torch.Generator | None = None, spacing: str = "leading",
                      steps_offset: int = 0, final_alpha_bar: float = 1.0, progress: bool = True
                      ) -> Iterator[dict[str, Any]]:
    """Blended DDIM (module docstring) from x_T: yields ``{"t", "x", "foreground", "background"}`` after each step,
    where ``x = m ⊙ foreground + (1 − m) ⊙ background`` is what the next step starts from.

    source: latents (B, c, h, w) of the image to edit; mask: (1 or B, 1, h, w) in [0, 1] (:func:`latent_mask`).
    x_T: start latents (default: N(0, I) from ``generator``). t_start: start from the source noised to step
    t_start instead (an SDEdit-style strength; x_T must then be None), visiting only the DDIM steps below it.
    Noise (start, re-noising, η > 0) is drawn from ``generator`` on the CPU in step order. The other arguments are
    :func:`minidiff.samplers.ddim_loop`'s (``ddim_options(pipe)`` gives SD's spacing, offset and final ᾱ).
    """
    check_tensor(source, "source", floating=True)
    if source.ndim != 4:
        raise ValueError(f"source must be latents (B, c, h, w), got {tuple(source.shape)}")
    mask = check_mask(mask, source)
    steps = check_int(steps, "steps", 1, schedule.T)
    eta = check_real(eta, "eta", 0.0)
    ts = ddim_timesteps(schedule.T, steps, spacing, steps_offset)
    if t_start is not None:
        if x_T is not None:
            raise ValueError("give x_T (start from noise) or t_start (start from the noised source), not both")
        t_start = check_int(t_start, "t_start", 0, schedule.T - 1)
        ts = [t_start] + [t for t in ts if t < t_start]
        x = q_sample(schedule, source, t_start, generator=generator)
    elif x_T is None:
        x = torch.randn(source.shape, generator=generator).to(source)
    else:
        check_tensor(x_T, "x_T", floating=True)
        if x_T.shape != source.shape:
            raise ValueError(f"x_T must have the shape of source {tuple(source.shape)}, got {tuple(x_T.shape)}")
        x = x_T.to(source)
    final = check_real(final_alpha_bar, "final_alpha_bar", 0.0, 1.0, low_open=True)
    return _blend_steps(eps_model, schedule, x, source, mask, ts, cond, eta, final, generator, progress)


def blended_edit(pipe: Any, source: Tensor, mask: Tensor, prompts: str | Sequence[str], *,
                 guidance_scale: float = 7.5, steps: int = 50, negative: str | Sequence[str] | None = None,
                 generator: torch.Generator | None = None, t_start: int | None = None, eps_model: Any = None,
                 progress: bool = True) -> Tensor:
    """Edited latents (B, c, h, w): the masked region regenerated for ``prompts`` (one per source image, or one for
    all) with classifier-free guidance (diffusers' g = ``guidance_scale``), the rest kept from ``source``.

    source: the image's latents (``DiffusersCodec(pipe.vae).encode(images)``); mask: at latent resolution,
    (1 or B, 1, h, w) (:func:`latent_mask` of an image mask).
    """
    check_tensor(source, "source", floating=True)
    cond, null = prompt_condition(pipe, prompts, negative)
    batch = source.shape[0] if source.ndim == 4 else None
    if batch is not None and cond["context"].shape[0] not in (1, batch):
        raise ValueError(f"give one prompt or one per source image ({batch}), got {cond['context'].shape[0]}")
    if batch is not None and cond["context"].shape[0] == 1:
        cond = {"context": cond["context"].expand(batch, -1, -1)}
    g = check_guidance_scale(guidance_scale, "guidance_scale")
    model = SDEps.from_pipeline(pipe, null["context"]) if eps_model is None else eps_model
    if g > 1:
        model = ClassifierFreeGuidance.from_guidance_scale(model, g, null=null)
    device = next(pipe.unet.parameters()).device
    source = source.to(device)
    loop = blended_ddim_loop(model, sd_schedule(pipe), source, mask.to(device), steps=steps, cond=cond,
                             generator=generator, t_start=t_start, progress=progress, **ddim_options(pipe))
    return run_loop(loop, source)

r"""Latent diffusion: the denoiser works on the codec's latents (chapter 5; Rombach et al. 2022, LDM).

LDM's objective (Sec. 3.3, eqs. 2–3) is DDPM's L_simple with x replaced by z = 𝓔(x) and the condition
y entering through τ_θ(y) (cross-attention, eq. 3):

.. math:: L_{LDM} = \mathbb E_{\mathcal E(x),\, y,\, \varepsilon \sim N(0,1),\, t}
   \big\|\varepsilon - \varepsilon_\theta(z_t, t, \tau_\theta(y))\big\|^2.

So :class:`LatentDiffusion` *is* an eps-model on latents — ``ld(z_t, t, cond)`` is the U-Net's call — and
everything of chapters 2–4 applies unchanged: :func:`minidiff.train.diffusion_loss` with condition
dropout trains it, :func:`minidiff.samplers.sample` and :class:`~minidiff.guidance.ClassifierFreeGuidance`
sample it; only :meth:`LatentDiffusion.sample` adds the final decode 𝓓(z_0). The codec is frozen
(LDM trains the autoencoder first), so the training set is encoded once (:meth:`encode_dataset`).

Text conditioning arrives as ``cond = {"context": (B, L, D)}`` and its null (the empty caption's
context) as ``null_cond``; this module never sees a text encoder.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import cond as C
from ..checkpoint import record_config
from ..checks import check_int, check_real, check_tensor
from ..guidance import ClassifierFreeGuidance, check_guidance_scale
from ..samplers import sample as run_sampler
from ..schedules import NoiseSchedule
from ..train import diffusion_loss
from .codec import Codec, decode_in_batches, encode_in_batches

__all__ = ["LatentDiffusion"]


@record_config
class LatentDiffusion(nn.Module):
    """An eps-model on latents plus its codec: ``ld(z_t, t, cond)`` -> ε̂ (B, c, h, w).

    Args:
        unet: the denoiser, an eps-model on latents (B, c, h, w), e.g. ``minidiff.UNet(image_size=8,
            in_channels=4, context_dim=D)`` for a 32×32 image and an f = 4 codec with 4 latent channels.
        codec: a :class:`~minidiff.latent.Codec` (:class:`~minidiff.latent.KLAutoencoder`,
            :class:`~minidiff.latent.DiffusersCodec`); frozen and put in eval mode here.
        schedule: the noise schedule of training and sampling.
        image_shape: (C, H, W) of the images; the latents are ``codec.latent_shape(image_shape)``, checked
            against the U-Net's ``in_channels`` and ``spatial_size`` when it has them.
        null_cond: the null condition for classifier-free guidance and condition dropout, e.g.
            ``{"context": empty_caption_context}`` (1, L, D); default: the U-Net's own (a null label or None).

    Saved and loaded whole by :func:`~minidiff.save_model` / :func:`~minidiff.load_model` when the U-Net and
    the codec are minidiff modules (a diffusers VAE is not: save ``ld.unet`` then).
    """

    def __init__(self, unet: nn.Module, codec: Codec, schedule: NoiseSchedule, *,
                 image_shape: Sequence[int] = (3, 32, 32), null_cond: C.NullSpec | None = None) -> None:
        super().__init__()
        if not isinstance(unet, nn.Module):
            raise TypeError(f"unet must be an nn.Module eps-model (z_t, t, cond) -> eps, got {type(unet).__name__}")
        if not isinstance(codec, Codec):
            raise TypeError(f"codec must implement the Codec interface (encode, decode, scaling_factor, "
                            f"latent_shape), got {type(codec).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        schedule.check_model(unet)
        self.unet, self.codec, self.schedule = unet, codec, schedule
        if isinstance(codec, nn.Module):
            codec.requires_grad_(False).eval()
        self.image_shape = tuple(image_shape) if isinstance(image_shape, (tuple, list, torch.Size)) else image_shape
        self.latent_shape = tuple(codec.latent_shape(self.image_shape))
        self._check_unet(unet)
        self._null = null_cond

    def _check_unet(self, unet: nn.Module) -> None:
        """The U-Net must read the codec's latents (when it says what it reads)."""
        channels, size = getattr(unet, "in_channels", None), getattr(unet, "spatial_size", None)
        if channels is None or size is None:
            return
        if (channels, *size) != self.latent_shape:
            c, *hw = self.latent_shape
            raise ValueError(f"latent shape mismatch: the codec maps images {self.image_shape} to latents "
                             f"{self.latent_shape} but the U-Net reads {(channels, *size)}; build it with "
                             f"UNet(image_size={tuple(hw) if hw[0] != hw[-1] else hw[0]}, in_channels={c}, ...)")

    # ------------------------------------------------------------------ the eps-model
    @property
    def num_timesteps(self) -> int:
        return self.schedule.T

    @property
    def null_cond(self) -> C.NullSpec | None:
        """The null condition: the one given at construction, else the U-Net's (:func:`minidiff.cond.model_null`)."""
        return self._null if self._null is not None else C.model_null(self.unet)

    def forward(self, z_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """ε̂(z_t, t, cond): z_t (B, c, h, w), t (B,) step indices -> (B, c, h, w) — the U-Net's call."""
        return self.unet(z_t, t) if cond is None else self.unet(z_t, t, cond)

    # ------------------------------------------------------------------ data in, images out
    def encode_dataset(self, images: Tensor, batch_size: int = 256, *, sample: bool = False,
                       generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents of a whole dataset, once (the codec is frozen): (N, C, H, W) -> (N, c, h, w) on the
        CPU. ``sample``: posterior draws instead of means (LDM samples; the means are a deterministic choice)."""
        check_tensor(images, "images", floating=True, nonempty=True)
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.image_shape))}) (image_shape), "
                             f"got {tuple(images.shape)}")
        return encode_in_batches(self.codec, images, batch_size, sample=sample, generator=generator,
                                 device=_device_of(self.codec))

    def loss(self, p_uncond: float = 0.0, keys: Sequence[str] = C.NULL_KEYS):
        """L_LDM (module docstring) as a ``loss_fn`` for :func:`minidiff.train.train` on batches of latents
        z0 or (z0, cond): :func:`minidiff.train.diffusion_loss` with condition dropout ``p_uncond`` to
        :attr:`null_cond` (Ho & Salimans 2022, Alg. 1). Train ``ld`` itself (its codec is frozen)."""
        p_uncond = check_real(p_uncond, "p_uncond", 0.0, 1.0)
        if p_uncond > 0 and self.null_cond is None:
            raise ValueError(f"p_uncond={p_uncond} needs a null condition: build LatentDiffusion(..., null_cond=...) "
                             "(e.g. {'context': the empty caption's context}) or use a class-conditional U-Net")
        return diffusion_loss(self.schedule, p_uncond, null=self._null, keys=keys)

    @torch.no_grad()
    def sample(self, n: int, cond: Any = None, *, w: float = 0.0, method: str = "ddim", steps: int | None = None,
               eta: float = 0.0, generator: torch.Generator | None = None, decode: bool = True, clamp: bool = True, progress: bool = True, **loop_kwargs: Any) -> Tensor:
        """n images (n, C, H, W): sample latents with minidiff's samplers, then decode them.

        cond: None or a condition with batch n, e.g. ``{"context": (n, L, D)}``. w: classifier-free guidance
        weight >= 0 (Ho & Salimans eq. 6; 0 = the conditional model) with :attr:`null_cond` as ∅. method /
        steps / eta / loop_kwargs: as :func:`minidiff.samplers.sample` (DDIM: 50 steps by default; DDPM: all T).
        decode=False returns the latents (n, c, h, w); clamp: clip decoded images to [-1, 1]. Runs where ``ld``
        lives (``ld.to(device)``); the start noise is drawn on the CPU ``generator``, so seeds match across devices.
        """
        n = check_int(n, "n (number of samples)", 1)
        w = check_guidance_scale(w, "w")
        if not isinstance(clamp, bool) or not isinstance(decode, bool):
            raise TypeError(f"decode and clamp must be True or False, got {decode!r} and {clamp!r}")
        model: Any = self
        if w > 0:
            if cond is None:
                raise ValueError(f"w={w} guides towards a condition: pass cond (batch n={n}), or w=0 to sample "
                                 "unconditionally")
            model = ClassifierFreeGuidance(self, w, null=self.null_cond)
        z = run_sampler(model, self.schedule, (n, *self.latent_shape), method, steps, eta, cond, generator,
                        progress=progress, **loop_kwargs)
        if not decode:
            return z
        x = decode_in_batches(self.codec, z)
        return x.clamp(-1, 1) if clamp else x


def _device_of(module: Any) -> torch.device | None:
    """Where a module's first parameter or buffer lives (None for a codec that is not an nn.Module)."""
    if not isinstance(module, nn.Module):
        return None
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)
    return None if tensor is None else tensor.device

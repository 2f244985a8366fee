"""An adapter that makes a diffusers ``AutoencoderKL`` (Stable Diffusion's VAE) a minidiff :class:`Codec`
(chapter 5; chapter 10 runs :class:`~minidiff.latent.LatentDiffusion` with SD's real VAE through it).

diffusers' VAE works on raw latents: ``vae.encode(x).latent_dist`` is the posterior (mean, logvar) and
``vae.decode(z).sample`` the image; the pipelines scale by hand, ``z = (z_raw − shift)·s`` with
``s = vae.config.scaling_factor`` (0.18215 for SD 1.x) and ``shift = vae.config.shift_factor`` (None
before SD 3). The adapter does exactly that, so its latents are the ones the SD U-Net was trained on.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_real, check_tensor
from .codec import check_images, latent_shape_for
from .posterior import DiagonalGaussian

__all__ = ["DiffusersCodec"]


class DiffusersCodec(nn.Module):
    """A diffusers ``AutoencoderKL`` as a codec: ``encode`` -> (z_raw − shift)·s, ``decode`` -> 𝓓(z/s + shift).

    Args:
        vae: a diffusers ``AutoencoderKL`` (real weights via ``AutoencoderKL.from_pretrained`` or a tiny one
            built from a config).
        scaling_factor: s; default ``vae.config.scaling_factor``. Pass
            :func:`~minidiff.latent.estimate_scaling_factor`'s value for a VAE trained on other data.
    """

    def __init__(self, vae: Any, scaling_factor: float | None = None) -> None:
        super().__init__()
        config = getattr(vae, "config", None)
        if not isinstance(vae, nn.Module) or not hasattr(vae, "encode") or config is None:
            raise TypeError(f"vae must be a diffusers AutoencoderKL, got {type(vae).__name__}")
        self.vae = vae
        s = config.scaling_factor if scaling_factor is None else scaling_factor
        self._scaling_factor = check_real(s, "scaling_factor", 0.0, low_open=True)
        shift = getattr(config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else check_real(shift, "vae.config.shift_factor")
        self.in_channels = int(config.in_channels)
        self.z_channels = int(config.latent_channels)
        self.f = 2 ** (len(config.block_out_channels) - 1)     # one stride-2 stage per block but the last

    @property
    def scaling_factor(self) -> float:
        return self._scaling_factor

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """(…, C, H, W) -> (…, latent_channels, H/f, W/f), f = 2^(len(block_out_channels) − 1)."""
        return latent_shape_for(image_shape, self.in_channels, self.z_channels, self.f)

    def posterior(self, x: Tensor) -> DiagonalGaussian:
        """diffusers' ``latent_dist`` for x: (B, C, H, W) as a :class:`DiagonalGaussian` over raw latents."""
        dist = self.vae.encode(check_images(x, self.in_channels, self.f)).latent_dist
        return DiagonalGaussian(dist.mean, dist.logvar)

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents (z_raw − shift)·s: (B, C, H, W) -> (B, c, H/f, W/f); z_raw the mean or a draw."""
        q = self.posterior(x)
        z = q.sample(generator) if sample else q.mode()
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        """Images 𝓓(z/s + shift) from scaled latents z: (B, c, h, w) -> (B, C, f·h, f·w)."""
        check_tensor(z, "z", floating=True)
        if z.ndim != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"latents must have shape (B, {self.z_channels}, h, w) for this VAE "
                             f"(latent_channels={self.z_channels}), got {tuple(z.shape)}")
        return self.vae.decode(z / self.scaling_factor + self.shift_factor).sample

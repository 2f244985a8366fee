r"""The codec interface of latent diffusion, and helpers that work for any codec (chapter 5, reused in 10).

A *codec* maps images to latents and back. Latent diffusion (Rombach et al. 2022, LDM Sec. 3) trains
the denoiser on z = 𝓔(x) and decodes its samples with 𝓓; minidiff's :class:`KLAutoencoder` and
Stable Diffusion's VAE (through :class:`~minidiff.latent.DiffusersCodec`) are both codecs, so one
:class:`~minidiff.latent.LatentDiffusion` runs on either.

Latents are **scaled**: ``encode`` returns s·z_raw with the scaling factor s = 1 / std(z_raw) estimated
on data (LDM Sec. 4.3.2, ``scale_by_std`` in its code; Stable Diffusion's s = 0.18215), so the latents the
diffusion model sees have unit variance like its N(0, I) prior; ``decode`` divides by s before decoding.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import check_int, check_tensor
from ..config import show_progress

__all__ = [
    "Codec",
    "check_images",
    "decode_in_batches",
    "encode_in_batches",
    "estimate_scaling_factor",
    "latent_shape_for",
]


@runtime_checkable
class Codec(Protocol):
    """What latent diffusion needs from an autoencoder.

    * ``encode(x, *, sample=False, generator=None)``: images (B, C, H, W) -> scaled latents (B, c, H/f, W/f):
      the posterior mean, or a draw from it with ``sample=True``;
    * ``decode(z)``: scaled latents -> images;
    * ``scaling_factor``: s, the float ``encode`` multiplies the raw latents by;
    * ``latent_shape(image_shape)``: (C, H, W) -> (c, H/f, W/f) (leading batch dims are kept).
    """

    @property
    def scaling_factor(self) -> float: ...

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]: ...


def latent_shape_for(image_shape: Sequence[int], in_channels: int, z_channels: int, f: int) -> tuple[int, ...]:
    """(…, C, H, W) -> (…, z_channels, H/f, W/f), with errors naming the fix when C or the size do not fit."""
    if isinstance(image_shape, torch.Size):
        image_shape = tuple(image_shape)
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) < 3:
        raise ValueError(f"image_shape must be (C, H, W) or (B, C, H, W), got {image_shape!r}")
    *lead, c, h, w = (check_int(s, "image_shape entries", 1) for s in image_shape)
    if c != in_channels:
        raise ValueError(f"images must have {in_channels} channels, got {c} (image_shape {tuple(image_shape)})")
    bad = [s for s in (h, w) if s % f]
    if bad:
        near = sorted({(s // f) * f for s in bad if s >= f} | {(s // f + 1) * f for s in bad})
        raise ValueError(f"image size {h}×{w} is not divisible by the downsampling factor f={f}: "
                         f"crop, pad or resize the images to a multiple of {f} (e.g. {near})")
    return (*lead, z_channels, h // f, w // f)


def check_images(x: Tensor, in_channels: int, f: int, name: str = "x") -> Tensor:
    """``x`` if it is a floating batch (B, in_channels, H, W) with H and W divisible by f."""
    check_tensor(x, name, floating=True)
    if x.ndim != 4:
        raise ValueError(f"{name} must be images (B, C, H, W), got shape {tuple(x.shape)}")
    latent_shape_for(x.shape, in_channels, 1, f)
    return x


def _batches(x: Tensor, batch_size: int, desc: str) -> list[Tensor]:
    check_tensor(x, "images", floating=True, min_ndim=2, nonempty=True)
    batch_size = check_int(batch_size, "batch_size", 1)
    chunks = list(torch.split(x, batch_size))
    return tqdm(chunks, desc=desc, disable=not show_progress() or len(chunks) < 4, leave=False)


@torch.no_grad()
def encode_in_batches(codec: Codec, images: Tensor, batch_size: int = 256, *, sample: bool = False,
                      generator: torch.Generator | None = None, device: str | torch.device | None = None) -> Tensor:
    """``codec.encode`` over a whole dataset, ``batch_size`` images at a time: (N, C, H, W) -> (N, c, h, w)
    on the CPU. Each batch is moved to ``device`` (default: where the images are)."""
    out = [codec.encode(b.to(device) if device is not None else b, sample=sample, generator=generator).cpu()
           for b in _batches(images, batch_size, "encode")]
    return torch.cat(out)


@torch.no_grad()
def decode_in_batches(codec: Codec, latents: Tensor, batch_size: int = 256) -> Tensor:
    """``codec.decode`` over many latents, ``batch_size`` at a time: (N, c, h, w) -> (N, C, H, W)."""
    return torch.cat([codec.decode(b) for b in _batches(latents, batch_size, "decode")])


@torch.no_grad()
def estimate_scaling_factor(codec: Codec, images: Tensor, batch_size: int = 256, *, sample: bool = False,
                            generator: torch.Generator | None = None,
                            device: str | torch.device | None = None) -> float:
    r"""The s that gives the codec's latents unit variance on ``images``: s = 1 / std(z_raw)  (LDM Sec. 4.3.2;
    the latent-diffusion code takes ``1 / z.flatten().std()`` of the first batch, Stable Diffusion's 0.18215).

    Works for any codec whatever its current factor s₀: its latents are s₀·z_raw, so the new factor is
    s₀ / std(encode(images)). ``sample``: estimate on posterior draws instead of means; ``device``: where
    the codec runs (images are moved there batch by batch).
    """
    z = encode_in_batches(codec, images, batch_size, sample=sample, generator=generator, device=device)
    std = float(z.double().std())
    if not std > 0:
        raise ValueError(f"the latents of these images have std {std}: cannot scale them to unit variance "
                         "(all images identical, or an encoder that outputs constants?)")
    return float(codec.scaling_factor) / std

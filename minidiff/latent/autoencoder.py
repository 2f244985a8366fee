r"""A small KL-regularised convolutional autoencoder: the "perceptual compression" stage of latent
diffusion (chapter 5; Rombach et al. 2022, LDM Sec. 3.1).

The encoder 𝓔 maps x: (B, C, H, W) to the posterior q(z | x) = N(μ, diag σ²) over latents
(B, z_channels, H/f, W/f) with downsampling factor f = H/h = 2^m (LDM Sec. 3.1), here f ∈ {2, 4, 8};
the decoder 𝓓 maps a latent back to an image. Blocks are GroupNorm + SiLU ResBlocks with stride-2
convolutions down and nearest-upsample + conv up (LDM's first stage in miniature, no attention).

Loss (:func:`vae_loss`): the β-VAE objective (Higgins et al. 2017) per pixel value,

.. math:: \mathcal L = \frac{1}{D}\Big(\|x - \mathcal D(z)\|^2 + \beta\, D_{KL}(q(z|x)\,\|\,N(0, I))\Big),
   \qquad z \sim q(z|x),\ D = C H W.

With a Gaussian decoder N(𝓓(z), σ²I) the negative ELBO is ‖x − 𝓓(z)‖²/(2σ²) + KL + const, i.e. this loss
times D/(2σ²) with β = 2σ²: small β is LDM's "slight KL-penalty" (their weight is ~1e-6 on a summed
L1 + perceptual loss) that keeps the latents near N(0, I) without blurring the reconstructions.

The **scaling factor** s (a buffer, so :func:`~minidiff.save_model` / :func:`~minidiff.load_model` and
:func:`~minidiff.cache.load_or_train` keep it) multiplies the latents ``encode`` returns; estimate it
with :meth:`KLAutoencoder.fit_scaling_factor` after training (:func:`train_autoencoder` does both).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import record_config
from ..checks import check_int, check_real, check_tensor
from ..nets.attention import group_norm
from ..train import train
from .codec import check_images, estimate_scaling_factor, latent_shape_for
from .posterior import DiagonalGaussian

__all__ = ["FACTORS", "KLAutoencoder", "ResBlock", "evaluate_autoencoder", "train_autoencoder", "vae_loss"]

#: supported downsampling factors f = 2^m
FACTORS = (2, 4, 8)


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1×1 conv on the skip when the width changes.
    x: (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = group_norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def _head(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    """GN -> SiLU -> 3×3 conv: the output layer of the encoder and of the decoder."""
    return nn.Sequential(group_norm(c_in, groups), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))


@record_config
class KLAutoencoder(nn.Module):
    """x: (B, C, H, W) -> q(z | x) over (B, z_channels, H/f, W/f) -> x̂: (B, C, H, W); a :class:`Codec`.

    Args:
        in_channels: C of the images (3 for RGB, 1 for digits).
        z_channels: latent channels c (Stable Diffusion: 4).
        f: downsampling factor, one of :data:`FACTORS`; H and W must be divisible by it.
        base_channels: width at full resolution; level i has base·channel_mults[i].
        channel_mults: log2(f) + 1 widths multipliers, full resolution first; default (1, 2, …, 2).
        num_res_blocks: ResBlocks per level (encoder and decoder).
        groups: GroupNorm groups (capped at a layer's width; must divide the widths).

    ``encode``/``decode`` use *scaled* latents s·z (the codec contract); :meth:`posterior` and
    :meth:`decode_raw` work on raw ones (the training path). ``forward(x, generator)`` returns
    ``(x̂, posterior)`` with z drawn from the posterior.
    """

    def __init__(self, in_channels: int = 3, z_channels: int = 4, f: int = 4, base_channels: int = 16,
                 channel_mults: Sequence[int] | None = None, num_res_blocks: int = 1, groups: int = 8) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.z_channels = check_int(z_channels, "z_channels", 1)
        self.f = check_int(f, "f (downsampling factor)", hint=f"; one of {FACTORS}")
        if self.f not in FACTORS:
            raise ValueError(f"f (downsampling factor) must be one of {FACTORS}, got {f!r}")
        levels = int(math.log2(self.f))
        widths = self._widths(check_int(base_channels, "base_channels", 1), channel_mults, levels)
        n, g = check_int(num_res_blocks, "num_res_blocks", 1), check_int(groups, "groups", 1)
        self.encoder = self._encoder(widths, n, g)
        self.decoder = self._decoder(widths, n, g)
        self.register_buffer("_scaling_factor", torch.tensor(1.0))    # float32: MPS has no float64

    @staticmethod
    def _widths(base: int, channel_mults: Sequence[int] | None, levels: int) -> list[int]:
        mults = (1,) + (2,) * levels if channel_mults is None else channel_mults
        if isinstance(mults, (str, bytes)) or not isinstance(mults, Sequence) or len(mults) != levels + 1:
            raise ValueError(f"channel_mults must list log2(f) + 1 = {levels + 1} ints (full resolution first), "
                             f"got {channel_mults!r}")
        return [base * check_int(m, f"channel_mults[{i}]", 1) for i, m in enumerate(mults)]

    def _encoder(self, widths: list[int], n: int, g: int) -> nn.Sequential:
        """conv_in, then per level: n ResBlocks and a stride-2 conv; a middle ResBlock; head -> 2c (μ, log σ²)."""
        layers: list[nn.Module] = [nn.Conv2d(self.in_channels, widths[0], 3, padding=1)]
        for i in range(len(widths) - 1):
            layers += [ResBlock(widths[i], widths[i], g) for _ in range(n)]
            layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
        layers += [ResBlock(widths[-1], widths[-1], g), _head(widths[-1], 2 * self.z_channels, g)]
        return nn.Sequential(*layers)

    def _decoder(self, widths: list[int], n: int, g: int) -> nn.Sequential:
        """The mirror image: conv_in from c, a middle ResBlock, per level up: 2× nearest + conv, n ResBlocks."""
        layers: list[nn.Module] = [nn.Conv2d(self.z_channels, widths[-1], 3, padding=1),
                                   ResBlock(widths[-1], widths[-1], g)]
        for i in reversed(range(len(widths) - 1)):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)]
            layers += [ResBlock(widths[i], widths[i], g) for _ in range(n)]
        layers.append(_head(widths[0], self.in_channels, g))
        return nn.Sequential(*layers)

    # ------------------------------------------------------------------ the scaling factor
    @property
    def scaling_factor(self) -> float:
        """s: ``encode`` returns s·z_raw. 1.0 until :meth:`fit_scaling_factor` or :meth:`set_scaling_factor`."""
        return float(self._scaling_factor)

    def set_scaling_factor(self, value: float) -> None:
        """Store s (a finite number > 0) in the model's buffer (saved with its weights)."""
        self._scaling_factor.fill_(check_real(value, "scaling_factor", 0.0, low_open=True))

    def fit_scaling_factor(self, images: Tensor, batch_size: int = 256, *, sample: bool = False,
                           generator: torch.Generator | None = None) -> float:
        """Set s = 1 / std of the raw latents of ``images`` (:func:`~minidiff.latent.estimate_scaling_factor`)
        so ``encode(images)`` has unit variance; return it."""
        device = self._scaling_factor.device
        self.set_scaling_factor(estimate_scaling_factor(self, images, batch_size, sample=sample, generator=generator,
                                                        device=device))
        return self.scaling_factor

    # ------------------------------------------------------------------ the codec
    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """(…, C, H, W) -> (…, z_channels, H/f, W/f); errors for the wrong C or a size not divisible by f."""
        return latent_shape_for(image_shape, self.in_channels, self.z_channels, self.f)

    def posterior(self, x: Tensor) -> DiagonalGaussian:
        """q(z | x) over raw latents: x: (B, C, H, W) -> N(μ, σ²) with μ, log σ²: (B, z_channels, H/f, W/f)."""
        mean, logvar = self.encoder(check_images(x, self.in_channels, self.f)).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents s·z: (B, C, H, W) -> (B, z_channels, H/f, W/f); z = μ, or z ~ q(z|x) with ``sample``."""
        q = self.posterior(x)
        z = q.sample(generator) if sample else q.mode()
        return z * self.scaling_factor

    def decode_raw(self, z: Tensor) -> Tensor:
        """𝓓(z) for raw latents z: (B, z_channels, h, w) -> images (B, C, f·h, f·w)."""
        check_tensor(z, "z", floating=True)
        if z.ndim != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"latents must have shape (B, {self.z_channels}, h, w) for this autoencoder "
                             f"(z_channels={self.z_channels}, f={self.f}), got {tuple(z.shape)}")
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Images from scaled latents: 𝓓(z / s). z: (B, z_channels, h, w) -> (B, C, f·h, f·w)."""
        return self.decode_raw(z / self.scaling_factor)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, DiagonalGaussian]:
        """(x̂, q(z|x)) with x̂ = 𝓓(z), z ~ q(z|x) (reparameterised; ``generator`` draws the noise)."""
        q = self.posterior(x)
        return self.decode_raw(q.sample(generator)), q


def _images_of(batch: Any) -> Tensor:
    """The images of a batch: x, or the first entry of (x, ...) (labels and captions are ignored)."""
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    return check_tensor(x, "batch images", floating=True)


def vae_loss(beta: float = 1e-3):
    """β-VAE loss (module docstring) as a ``loss_fn(model, batch, generator) -> (loss, {"rec", "kl"})``
    for :func:`minidiff.train.train` / :func:`~minidiff.train.fit`.

    beta: KL weight β >= 0 (0: a plain autoencoder). Records: ``rec`` = mean squared error per pixel value,
    ``kl`` = KL(q(z|x) ‖ N(0, I)) in nats per image (the rate). A batch is x (B, C, H, W) or (x, ...).
    """
    beta = check_real(beta, "beta", 0.0, hint=" (the KL weight; 0 gives a plain autoencoder)")

    def loss_fn(model: KLAutoencoder, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x = _images_of(batch)
        x_hat, q = model(x, generator)
        rec = F.mse_loss(x_hat, x)
        kl = q.kl().mean()
        return rec + beta * kl / x[0].numel(), {"rec": rec.detach(), "kl": kl.detach()}

    return loss_fn


def train_autoencoder(model: KLAutoencoder, images: Tensor, *, beta: float = 1e-3, steps: int = 300,
                      batch_size: int = 32, lr: float = 3e-3, seed: int = 0, **train_kwargs: Any) -> list[dict[str, float]]:
    """Train ``model`` with :func:`vae_loss` on ``images`` (N, C, H, W), then fit its scaling factor on them.

    A few lines for a notebook, e.g. with the cache:
    ``load_or_train("kl-ae", cfg, KLAutoencoder(f=4), lambda m: train_autoencoder(m, x, steps=300))``.
    Returns the step records ``{"step", "loss", "lr", "rec", "kl"}``; ``train_kwargs`` go to
    :func:`minidiff.train.train` (e.g. ``device``, ``warmup``).
    """
    if not isinstance(model, KLAutoencoder):
        raise TypeError(f"model must be a KLAutoencoder, got {type(model).__name__}")
    check_images(check_tensor(images, "images", floating=True, nonempty=True), model.in_channels, model.f, "images")
    records = list(train(model, vae_loss(beta), images, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                         desc="autoencoder", **train_kwargs))
    model.fit_scaling_factor(images, generator=torch.Generator().manual_seed(seed))
    return records



@torch.no_grad()
def evaluate_autoencoder(model: KLAutoencoder, images: Tensor, batch_size: int = 256) -> dict[str, float]:
    """The rate–distortion point of ``model`` on ``images`` (N, C, H, W), decoding the posterior means:
    ``{"mse": per pixel value, "kl": KL(q(z|x) ‖ N(0, I)) in nats per image, "kl_per_dim": kl / latent size}``."""
    if not isinstance(model, KLAutoencoder):
        raise TypeError(f"model must be a KLAutoencoder, got {type(model).__name__}")
    check_tensor(images, "images", floating=True, nonempty=True)
    batch_size = check_int(batch_size, "batch_size", 1)
    device = model._scaling_factor.device
    sq_err = kl = 0.0
    for x in torch.split(images, batch_size):
        q = model.posterior(x.to(device))
        sq_err += float((model.decode_raw(q.mode()) - x.to(device)).double().pow(2).sum())
        kl += float(q.kl().double().sum())
    n = images.shape[0]
    latent_size = math.prod(model.latent_shape(images.shape[1:]))
    return {"mse": sq_err / images.numel(), "kl": kl / n, "kl_per_dim": kl / n / latent_size}

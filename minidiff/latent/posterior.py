r"""The encoder's posterior q(z | x) = N(μ, diag σ²) of a KL-regularised autoencoder (chapter 5).

Closed forms used by the autoencoder's loss (Kingma & Welling 2014, "Auto-Encoding Variational Bayes",
App. B; the KL-reg of Rombach et al. 2022, LDM Sec. 3 and App. G), summed over every non-batch dimension:

.. math:: D_{KL}\big(N(\mu, \sigma^2)\,\|\,N(0, 1)\big) = \tfrac12 \sum \big(\mu^2 + \sigma^2 - 1 - \log\sigma^2\big),
   \qquad -\log q(x) = \tfrac12 \sum \Big(\log 2\pi + \log\sigma^2 + \frac{(x-\mu)^2}{\sigma^2}\Big).

They are written with log σ² (what the encoder outputs) rather than through
:func:`minidiff.forward.gaussian_kl`: σ² = exp(log σ²) underflows in float32 for very confident
latents, and log(σ²) would then be −inf. Like diffusers' ``DiagonalGaussianDistribution``, log σ² is
clamped to [−30, 20] so an untrained encoder cannot overflow exp.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_tensor
from ..forward import noise_like

__all__ = ["LOGVAR_RANGE", "DiagonalGaussian"]

#: log σ² is clamped to this range (as diffusers' DiagonalGaussianDistribution does)
LOGVAR_RANGE = (-30.0, 20.0)


def _sum_dims(x: Tensor) -> Tensor:
    """(B, ...) -> (B,): the sum over every dimension but the batch."""
    return x.flatten(1).sum(dim=1)


class DiagonalGaussian:
    """q(z | x) = N(mean, diag exp(logvar)) for a batch of latents.

    mean, logvar: (B, *latent_shape) floating tensors of one shape; logvar is clamped to
    :data:`LOGVAR_RANGE`. ``std`` and ``var`` are derived from the clamped logvar.
    """

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        check_tensor(mean, "mean", floating=True, min_ndim=1)
        check_tensor(logvar, "logvar", floating=True, min_ndim=1)
        if mean.shape != logvar.shape:
            raise ValueError(f"mean and logvar must have one shape (B, *latent_shape), got {tuple(mean.shape)} "
                             f"and {tuple(logvar.shape)}")
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = self.std ** 2

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = μ + σ ⊙ ε, ε ~ N(0, I) — the reparameterisation trick (Kingma & Welling 2014, eq. 10), so
        gradients reach μ and σ. ε is drawn on the CPU ``generator`` (None: torch's global RNG)."""
        return self.mean + self.std * noise_like(self.mean, None, generator)

    def mode(self) -> Tensor:
        """The most likely latent, μ (what a deterministic encoding uses)."""
        return self.mean

    def kl(self) -> Tensor:
        r"""KL(q ‖ N(0, I)) per example -> (B,), in nats: ½ Σ (μ² + σ² − 1 − log σ²)  (Kingma & Welling
        2014, App. B, whose −D_KL = ½ Σ (1 + log σ² − μ² − σ²))."""
        return 0.5 * _sum_dims(self.mean ** 2 + self.var - 1.0 - self.logvar)

    def nll(self, x: Tensor) -> Tensor:
        r"""−log q(x) per example -> (B,): ½ Σ (log 2π + log σ² + (x − μ)²/σ²). x: the shape of ``mean``."""
        check_tensor(x, "x", floating=True)
        if x.shape != self.mean.shape:
            raise ValueError(f"x must have the posterior's shape {tuple(self.mean.shape)}, got {tuple(x.shape)}")
        return 0.5 * _sum_dims(math.log(2 * math.pi) + self.logvar + (x - self.mean) ** 2 / self.var)

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)})"

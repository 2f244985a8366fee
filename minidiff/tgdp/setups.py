"""The two 2-D transfer problems of chapter 8 (and ``benchmarks/tgdp_gmm.py``), as exact mixtures.

Source (both setups): a 3×3 grid of isotropic Gaussians, spacing 1.5, std 0.3, equal weights.

* ``"A"`` — TGDP's home ground: the target is the source **tilted**, q(x) ∝ e^{θ·x} p(x) with θ = (0.8, 0.4)
  (:func:`tilt`). Tilting a Gaussian N(μ, Σ) by e^{θ·x} gives w·e^{θ·μ + θᵀΣθ/2}·N(μ + Σθ, Σ), so the target
  **reweights** the same nine components (weights 0.39 … 0.01) and **moves** each by Σθ = (0.07, 0.04).
  Every target mode sits on a source mode, and log q/p = θ·x − log Z is linear: a domain classifier can
  learn it from few samples.
* ``"B"`` — a teaching case where the assumption breaks: half the target's mass is on two source
  components, the other half on two modes at (3, 0) and (0, 3), five source stds beyond the grid, where
  p ≈ 0 and q/p ~ 10⁴: nothing the source model or the classifier saw covers them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_choice
from ..data.toys import GaussianMixture

__all__ = ["SETUPS", "THETA_A", "tilt", "transfer_pair"]

SETUPS = ("A", "B")
_GRID = [[i, j] for i in (-1.5, 0.0, 1.5) for j in (-1.5, 0.0, 1.5)]
THETA_A = (0.8, 0.4)


def tilt(gmm: GaussianMixture, theta: Tensor | list[float] | tuple[float, ...]) -> GaussianMixture:
    """The exponential tilt q(x) = e^{θ·x} p(x) / Z of a mixture p: again a mixture, with components
    N(μ_k + Σ_k θ, Σ_k) and weights ∝ w_k exp(θ·μ_k + θᵀΣ_k θ / 2). theta: (D,)."""
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a minidiff.data.GaussianMixture, got {type(gmm).__name__}")
    theta = torch.as_tensor(theta, dtype=torch.float64)
    if theta.shape != (gmm.dim,) or not torch.isfinite(theta).all():
        raise ValueError(f"theta must be {gmm.dim} finite numbers (one per dimension), got shape {tuple(theta.shape)}")
    cov_theta = gmm.covs @ theta                                                       # (K, D): Σ_k θ
    log_w = gmm.weights.log() + gmm.means @ theta + 0.5 * (cov_theta @ theta)          # log w_k + θ·μ_k + θᵀΣ_kθ/2
    return GaussianMixture(gmm.means + cov_theta, gmm.covs, torch.softmax(log_w, 0))


def transfer_pair(setup: str) -> tuple[GaussianMixture, GaussianMixture]:
    """(source p, target q) of setup ``"A"`` or ``"B"`` (module docstring); both 2-D, float64 parameters."""
    check_choice(setup, "setup", SETUPS)
    grid = torch.tensor(_GRID, dtype=torch.float64)
    source = GaussianMixture.isotropic(grid, 0.3)
    if setup == "A":
        target = tilt(source, THETA_A)
    else:
        target = GaussianMixture.isotropic([[-1.5, -1.5], [0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], 0.25,
                                           [0.3, 0.2, 0.25, 0.25])
    return source, target

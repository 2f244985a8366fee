"""Seeded 2-D toy data sets and Gaussian mixtures with exact densities (chapters 1–4, 8).

A :class:`GaussianMixture` knows everything a course needs in closed form: samples, log-density,
and — because adding Gaussian noise to a mixture gives another mixture — the *noised* density
p_t, its score, and hence the optimal eps-model ε*(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t)
(Tweedie; see :mod:`minidiff.eps`). That lets chapters compare a trained model against the truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..eps import score_to_eps
from ..schedules import NoiseSchedule

__all__ = ["GaussianMixture", "two_moons", "rings", "swiss_roll", "TOYS", "toy_data"]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of samples) must be a positive int, got {n!r}")


@dataclass
class GaussianMixture:
    """Σ_k w_k N(μ_k, Σ_k). means: (K, D), covs: (K, D, D), weights: (K,) summing to 1."""

    means: Tensor
    covs: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.covs = torch.as_tensor(self.covs, dtype=torch.float64)
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        K, D = self.means.shape
        if self.covs.shape != (K, D, D) or self.weights.shape != (K,):
            raise ValueError(f"expected covs (K, D, D)=({K}, {D}, {D}) and weights ({K},), got "
                             f"{tuple(self.covs.shape)} and {tuple(self.weights.shape)}")
        if (self.weights < 0).any() or not math.isclose(float(self.weights.sum()), 1.0, rel_tol=1e-6):
            raise ValueError(f"weights must be non-negative and sum to 1, got sum {float(self.weights.sum()):.6f}")
        torch.linalg.cholesky(self.covs)  # raises if a covariance is not positive definite

    # ------------------------------------------------------------------ constructors
    @classmethod
    def isotropic(cls, means: Tensor | list, std: float | list[float], weights: Tensor | list | None = None) -> "GaussianMixture":
        """Components N(μ_k, std_k² I); equal weights unless given."""
        means = torch.as_tensor(means, dtype=torch.float64)
        K, D = means.shape
        std = torch.as_tensor(std, dtype=torch.float64).expand(K)
        covs = std[:, None, None] ** 2 * torch.eye(D, dtype=torch.float64)
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights
        return cls(means, covs, weights)

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.15) -> "GaussianMixture":
        """k equal-weight isotropic components evenly spaced on a circle (the classic 2-D toy)."""
        angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        return cls.isotropic(radius * torch.stack([angles.cos(), angles.sin()], 1), std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # ------------------------------------------------------------------ density
    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n samples (n, D) float32 (and their component labels (n,) if asked)."""
        _check_n(n)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + (torch.linalg.cholesky(self.covs)[labels] @ z[:, :, None])[:, :, 0]
        return (x.float(), labels) if return_labels else x.float()

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for x: (B, D) -> (B,), in nats (computed in float64)."""
        return torch.logsumexp(self._component_log_probs(x, self.means, self.covs), dim=1)

    def posterior(self, x: Tensor) -> Tensor:
        """Component responsibilities p(k | x): (B, K)."""
        return torch.softmax(self._component_log_probs(x, self.means, self.covs), dim=1)

    def _component_log_probs(self, x: Tensor, means: Tensor, covs: Tensor) -> Tensor:
        """log w_k + log N(x; m_k, C_k). means: (K, D) or (B, K, D); covs: (K, D, D) or (B, K, D, D)."""
        x = self._check_x(x)
        # argument validation re-checks positive-definiteness every call: a quarter of the run time
        dist = torch.distributions.MultivariateNormal(means, covariance_matrix=covs, validate_args=False)
        return dist.log_prob(x[:, None, :]) + self.weights.log()

    def _check_x(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        return x.double()

    # ------------------------------------------------------------------ noised mixture
    def noised(self, alpha_bar: Tensor | float) -> tuple[Tensor, Tensor]:
        """Means and covariances of p_t = ∫ q(x_t|x_0) p(x_0) dx_0, itself a mixture:
        m_k = √ᾱ μ_k, C_k = ᾱ Σ_k + (1−ᾱ) I. alpha_bar: (B,) -> ((B, K, D), (B, K, D, D))."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1, 1, 1)
        means = ab.sqrt() * self.means
        covs = ab[..., None] * self.covs + (1 - ab[..., None]) * torch.eye(self.dim, dtype=torch.float64)
        return means, covs

    def noised_log_prob(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """log p_t(x) for x: (B, D) with per-sample ᾱ (B,) or a scalar -> (B,)."""
        means, covs = self.noised(torch.as_tensor(alpha_bar, dtype=torch.float64).expand(x.shape[0]))
        return torch.logsumexp(self._component_log_probs(x, means, covs), dim=1)

    def score(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """∇_x log p_t(x) = Σ_k r_k(x) C_k⁻¹ (m_k − x), r_k the responsibilities under p_t. -> (B, D)."""
        xd = self._check_x(x)
        means, covs = self.noised(torch.as_tensor(alpha_bar, dtype=torch.float64).expand(x.shape[0]))
        resp = torch.softmax(self._component_log_probs(x, means, covs), dim=1)             # (B, K)
        pulls = torch.linalg.solve(covs, (means - xd[:, None, :])[..., None])[..., 0]      # (B, K, D)
        return (resp[..., None] * pulls).sum(1).to(x.dtype)

    def optimal_eps_model(self, schedule: NoiseSchedule) -> "OptimalEps":
        """The exact minimiser of L_simple for this data: ε*(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t)."""
        return OptimalEps(self, schedule)


class OptimalEps:
    """The analytic eps-model of a Gaussian mixture under a schedule (keeps the eps contract)."""

    def __init__(self, gmm: GaussianMixture, schedule: NoiseSchedule) -> None:
        self.gmm, self.schedule, self.num_timesteps = gmm, schedule, schedule.T

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        if cond is not None:
            raise ValueError("the optimal eps-model of a mixture is unconditional; got cond")
        t = self.schedule.check_t(t, batch=x_t.shape[0])
        ab = self.schedule.alpha_bar[t.cpu()]
        score = self.gmm.score(x_t, ab.to(x_t.device))
        return score_to_eps(score, (1 - ab).sqrt().to(score)[:, None])


def two_moons(n: int, noise: float = 0.08, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved half circles, centred and scaled to roughly unit std. -> (n, 2)."""
    _check_n(n)
    upper = torch.rand(n, generator=generator) < 0.5
    angle = torch.rand(n, generator=generator) * math.pi
    x = torch.where(upper, angle.cos(), 1 - angle.cos())
    y = torch.where(upper, angle.sin(), 0.5 - angle.sin())
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.6
    return pts + noise * torch.randn(n, 2, generator=generator)


def rings(n: int, radii: tuple[float, ...] = (0.8, 1.8), noise: float = 0.05,
          generator: torch.Generator | None = None) -> Tensor:
    """Concentric circles with points spread in proportion to circumference. -> (n, 2)."""
    _check_n(n)
    r = torch.as_tensor(radii, dtype=torch.float32)
    ring = torch.multinomial(r / r.sum(), n, replacement=True, generator=generator)
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    pts = r[ring, None] * torch.stack([angle.cos(), angle.sin()], 1)
    return pts + noise * torch.randn(n, 2, generator=generator)


def swiss_roll(n: int, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """A 2-D spiral (the swiss roll seen from its end), scaled to roughly unit std. -> (n, 2)."""
    _check_n(n)
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([u * u.cos(), u * u.sin()], 1) / 7.0
    return pts + noise * torch.randn(n, 2, generator=generator)


TOYS = {"moons": two_moons, "rings": rings, "swiss_roll": swiss_roll,
        "gmm_ring": lambda n, generator=None: GaussianMixture.ring().sample(n, generator)}


def toy_data(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """One of :data:`TOYS` by name: ``toy_data("moons", 1000, generator)`` -> (n, 2)."""
    if name not in TOYS:
        raise ValueError(f"unknown toy data set {name!r}; choose from {sorted(TOYS)}")
    return TOYS[name](n, generator=generator)

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

from ..checks import check_int, check_labels, check_real
from ..exact import MixtureEps
from ..schedules import NoiseSchedule

__all__ = ["GaussianMixture", "two_moons", "rings", "swiss_roll", "TOYS", "toy_data"]


def _check_n(n: int) -> None:
    check_int(n, "n", 1, hint=" (the number of samples)")


def _check_noise(noise: float) -> float:
    return check_real(noise, "noise", low=0, hint=" (the std of the Gaussian jitter added to each point)")


@dataclass
class GaussianMixture:
    """Σ_k w_k N(μ_k, Σ_k). means: (K, D), covs: (K, D, D) symmetric positive definite, weights: (K,) summing to 1.

    The one home of the exact mixture math (chapters 1–4, 8): density, responsibilities, and for the
    noised data x_t = m x_0 + s z (:meth:`marginal`; DDPM: m = √ᾱ, s = √(1−ᾱ), :meth:`noised`) the
    log-density, the score, the class posterior p_t(k | x_t) and the class-conditional score. The eps-model
    adapters on top (either clock, conditional or not) are in :mod:`minidiff.exact`.
    """

    means: Tensor
    covs: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        self.means = _as_float64(self.means, "means")
        self.covs = _as_float64(self.covs, "covs")
        self.weights = _as_float64(self.weights, "weights")
        if self.means.ndim != 2 or self.means.shape[0] < 1 or self.means.shape[1] < 1:
            raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {tuple(self.means.shape)}")
        K, D = self.means.shape
        if self.covs.shape != (K, D, D) or self.weights.shape != (K,):
            raise ValueError(f"expected covs (K, D, D)=({K}, {D}, {D}) and weights ({K},), got "
                             f"{tuple(self.covs.shape)} and {tuple(self.weights.shape)}")
        if (self.weights < 0).any() or not math.isclose(float(self.weights.sum()), 1.0, rel_tol=1e-6):
            raise ValueError(f"weights must be non-negative and sum to 1, got sum {float(self.weights.sum()):.6f}")
        if not torch.allclose(self.covs, self.covs.transpose(1, 2), rtol=1e-10, atol=1e-12):
            raise ValueError("covs must be symmetric (a covariance matrix Σ_k = Σ_kᵀ); symmetrise with (C + Cᵀ) / 2")
        bad = torch.linalg.cholesky_ex(self.covs).info.nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"covs[{bad[0]}] is not positive definite (components {bad}): every component needs a "
                             "covariance with eigenvalues > 0; add a small multiple of the identity")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def isotropic(cls, means: Tensor | list, std: float | list[float], weights: Tensor | list | None = None) -> "GaussianMixture":
        """Components N(μ_k, std_k² I); equal weights unless given. std: a number or one per component, > 0."""
        means = _as_float64(means, "means")
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        K, D = means.shape
        std = _as_float64(std, "std")
        if std.ndim > 1 or (std.ndim == 1 and std.shape[0] not in (1, K)):
            raise ValueError(f"std must be a number or one per component ({K},), got shape {tuple(std.shape)}")
        if (std <= 0).any():
            raise ValueError(f"std must be > 0 (a standard deviation, not a variance), got min {float(std.min()):g}")
        std = std.expand(K)
        covs = std[:, None, None] ** 2 * torch.eye(D, dtype=torch.float64)
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights
        return cls(means, covs, weights)

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.15) -> "GaussianMixture":
        """k equal-weight isotropic components evenly spaced on a circle (the classic 2-D toy)."""
        k = check_int(k, "k", 1, hint=" (the number of components)")
        radius = check_real(radius, "radius", low=0, low_open=True)
        std = check_real(std, "std", low=0, low_open=True, hint=" (the std of each component)")
        angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        return cls.isotropic(radius * torch.stack([angles.cos(), angles.sin()], 1), std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

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
        """log w_k + log N(x; m_k, C_k) -> (B, K). means: (K, D) or (B, K, D); covs: (K, D, D) or (B, K, D, D)."""
        x = self._check_x(x)
        # argument validation re-checks positive-definiteness every call: a quarter of the run time
        dist = torch.distributions.MultivariateNormal(means.to(x.device), covariance_matrix=covs.to(x.device),
                                                      validate_args=False)
        return dist.log_prob(x[:, None, :]) + self.weights.to(x.device).log()

    def _check_x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}), got {got}")
        return x.double()

    # ------------------------------------------------------------------ noised mixture
    def marginal(self, m: float, s: float) -> "GaussianMixture":
        """The law of m·x_0 + s·z, z ~ N(0, I): again a mixture, means m μ_k, covs m² Σ_k + s² I (any SDE's
        p_t for its (m(t), s(t)); m != 0 or s > 0)."""
        m, s = check_real(m, "m"), check_real(s, "s", low=0)
        if m == 0 and s == 0:
            raise ValueError("m and s are both 0: m·x_0 + s·z is a point mass at 0, which has no density")
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(m * self.means, m**2 * self.covs + s**2 * eye, self.weights)

    def noised(self, alpha_bar: Tensor | float) -> tuple[Tensor, Tensor]:
        """Means and covariances of p_t = ∫ q(x_t|x_0) p(x_0) dx_0, itself a mixture:
        m_k = √ᾱ μ_k, C_k = ᾱ Σ_k + (1−ᾱ) I. alpha_bar: (B,) -> ((B, K, D), (B, K, D, D))."""
        ab = _check_alpha_bar(alpha_bar).reshape(-1, 1, 1)
        means = ab.sqrt() * self.means.to(ab.device)
        eye = torch.eye(self.dim, dtype=torch.float64, device=ab.device)
        covs = ab[..., None] * self.covs.to(ab.device) + (1 - ab[..., None]) * eye
        return means, covs

    def _noised_components(self, x: Tensor, alpha_bar: Tensor | float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x float64 (B, D), means (B, K, D), covs (B, K, D, D), log w_k N(x; m_k, C_k) (B, K)) under ᾱ."""
        xd = self._check_x(x)
        means, covs = self.noised(_check_alpha_bar(alpha_bar, xd.shape[0]).to(xd.device))
        return xd, means, covs, self._component_log_probs(xd, means, covs)

    def noised_log_prob(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """log p_t(x) for x: (B, D) with per-sample ᾱ (B,) or a scalar -> (B,)."""
        return torch.logsumexp(self._noised_components(x, alpha_bar)[3], dim=1)

    def class_log_posterior(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        r"""log p_t(k | x) = log w_k + log N(x; √ᾱ μ_k, C_k) − log p_t(x): (B, K) (Bayes; the exact noisy
        classifier of chapter 4 when the components are the classes). Differentiable in x; float64."""
        return torch.log_softmax(self._noised_components(x, alpha_bar)[3], dim=1)

    def score(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """∇_x log p_t(x) = Σ_k r_k(x) C_k⁻¹ (m_k − x), r_k the responsibilities under p_t. -> (B, D), x's dtype."""
        xd, means, covs, logits = self._noised_components(x, alpha_bar)
        resp = torch.softmax(logits, dim=1)                                                  # (B, K)
        pulls = torch.linalg.solve(covs, (means - xd[:, None, :])[..., None])[..., 0]      # (B, K, D)
        return (resp[..., None] * pulls).sum(1).to(x.dtype)

    def class_score(self, x: Tensor, alpha_bar: Tensor | float, labels: Tensor) -> Tensor:
        """∇_x log p_t(x | k) = C_k⁻¹ (m_k − x) for each row's component k = labels: (B,) in [0, K) -> (B, D)."""
        xd = self._check_x(x)
        labels = check_labels(labels, "labels", xd.shape[0], self.num_components, device=xd.device)
        ab = _check_alpha_bar(alpha_bar, xd.shape[0]).to(xd.device)
        m = ab.sqrt()[:, None] * self.means.to(xd.device)[labels]                                    # (B, D)
        eye = torch.eye(self.dim, dtype=torch.float64, device=xd.device)
        c = ab[:, None, None] * self.covs.to(xd.device)[labels] + (1 - ab)[:, None, None] * eye     # (B, D, D)
        return torch.linalg.solve(c, (m - xd)[..., None])[..., 0].to(x.dtype)

    def optimal_eps_model(self, schedule: NoiseSchedule) -> "MixtureEps":
        """The exact minimiser of L_simple for this data: ε*(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t)
        (:class:`minidiff.exact.MixtureEps` on the schedule's discrete clock)."""
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__} "
                             "(for an SDE use minidiff.sde.MixtureEps(gmm, sde))")
        return MixtureEps(self, schedule)


def _as_float64(value: Tensor | list | float, name: str) -> Tensor:
    """A finite float64 tensor, or a ValueError naming ``name`` (bools and NaN/inf rejected)."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{name} must hold real numbers, got a bool")
    try:
        out = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or nested list of real numbers, got {type(value).__name__}") from err
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return out


def _check_alpha_bar(alpha_bar: Tensor | float, batch: int | None = None) -> Tensor:
    """ᾱ as float64, in [0, 1]; a scalar is broadcast to (batch,) when given, a (B,) tensor must match."""
    if isinstance(alpha_bar, bool):
        raise ValueError("alpha_bar must be a number or a (B,) tensor in [0, 1], got a bool")
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    if ab.numel() and (torch.isnan(ab).any() or ab.min() < 0 or ab.max() > 1):
        raise ValueError(f"alpha_bar must be in [0, 1], got min {float(ab.min()):g}, max {float(ab.max()):g}")
    if batch is not None:
        if ab.ndim == 0:
            return ab.expand(batch)
        if ab.shape != (batch,):
            raise ValueError(f"alpha_bar must be a scalar or have shape (B,)=({batch},), got {tuple(ab.shape)}")
    return ab


def two_moons(n: int, noise: float = 0.08, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved half circles, centred and scaled to roughly unit std. -> (n, 2)."""
    _check_n(n)
    noise = _check_noise(noise)
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
    noise = _check_noise(noise)
    r = _as_float64(radii, "radii").float()
    if r.ndim != 1 or r.numel() < 1 or (r <= 0).any():
        raise ValueError(f"radii must be a non-empty sequence of positive radii, got {radii!r}")
    ring = torch.multinomial(r / r.sum(), n, replacement=True, generator=generator)
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    pts = r[ring, None] * torch.stack([angle.cos(), angle.sin()], 1)
    return pts + noise * torch.randn(n, 2, generator=generator)


def swiss_roll(n: int, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """A 2-D spiral (the swiss roll seen from its end), scaled to roughly unit std. -> (n, 2)."""
    _check_n(n)
    noise = _check_noise(noise)
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([u * u.cos(), u * u.sin()], 1) / 7.0
    return pts + noise * torch.randn(n, 2, generator=generator)


TOYS = {"moons": two_moons, "rings": rings, "swiss_roll": swiss_roll,
        "gmm_ring": lambda n, generator=None: GaussianMixture.ring().sample(n, generator)}


def toy_data(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """One of :data:`TOYS` by name: ``toy_data("moons", 1000, generator)`` -> (n, 2)."""
    if not isinstance(name, str) or name not in TOYS:
        raise ValueError(f"unknown toy data set {name!r}; choose from {sorted(TOYS)}")
    return TOYS[name](n, generator=generator)

r"""Chapter 1 — a diffusion model whose likelihood is known exactly: Gaussian data.

For data :math:`x_0 \sim \mathcal N(m, s^2)` (independently in every coordinate; ``mean`` and ``var``
may differ per coordinate) everything in DDPM is linear-Gaussian, so the quantities that are
intractable for real data have closed forms. Chapter 1 uses them to check the ELBO against the
model's *true* negative log-likelihood.

Notation (DDPM, Ho et al. 2020; seed 004 slides 4–14). Paper step t ↔ tensor index t−1 (see
:mod:`minidiff.schedules`); below, t is the paper's step and ᾱ_0 = 1.

* noised marginal   q(x_t) = N(√ᾱ_t m, v_t),  v_t = ᾱ_t s² + 1 − ᾱ_t                     (A1)
* optimal ε         ε*(x_t, t) = E[ε | x_t] = √(1−ᾱ_t) (x_t − √ᾱ_t m) / v_t               (A2)
                    (= −√(1−ᾱ_t) ∇ log q(x_t), Tweedie; linear in x_t)
* model mean        μ_θ(x_t, t) = (x_t − β_t/√(1−ᾱ_t) ε*) / √α_t = c_t x_t + d_t  (DDPM eq. 11)
                    c_t = (1 − β_t / v_t) / √α_t,   d_t = β_t √ᾱ_t m / (√α_t v_t)            (A3)
                    (this is exactly E_q[x_{t−1} | x_t]: the optimal ε gives the true reverse mean)
* reverse step      p_θ(x_{t−1} | x_t) = N(c_t x_t + d_t, σ_t²), σ_t² from ``variance``:
                    "fixed_small" β̃_t, "fixed_large" β_t (both as :func:`minidiff.forward.model_variance`),
                    "exact" Var_q(x_{t−1} | x_t) = β_t v_{t−1} / v_t (v_0 = s²)              (A4)
* model marginal    x_T ~ N(0, 1) and each step is linear-Gaussian, so p_θ(x_t) = N(M_t, V_t) with
                    M_{t−1} = c_t M_t + d_t,  V_{t−1} = c_t² V_t + σ_t²,  M_T = 0, V_T = 1     (A5)
                    and −log p_θ(x_0) = −log N(x_0; M_0, V_0) exactly (decoder noise σ_1² included).
* ELBO terms        every term of DDPM eq. 5 is an expectation of a quadratic in x_t ~ q(x_t | x_0),
                    so its expectation is closed-form (no Monte Carlo), see :func:`gaussian_elbo_terms`. (A6)

Everything is computed in float64. Shapes: ``mean`` and ``var`` are scalars or tensors of an
*event shape* S (e.g. (D,) or (C, H, W)); data tensors are (B, *S') with S broadcastable to S'.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .forward import VARIANCE_KINDS, model_variance
from .schedules import NoiseSchedule

__all__ = [
    "ANALYTIC_VARIANCE_KINDS", "GaussianOptimalEps", "gaussian_data_optimal_eps", "gaussian_noised_marginal",
    "reverse_step_coefficients", "reverse_marginal_gaussian", "gaussian_model_nll", "gaussian_elbo_terms",
]

#: the two fixed variances of DDPM plus the true reverse variance of Gaussian data (A4)
ANALYTIC_VARIANCE_KINDS = VARIANCE_KINDS + ("exact",)


# ----------------------------------------------------------------------------- input checks
def _check_schedule(schedule: Any) -> NoiseSchedule:
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a minidiff NoiseSchedule, got {type(schedule).__name__}")
    return schedule


def _check_data(mean: Any, var: Any) -> tuple[Tensor, Tensor]:
    """mean, var -> float64 tensors broadcast to a common event shape S."""
    for name, value in (("mean", mean), ("var", var)):
        if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
            raise ValueError(f"{name} must hold real numbers, got a bool")
    try:
        mean = torch.as_tensor(mean, dtype=torch.float64).detach().cpu()
        var = torch.as_tensor(var, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError("mean and var must be numbers or tensors of the data's event shape") from err
    try:
        shape = torch.broadcast_shapes(mean.shape, var.shape)
    except RuntimeError as err:
        raise ValueError(f"mean {tuple(mean.shape)} and var {tuple(var.shape)} must broadcast to one shape") from err
    if not torch.isfinite(mean).all():
        raise ValueError("mean must be finite")
    if not torch.isfinite(var).all() or (var <= 0).any():
        raise ValueError(
            f"var is the data variance s² and must be finite and > 0, got min {var.min().item():.3g} "
            "(pass a variance, not a standard deviation; a point mass has no density)"
        )
    return mean.expand(shape), var.expand(shape)


def _check_variance_kind(variance: str) -> str:
    if variance not in ANALYTIC_VARIANCE_KINDS:
        raise ValueError(f"variance must be one of {ANALYTIC_VARIANCE_KINDS}, got {variance!r}")
    return variance


def _check_x(x: Tensor, event_shape: torch.Size, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor (B, *shape), got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must be batched, shape (B, *shape) with B >= 1, got {tuple(x.shape)}")
    try:
        ok = torch.broadcast_shapes(event_shape, x.shape[1:]) == x.shape[1:]
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}: its per-example shape {tuple(x.shape[1:])} does not match "
            f"the data's mean/var shape {tuple(event_shape)}"
        )
    return x


def _per_step(values: Tensor, event_ndim: int) -> Tensor:
    """(T,) -> (T, 1, ..., 1) so it broadcasts against (T, *S)."""
    return values.reshape(-1, *([1] * event_ndim))


# ----------------------------------------------------------------------------- the model
def gaussian_noised_marginal(schedule: NoiseSchedule, mean: Any, var: Any) -> tuple[Tensor, Tensor]:
    r"""Mean and variance of q(x_t) for every step index, eq. (A1).

    mean, var: scalars or event shape S -> (means (T, *S), variances (T, *S)); row t is the
    tensor index t (the paper's step t + 1).
    """
    s = _check_schedule(schedule)
    mean, var = _check_data(mean, var)
    ab = _per_step(s.alpha_bar, mean.ndim)
    return ab.sqrt() * mean, ab * var + (1 - ab)


class GaussianOptimalEps:
    r"""The optimal eps-model ε*(x_t, t) = a_t x_t + b_t of Gaussian data, eq. (A2).

    Keeps the eps-model contract: ``model(x_t: (B, *S'), t: (B,) long in [0, T)) -> (B, *S')``,
    returned in x_t's dtype. ``slope`` and ``intercept`` are (T, *S) float64.

    It is the K = 1 case of :class:`minidiff.exact.MixtureEps` (tests/test_analytic.py checks that), but it
    stays its own class: the data here is *diagonal* with any event shape S broadcast into the examples'
    shape S' (an 8×8 image, a scalar shared by all pixels), and chapter 1's closed forms (A3)–(A6) need ε* as
    the per-step tables (a_t, b_t). A mixture would flatten to (B, D) and solve D×D systems per example.
    """

    def __init__(self, schedule: NoiseSchedule, mean: Any, var: Any) -> None:
        self.schedule = _check_schedule(schedule)
        self.mean, self.var = _check_data(mean, var)
        self.num_timesteps = schedule.T
        m_t, v_t = gaussian_noised_marginal(schedule, self.mean, self.var)
        sigma = _per_step((1 - schedule.alpha_bar).sqrt(), self.mean.ndim)    # √(1−ᾱ_t)
        self.slope = sigma / v_t                                              # a_t = √(1−ᾱ_t)/v_t
        self.intercept = -sigma * m_t / v_t                                   # b_t = −√(1−ᾱ_t) √ᾱ_t m / v_t

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is not None:
            raise ValueError("the optimal eps-model of Gaussian data is unconditional; got cond")
        _check_x(x_t, self.mean.shape, "x_t")
        t = self.schedule.check_t(t, batch=x_t.shape[0]).cpu()
        a = self.slope[t].to(device=x_t.device, dtype=x_t.dtype)
        b = self.intercept[t].to(device=x_t.device, dtype=x_t.dtype)
        pad = [1] * (x_t.ndim - 1 - self.mean.ndim)                           # S broadcast inside S'
        return a.reshape(a.shape[0], *pad, *a.shape[1:]) * x_t + b.reshape(b.shape[0], *pad, *b.shape[1:])

    def __repr__(self) -> str:
        return f"GaussianOptimalEps(T={self.num_timesteps}, event_shape={tuple(self.mean.shape)})"


def gaussian_data_optimal_eps(schedule: NoiseSchedule, mean: Any, var: Any) -> GaussianOptimalEps:
    r"""The exact minimiser of L_simple for data N(mean, var): ε*(x_t, t) = E[ε | x_t], eq. (A2).

    mean, var: scalars or tensors of the data's event shape S (var is s², not s). Equals
    ``GaussianMixture.isotropic([[m]], s).optimal_eps_model(schedule)`` for one component.
    """
    return GaussianOptimalEps(schedule, mean, var)


def reverse_step_coefficients(schedule: NoiseSchedule, mean: Any, var: Any,
                              variance: str = "fixed_small") -> tuple[Tensor, Tensor, Tensor]:
    r"""p_θ(x_{t-1} | x_t) = N(c_t x_t + d_t, σ_t²) of the optimal model, eqs. (A3)–(A4).

    Returns c: (T, *S), d: (T, *S), σ²: (T, *S), row t the tensor index t. Row 0 is the decoder
    p_θ(x_0 | x_1). ``variance`` in {"fixed_small", "fixed_large", "exact"}.
    """
    s = _check_schedule(schedule)
    mean, var = _check_data(mean, var)
    _check_variance_kind(variance)
    n = mean.ndim
    beta, alpha, ab = (_per_step(v, n) for v in (s.betas, s.alphas, s.alpha_bar))
    _, v_t = gaussian_noised_marginal(s, mean, var)
    c = (1 - beta / v_t) / alpha.sqrt()                                    # (A3)
    d = beta * ab.sqrt() * mean / (alpha.sqrt() * v_t)
    if variance == "exact":
        v_prev = torch.cat([var[None], v_t[:-1]])                           # v_{t−1}, with v_0 = s²
        sigma2 = beta * v_prev / v_t                                        # (A4)
    else:
        sigma2 = model_variance(s, torch.arange(s.T), torch.zeros(s.T, dtype=torch.float64), variance)
        sigma2 = sigma2.reshape(-1, *([1] * n)).expand_as(c)
    return c, d, sigma2


def reverse_marginal_gaussian(schedule: NoiseSchedule, mean: Any, var: Any, variance: str = "fixed_small",
                              decoder_noise: bool = True, return_path: bool = False):
    r"""The model's own marginal p_θ(x_0) = N(M_0, V_0) for the optimal ε of data N(mean, var), eq. (A5).

    Propagates mean and variance from x_T ~ N(0, 1) through every reverse step. ``decoder_noise``:
    include σ² of the last step (the decoder p_θ(x_0 | x_1) that the ELBO scores); False gives the
    distribution of :func:`minidiff.samplers.ddpm_loop`'s output, which returns the decoder *mean*.

    mean, var: scalars or event shape S -> (M_0: S, V_0: S), float64. With ``return_path=True``:
    (M: (T+1, *S), V: (T+1, *S)) where row k is the marginal of the paper's x_k (row T = N(0, 1)).
    """
    c, d, sigma2 = reverse_step_coefficients(schedule, mean, var, variance)
    T = schedule.T
    M = torch.zeros((T + 1, *c.shape[1:]), dtype=torch.float64)
    V = torch.ones_like(M)
    for t in range(T - 1, -1, -1):            # tensor index t maps x_{t+1} -> x_t (paper steps)
        M[t] = c[t] * M[t + 1] + d[t]
        V[t] = c[t] ** 2 * V[t + 1] + (sigma2[t] if (t > 0 or decoder_noise) else 0.0)
    return (M, V) if return_path else (M[0], V[0])


def _gauss_nll(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    return 0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)


def _sum_event(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def gaussian_model_nll(schedule: NoiseSchedule, mean: Any, var: Any, x0: Tensor,
                       variance: str = "fixed_small") -> Tensor:
    r"""Exact −log p_θ(x_0) in nats of the optimal DDPM for data N(mean, var), eq. (A5).

    x0: (B, *S') -> (B,) float64, summed over the data dimensions (like :func:`minidiff.elbo_terms`).
    """
    M, V = reverse_marginal_gaussian(schedule, mean, var, variance)
    x0 = _check_x(x0, M.shape, "x0").detach().cpu().double()
    return _sum_event(_gauss_nll(x0, M, V).expand_as(x0))


def gaussian_elbo_terms(schedule: NoiseSchedule, mean: Any, var: Any, x0: Tensor,
                        variance: str = "fixed_small") -> dict[str, Tensor]:
    r"""The negative ELBO of the optimal model for data N(mean, var), term by term, *exactly*, eq. (A6).

    Same keys and shapes as :func:`minidiff.forward.elbo_terms` with ``decoder="gaussian"``, but each
    term is the expectation over x_t ~ q(x_t | x_0) in closed form instead of a one-sample
    estimate:

    * ``prior``     L_T = KL(N(√ᾱ_T x_0, 1−ᾱ_T) ‖ N(0, 1))                                 (B,)
    * ``diffusion`` column j = E KL(q(x_j | x_{j+1}, x_0) ‖ p_θ(x_j | x_{j+1})) (paper steps),
      with μ̃ − μ_θ = (A + (B − c)√ᾱ) x_0 − d + (B − c)√(1−ᾱ) ε linear in ε:
      E KL = ½[log(σ²/β̃) + β̃/σ² − 1 + E(μ̃ − μ_θ)²/σ²]                                 (B, T−1)
    * ``decoder``   L_0 = E −log N(x_0; c_0 x_1 + d_0, σ_1²),  x_1 ~ q(x_1 | x_0)            (B,)
    * ``total``     their sum                                                                (B,)

    x0: (B, *S'); everything summed over data dimensions, float64, in nats.
    """
    s = _check_schedule(schedule)
    c, d, sigma2 = reverse_step_coefficients(s, mean, var, variance)
    x0 = _check_x(x0, c.shape[1:], "x0").detach().cpu().double()
    B, T = x0.shape[0], s.T
    pad = [1] * (x0.ndim - 1 - (c.ndim - 1))

    def rows(v: Tensor) -> Tensor:  # (T, *S) -> (1, T, *pad, *S) to broadcast with x0 (B, 1, *S')
        return v.reshape(1, T, *pad, *v.shape[1:])

    def coef(v: Tensor) -> Tensor:  # (T,) schedule constant -> (1, T, 1, ..., 1)
        return v.reshape(1, T, *([1] * (x0.ndim - 1)))

    x = x0[:, None]                                                        # (B, 1, *S')
    ab, ab_prev, beta = coef(s.alpha_bar), coef(s.alpha_bar_prev), coef(s.betas)
    c, d, sigma2 = rows(c), rows(d), rows(sigma2)
    # posterior q(x_{t-1} | x_t, x_0) = N(A x_0 + Bc x_t, β̃)  (DDPM eqs. 6–7)
    A = ab_prev.sqrt() * beta / (1 - ab)
    Bc = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
    post_var = coef(s.posterior_variance)
    # μ̃ − μ_θ = k x_0 − d + (Bc − c) √(1−ᾱ) ε,  k = A + (Bc − c) √ᾱ
    diff_mean = (A + (Bc - c) * ab.sqrt()) * x - d
    diff_var = (Bc - c) ** 2 * (1 - ab)
    kl = 0.5 * (torch.log(sigma2[:, 1:]) - torch.log(post_var[:, 1:]) + post_var[:, 1:] / sigma2[:, 1:] - 1
                + (diff_mean[:, 1:] ** 2 + diff_var[:, 1:]) / sigma2[:, 1:])
    diffusion = kl.expand(B, *kl.shape[1:]).reshape(B, T - 1, -1).sum(2)
    # decoder: x_0 − μ_θ(x_1) = (1 − c_0 √ᾱ_0) x_0 − d_0 − c_0 √(1−ᾱ_0) ε
    r_mean = (1 - c[:, 0] * ab[:, 0].sqrt()) * x[:, 0] - d[:, 0]
    r_var = c[:, 0] ** 2 * (1 - ab[:, 0])
    dec = 0.5 * (math.log(2 * math.pi) + torch.log(sigma2[:, 0]) + (r_mean**2 + r_var) / sigma2[:, 0])
    decoder = _sum_event(dec.expand_as(x0))
    # prior: KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1))
    ab_T = s.alpha_bar[-1]
    prior = _sum_event(0.5 * (ab_T * x0**2 + (1 - ab_T) - 1 - torch.log(1 - ab_T)))
    total = prior + diffusion.sum(1) + decoder
    return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": total}

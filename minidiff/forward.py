r"""Chapter 1 — the forward process q(x_t | x_0) and the ELBO.

Equations (Ho et al. 2020, "DDPM"; seed 004 slides 4–14):

* one step        q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I)                       (eq. 2)
* closed form     q(x_t | x_0)     = N(√ᾱ_t x_0, (1 − ᾱ_t) I)                     (eq. 4)
* posterior       q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I)                           (eqs. 6–7)
                  μ̃_t = √ᾱ_{t-1} β_t/(1−ᾱ_t) x_0 + √α_t (1−ᾱ_{t-1})/(1−ᾱ_t) x_t
                  β̃_t = (1−ᾱ_{t-1})/(1−ᾱ_t) β_t
* model mean      μ_θ(x_t, t) = (x_t − β_t/√(1−ᾱ_t) ε_θ(x_t, t)) / √α_t            (eq. 11)
* ELBO            L = L_T + Σ_{t=2}^T L_{t-1} + L_0                                (eq. 5)
                  L_T = KL(q(x_T|x_0) ‖ N(0, I)), L_{t-1} = KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)),
                  L_0 = −log p_θ(x_0 | x_1)
* L_t in ε form   L_{t-1} = β_t² / (2σ_t² α_t (1−ᾱ_t)) · ‖ε − ε_θ‖²  (σ_t² = β̃_t)   (eq. 12)
* L_simple        E_{t,x_0,ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²                   (eq. 14)
* learned Σ_θ     σ_t² = exp(v log β_t + (1 − v) log β̃_t)   (Nichol & Dhariwal 2021, eq. 15)

Index convention: tensors hold t ∈ [0, T) meaning the paper's step t+1 (see schedules.py).
All log-likelihoods are in nats, summed over data dimensions, one value per batch element.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import cond as C
from .checks import check_choice, check_int, check_positive_tensor, check_real, check_tensor
from .eps import EpsModel, call_eps, eps_to_x0
from .schedules import NoiseSchedule

__all__ = [
    "q_sample", "q_step", "posterior_mean_var", "model_mean", "model_variance",
    "gaussian_kl", "gaussian_log_likelihood", "discretized_gaussian_log_likelihood",
    "l_t_weight", "elbo_terms", "bits_per_dim", "l_simple", "predicted_x0", "interpolated_variance",
    "VARIANCE_KINDS",
]

VARIANCE_KINDS = ("fixed_small", "fixed_large")
DECODERS = ("discretized", "gaussian")


def noise_like(x: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """The given noise (checked to have x's shape) or a fresh N(0, I) draw shaped like x: (B, *shape).

    Drawn on the CPU ``generator`` and then moved to x's device, so a seed gives the same noise on
    every device. Given noise is cast to x's dtype, so float64 noise cannot silently turn a float32
    sample into float64. Every sampler draws its noise here."""
    check_tensor(x, "x", floating=True)
    if noise is not None:
        check_tensor(noise, "noise", floating=True)
        if noise.shape != x.shape:
            raise ValueError(f"noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}")
        if noise.device != x.device:
            raise ValueError(f"noise is on {noise.device} but x is on {x.device}; move it with noise.to(x.device)")
        return noise.to(x.dtype)
    _check_generator(generator)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor | int, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Sample x_t ~ q(x_t | x_0) in one shot: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε  (DDPM eq. 4).

    x0: (B, *shape); t: int or (B,) in [0, T); noise: (B, *shape) or None -> (B, *shape).
    """
    _check_schedule(schedule)
    noise = noise_like(x0, noise, generator)
    ab = schedule.gather(schedule.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def q_step(schedule: NoiseSchedule, x_prev: Tensor, t: Tensor | int, noise: Tensor | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """One forward step x_t ~ q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I)  (DDPM eq. 2).

    Iterating this from x_0 gives the same distribution as :func:`q_sample` ("merging Gaussians").
    """
    _check_schedule(schedule)
    noise = noise_like(x_prev, noise, generator)
    a = schedule.gather(schedule.alphas, t, x_prev)
    return a.sqrt() * x_prev + (1 - a).sqrt() * noise


def posterior_mean_var(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0)  (DDPM eqs. 6–7).

    x0, x_t: (B, *shape); t: (B,) -> mean (B, *shape), variance (B, 1, ..., 1).
    At index t = 0 the variance is 0 and the mean is x_0 (there is nothing left to denoise).
    """
    _check_schedule(schedule)
    _same_shape(x0=x0, x_t=x_t)
    s = schedule
    beta, ab, ab_prev = (s.gather(v, t, x_t) for v in (s.betas, s.alpha_bar, s.alpha_bar_prev))
    coef_x0 = ab_prev.sqrt() * beta / (1 - ab)
    coef_xt = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
    return coef_x0 * x0 + coef_xt * x_t, s.gather(s.posterior_variance, t, x_t)


def model_mean(schedule: NoiseSchedule, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
    """μ_θ(x_t, t) = (x_t − β_t/√(1−ᾱ_t) ε_θ) / √α_t  (DDPM eq. 11): the posterior mean with
    x_0 replaced by its ε-prediction. x_t, eps: (B, *shape) -> (B, *shape)."""
    _check_schedule(schedule)
    _same_shape(x_t=x_t, eps=eps)
    beta, ab = schedule.gather(schedule.betas, t, x_t), schedule.gather(schedule.alpha_bar, t, x_t)
    return (x_t - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()


def model_variance(schedule: NoiseSchedule, t: Tensor | int, x: Tensor, kind: str = "fixed_small") -> Tensor:
    """σ_t² of p_θ(x_{t-1} | x_t) -> (B, 1, ..., 1).

    ``fixed_small``: σ_t² = β̃_t, ``fixed_large``: σ_t² = β_t (DDPM Sec. 3.2 — the two extremes).
    β̃ at index 0 is 0, which would make the decoder p_θ(x_0|x_1) a delta; like Ho et al.'s code, both
    kinds use β̃ of index 1 (≈ β_1/2) for the decoder. For continuous data that choice alone costs
    ≈ 0.11 nats per dimension of ELBO (chapter 1 measures it); for discretised data it hardly matters.
    """
    _check_schedule(schedule)
    check_choice(kind, "variance kind", VARIANCE_KINDS)
    s = schedule
    first = s.posterior_variance[1:2] if s.T > 1 else s.betas[:1]
    rest = s.posterior_variance[1:] if kind == "fixed_small" else s.betas[1:]
    return s.gather(torch.cat([first, rest]), t, x)


def interpolated_variance(schedule: NoiseSchedule, t: Tensor | int, v: Tensor) -> Tensor:
    """The learned reverse variance of Nichol & Dhariwal (2021, eq. 15), σ_t² = exp(v log β_t + (1 − v) log β̃_t).

    v: (B, *shape), the network's extra output, one interpolation weight per dimension; t: int or (B,) in [0, T)
    -> σ² (B, *shape). v = 0 gives ``fixed_small`` (β̃, with β̃ of index 1 at index 0 as in
    :func:`model_variance`), v = 1 gives β_t. v is not clipped to [0, 1] (neither is it in the paper): the
    optimal v lies outside when the true reverse variance does (chapter 1: Gaussian data with s² > 1).
    """
    _check_schedule(schedule)
    check_tensor(v, "v", floating=True, min_ndim=1, nonempty=True)
    if not torch.isfinite(v).all():
        raise ValueError("v must be finite (an interpolation weight between log β̃_t and log β_t, usually near [0, 1])")
    log_small = model_variance(schedule, t, v, "fixed_small").log()
    log_large = schedule.gather(schedule.betas, t, v).log()
    return torch.exp(v * log_large + (1 - v) * log_small)


def gaussian_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, var1) ‖ N(mean2, var2)) in nats (broadcasting).

    KL = ½ [log(var2/var1) + (var1 + (mean1 − mean2)²)/var2 − 1]. Variances must be finite and > 0.
    """
    check_tensor(mean1, "mean1", floating=True)
    check_positive_tensor(var1, "var1")
    check_positive_tensor(var2, "var2")
    var1, var2 = torch.as_tensor(var1, dtype=mean1.dtype), torch.as_tensor(var2, dtype=mean1.dtype)
    d = var1 / var2 - 1.0  # r − 1 − log r written as d − log1p(d): no cancellation when r ≈ 1
    return 0.5 * (d - torch.log1p(d) + (mean1 - mean2) ** 2 / var2)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Elementwise log N(x; mean, var) in nats (continuous density); var finite and > 0."""
    check_tensor(x, "x", floating=True)
    check_positive_tensor(var, "var")
    var = torch.as_tensor(var, dtype=x.dtype)
    return -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, var: Tensor, bin_width: float = 2 / 255) -> Tensor:
    """Elementwise log P(bin of x) under N(mean, var), for data on a grid in [-1, 1]  (DDPM eq. 13).

    Each value owns the interval [x − w/2, x + w/2]; the outermost bins extend to ±∞ so the
    probabilities of all bins sum to 1. ``bin_width`` = 2/255 for 8-bit images, 2/16 for the
    17-level scikit-learn digits.
    """
    bin_width = check_real(bin_width, "bin_width", 0, 2, low_open=True)
    check_tensor(x, "x", floating=True)
    check_positive_tensor(var, "var")
    if x.numel() and (x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"x must lie in [-1, 1] for the discretised decoder, got [{x.min():.3f}, {x.max():.3f}]")
    std = torch.as_tensor(var, dtype=x.dtype).sqrt()
    normal = torch.distributions.Normal(mean, std)
    upper = torch.where(x > 1 - bin_width / 2, torch.ones_like(x), normal.cdf(x + bin_width / 2))
    lower = torch.where(x < -1 + bin_width / 2, torch.zeros_like(x), normal.cdf(x - bin_width / 2))
    return torch.log((upper - lower).clamp(min=1e-12))


def l_t_weight(schedule: NoiseSchedule, t: Tensor | int, x: Tensor, variance: str = "fixed_small") -> Tensor:
    """λ_t with L_{t-1} = λ_t ‖ε − ε_θ‖² + (terms free of θ)  (DDPM eq. 12):
    λ_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t)). L_simple sets λ_t = 1. -> (B, 1, ..., 1)."""
    beta, ab = schedule.gather(schedule.betas, t, x), schedule.gather(schedule.alpha_bar, t, x)
    var = model_variance(schedule, t, x, variance)
    return beta**2 / (2 * var * (1 - beta) * (1 - ab))


def elbo_terms(eps_model: EpsModel, schedule: NoiseSchedule, x0: Tensor, *, cond: Any = None,
               decoder: str = "discretized", bin_width: float = 2 / 255, variance: str = "fixed_small",
               generator: torch.Generator | None = None, chunk: int | None = None) -> dict[str, Tensor]:
    """The negative ELBO of each x_0, term by term, in nats  (DDPM eq. 5).

    x0: (B, *shape). Each L_{t-1} is a one-sample Monte-Carlo estimate over x_t ~ q(x_t | x_0) of a
    closed-form Gaussian KL; ``chunk`` (a positive int) timesteps are evaluated per model call for
    speed (default None: as many as fit in about 2^20 data values per call). ``cond`` is None, a
    tensor (B, ...) or a mapping of named tensors (:mod:`minidiff.cond`), repeated once per timestep.
    decoder: "discretized" (data on a grid, gives an upper bound on the discrete NLL) or
    "gaussian" (continuous data: bounds −log p_θ(x_0) as a density).

    Returns ``prior`` L_T: (B,), ``diffusion`` [L_1 … L_{T-1}]: (B, T−1) (column j is the KL at index
    j+1), ``decoder`` L_0: (B,), and ``total``: (B,). All no-grad.
    """
    check_choice(decoder, "decoder", DECODERS)
    check_choice(variance, "variance", VARIANCE_KINDS)
    bin_width = check_real(bin_width, "bin_width", 0, 2, low_open=True)
    if chunk is not None:
        chunk = check_int(chunk, "chunk (timesteps per model call; None picks one)", 1)
    _check_call(eps_model, schedule, x0, cond)
    C.check_cond(cond, batch=x0.shape[0])        # the ELBO repeats cond per timestep: it must be data
    _check_generator(generator)
    B, T = x0.shape[0], schedule.T
    with torch.no_grad():
        ab_T = schedule.gather(schedule.alpha_bar, T - 1, x0)
        prior = _sum_dims(gaussian_kl(ab_T.sqrt() * x0, 1 - ab_T, torch.zeros_like(x0), torch.ones(())))
        diffusion = torch.zeros(B, T - 1, dtype=x0.dtype, device=x0.device)
        chunk = chunk or max(1, min(T, 2**20 // max(1, x0.numel())))
        for start in range(1, T, chunk):
            ts = torch.arange(start, min(start + chunk, T))
            diffusion[:, ts - 1] = _kl_terms(eps_model, schedule, x0, ts, cond, variance, generator)
        decoder_nll = _decoder_nll(eps_model, schedule, x0, cond, decoder, bin_width, variance, generator)
    total = prior + diffusion.sum(1) + decoder_nll
    return {"prior": prior, "diffusion": diffusion, "decoder": decoder_nll, "total": total}


def _kl_terms(eps_model, schedule, x0, ts, cond, variance, generator) -> Tensor:
    """KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) for every (x_0, t) pair -> (B, len(ts))."""
    B, k = x0.shape[0], len(ts)
    x0_rep = x0.repeat(k, *([1] * (x0.ndim - 1)))               # (k·B, *shape), t-major
    t_rep = ts.repeat_interleave(B).to(x0.device)
    x_t = q_sample(schedule, x0_rep, t_rep, generator=generator)
    eps = call_eps(eps_model, x_t, t_rep, C.repeat(cond, k))
    mean_q, var_q = posterior_mean_var(schedule, x0_rep, x_t, t_rep)
    mean_p = model_mean(schedule, x_t, t_rep, eps)
    var_p = model_variance(schedule, t_rep, x_t, variance)
    return _sum_dims(gaussian_kl(mean_q, var_q, mean_p, var_p)).reshape(k, B).T


def _decoder_nll(eps_model, schedule, x0, cond, decoder, bin_width, variance, generator) -> Tensor:
    """L_0 = −log p_θ(x_0 | x_1), with x_1 ~ q(x_1 | x_0) (one sample) -> (B,)."""
    t0 = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
    x1 = q_sample(schedule, x0, t0, generator=generator)
    mean = model_mean(schedule, x1, t0, call_eps(eps_model, x1, t0, cond))
    var = model_variance(schedule, t0, x1, variance)
    if decoder == "gaussian":
        return -_sum_dims(gaussian_log_likelihood(x0, mean, var))
    return -_sum_dims(discretized_gaussian_log_likelihood(x0, mean, var, bin_width))


def bits_per_dim(nats: Tensor, num_dims: int) -> Tensor:
    """Convert a negative log-likelihood in nats (per example) to bits per dimension."""
    num_dims = check_int(num_dims, "num_dims (data dimensions per example, e.g. x[0].numel())", 1)
    if isinstance(nats, bool) or not isinstance(nats, (Tensor, float, int)):
        raise TypeError(f"nats must be a tensor or a number, got {type(nats).__name__}")
    return nats / (num_dims * math.log(2))


def l_simple(eps_model: EpsModel, schedule: NoiseSchedule, x0: Tensor, t: Tensor | None = None,
             noise: Tensor | None = None, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
    """L_simple = E ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²  (DDPM eq. 14, Alg. 1), a scalar.

    t ~ Uniform{0..T−1} and ε ~ N(0, I) unless given. The squared error is averaged over
    dimensions (not summed) so the loss scale does not depend on image size.
    """
    _check_call(eps_model, schedule, x0, cond)
    _check_generator(generator)
    if t is None:
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator).to(x0.device)
    t = schedule.check_t(t, batch=x0.shape[0])
    noise = noise_like(x0, noise, generator)
    eps = call_eps(eps_model, q_sample(schedule, x0, t, noise), t, cond)
    return (noise - eps).pow(2).mean()


def predicted_x0(schedule: NoiseSchedule, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
    """x̂_0 from an ε prediction at step t (see :func:`minidiff.eps.eps_to_x0`)."""
    return eps_to_x0(x_t, eps, schedule.gather(schedule.alpha_bar, t, x_t))


def _sum_dims(x: Tensor) -> Tensor:
    return x.sum(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def _same_shape(**tensors: Tensor) -> None:
    for name, v in tensors.items():
        check_tensor(v, name, floating=True)
    shapes = {name: tuple(v.shape) for name, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes must match, got {shapes}")


def _check_schedule(schedule: Any) -> None:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a minidiff NoiseSchedule (e.g. NoiseSchedule.linear(1000)), "
                        f"got {type(schedule).__name__}")


def _check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
                        "make one with torch.Generator().manual_seed(seed)")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator (noise is drawn on the CPU, then moved), "
                         f"got one on {generator.device}")


def _check_call(eps_model: Any, schedule: Any, x0: Any, cond: Any) -> None:
    """Checks shared by the losses: a callable model for this schedule, a non-empty float batch, a matching cond."""
    _check_schedule(schedule)
    if not callable(eps_model):
        raise TypeError(f"eps_model must be callable as eps_model(x_t, t, cond), got {type(eps_model).__name__}")
    schedule.check_model(eps_model)
    check_tensor(x0, "x0", floating=True, min_ndim=1, nonempty=True)
    if C.is_cond(cond):   # other objects (e.g. cascade's LowResCondition) are the model's business
        C.check_cond(cond, batch=x0.shape[0])

r"""Chapter 3 — flow matching and rectified flow: the linear path, its velocity, and why it is the PF-ODE again.

**The path.** Data and noise are joined by a straight line (Liu, Gong & Liu 2023, "Flow Straight and Fast",
eq. 1; the optimal-transport conditional path of Lipman et al. 2023, "Flow Matching for Generative Modeling",
eq. 20 with σ_min = 0; the linear interpolant of Albergo & Vanden-Eijnden 2023):

.. math:: x_t = (1-t)\,x_0 + t\,\varepsilon,\qquad t\in[0,1],\quad \varepsilon\sim\mathcal N(0, I).

**Sign convention.** t = 0 is data and t = 1 is noise — the direction of the course's SDEs, so a flow model
runs on minidiff's continuous clock (:mod:`minidiff.clock`). Lipman et al. and Liu et al. put the *data* at
t = 1 (x_t = t x_1 + (1 − t) x_0, x_0 noise): their t is our 1 − t and their velocity our −v.

**The target.** Along each line dx_t/dt = u = ε − x_0; flow matching regresses a model v_θ(x_t, t) on it,
E_{t, x_0, ε} ‖v_θ(x_t, t) − (ε − x_0)‖² (Lipman eq. 23, conditional flow matching; Liu eq. 1). Its minimiser is
the marginal velocity v*(x, t) = E[ε − x_0 | x_t = x] (Lipman Thm. 2), whose ODE dx/dt = v* carries N(0, I)
at t = 1 to the data at t = 0 (Lipman Thm. 1).

**Conversions** (x_t | x_0 ~ N((1 − t) x_0, t² I), so Tweedie's ε = −t ∇log p_t; for the exact posterior means
and for any model read through them):

.. math:: x_0 = x_t - t\,v,\qquad \varepsilon = x_t + (1-t)\,v,\qquad \nabla\log p_t = -\varepsilon/t,
          \qquad v = (\varepsilon - x_t)/(1-t) = (x_t - x_0)/t.

**The same family as the probability-flow ODE.** The linear path is an SDE of the kind :mod:`minidiff.sde`
holds: the affine drift f = −x/(1 − t) and diffusion g² = 2t/(1 − t) give exactly the marginals (1 − t, t)
(d s²/dt = 2 (f/x) s² + g²), and its PF-ODE f − ½g²∇log p_t (Song et al. 2021, eq. 13) equals v. So
:class:`VelocityEps` turns a velocity model into an eps-model and :class:`FlowPath` lets
:func:`minidiff.ode.ode_loop` and :func:`minidiff.ode.ode_log_likelihood` sample it and score it unchanged.
One catch, taught rather than hidden: at t = 1 the path has *zero* signal-to-noise ratio (x_1 = ε), so
ε = x_t carries nothing of v and (ε − x_t)/(1 − t) is 0/0. The ODE solvers' clock τ ∈ [0, 1] is therefore
mapped to t = t_max·τ with t_max < 1 (default 0.999), like the VP-SDE whose m(1) ≈ 0.0066 ≠ 0 is neglected
too. A velocity model needs no such truncation: :func:`flow_sample` integrates from t = 1 to t = 0.
The other direction holds as well: :class:`EpsVelocity` reads the eps-model of *any* SDE (a chapter-2 DDPM net
through :class:`~minidiff.clock.ContinuousTime`) as a velocity on the linear path by matching signal-to-noise
ratios, so the rectified-flow sampler runs on it — and the exact models of every SDE give the one exact velocity.

Shapes: x: (B, *shape); times: Python floats or (B,) tensors in [0, 1].
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import cond as cond_ops
from .checks import check_choice, check_int, check_real, check_tensor
from .clock import check_continuous_model, check_time
from .config import show_progress
from .eps import EpsModel, call_eps, eps_to_score, score_to_eps
from .exact import noise_level
from .forward import noise_like
from .ode import ode_step
from .samplers import check_shape, infer_device_dtype, run_loop
from .sde import SDE
from .train import LossFn, drop_conditions, split_batch

if TYPE_CHECKING:
    from .data.toys import GaussianMixture
    from .schedules import NoiseSchedule

__all__ = ["linear_path", "velocity_target", "velocity_to_eps", "eps_to_velocity", "velocity_to_x0",
           "x0_to_velocity", "velocity_to_score", "score_to_velocity", "TIME_SAMPLINGS", "sample_flow_times",
           "flow_matching_loss", "FlowPath", "VelocityEps", "EpsVelocity", "mixture_posterior_means",
           "MixtureVelocity", "FLOW_METHODS", "flow_loop", "flow_sample"]

VelocityModel = EpsModel          # the same contract: v_model(x_t: (B, *shape), t: (B,) in [0, 1], cond=None)


# ------------------------------------------------------------------------------ the path and the conversions
def _per_example(t: Tensor | float, x: Tensor, name: str = "t", *, x_name: str = "x_t", below_one: bool = False,
                 above_zero: bool = False, why: str = "") -> Tensor:
    """Times t (a float or (B,)) in [0, 1] (optionally < 1 / > 0) as (B, 1, ..., 1) in x's dtype and device."""
    check_tensor(x, x_name, floating=True, min_ndim=1)
    t = check_time(t, x.shape[0], name)
    if (below_one and bool((t >= 1).any())) or (above_zero and bool((t <= 0).any())):
        bound = "< 1" if below_one else "> 0"
        raise ValueError(f"{name} must be {bound} here, got min {float(t.min()):g}, max {float(t.max()):g}{why}")
    return t.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _same_shape(x_t: Tensor, other: Tensor, name: str) -> None:
    check_tensor(other, name, floating=True)
    if other.shape != x_t.shape:
        raise ValueError(f"{name} must have the shape of x_t {tuple(x_t.shape)}, got {tuple(other.shape)}")


_AT_NOISE = (" (at t = 1 the linear path is pure noise, x_1 = ε: ε and the score carry nothing of the velocity —"
             " zero terminal SNR; predict v directly, or stop at t_max < 1 as FlowPath does)")
_AT_DATA = " (at t = 0, x_t = x_0: the clean sample carries nothing of the velocity, and the score is undefined)"


def linear_path(x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    r""":math:`x_t = (1-t)\,x_0 + t\,\varepsilon` (Liu et al. 2023, eq. 1). x0, noise: (B, *shape); t: float or (B,)."""
    t = _per_example(t, x0, x_name="x0")
    _same_shape(x0, noise, "noise")
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The conditional velocity u = dx_t/dt = ε − x_0 (Lipman et al. 2023, eq. 23 in our direction): (B, *shape)."""
    check_tensor(x0, "x0", floating=True, min_ndim=1)
    _same_shape(x0, noise, "noise")
    return noise - x0


def velocity_to_eps(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """ε = x_t + (1 − t) v. x_t, v: (B, *shape); t: float or (B,) in [0, 1]."""
    t = _per_example(t, x_t)
    _same_shape(x_t, v, "v")
    return x_t + (1 - t) * v


def eps_to_velocity(x_t: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
    """v = (ε − x_t)/(1 − t), t < 1 (from x_t = (1 − t) x_0 + t ε). x_t, eps: (B, *shape)."""
    t = _per_example(t, x_t, below_one=True, why=_AT_NOISE)
    _same_shape(x_t, eps, "eps")
    return (eps - x_t) / (1 - t)


def velocity_to_x0(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """x̂_0 = x_t − t v (one Euler step to t = 0). x_t, v: (B, *shape); t: float or (B,) in [0, 1]."""
    t = _per_example(t, x_t)
    _same_shape(x_t, v, "v")
    return x_t - t * v


def x0_to_velocity(x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
    """v = (x_t − x_0)/t, t > 0. x_t, x0: (B, *shape)."""
    t = _per_example(t, x_t, above_zero=True, why=_AT_DATA)
    _same_shape(x_t, x0, "x0")
    return (x_t - x0) / t


def velocity_to_score(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    r""":math:`\nabla\log p_t = -\varepsilon/t` with ε = x_t + (1 − t) v (Tweedie, :func:`minidiff.eps.eps_to_score`
    with the path's std s = t), t > 0. x_t, v: (B, *shape)."""
    std = _per_example(t, x_t, above_zero=True, why=_AT_DATA)
    return eps_to_score(velocity_to_eps(x_t, v, t), std)


def score_to_velocity(x_t: Tensor, score: Tensor, t: Tensor | float) -> Tensor:
    """v = (ε − x_t)/(1 − t) with ε = −t ∇log p_t (:func:`minidiff.eps.score_to_eps`), 0 < t < 1."""
    std = _per_example(t, x_t, above_zero=True, why=_AT_DATA)
    _same_shape(x_t, score, "score")
    return eps_to_velocity(x_t, score_to_eps(score, std), t)


# ------------------------------------------------------------------------------ training
TIME_SAMPLINGS = ("uniform", "logit_normal")


def _check_time_sampling(time_sampling: str, logit_mean: float, logit_std: float) -> tuple[float, float]:
    check_choice(time_sampling, "time_sampling", TIME_SAMPLINGS)
    logit_mean = check_real(logit_mean, "logit_mean", hint=" (m of the logit-normal; 0 is centred on t = 0.5)")
    logit_std = check_real(logit_std, "logit_std", low=0, low_open=True, hint=" (s of the logit-normal, e.g. 1.0)")
    return logit_mean, logit_std


def sample_flow_times(batch: int, generator: torch.Generator, time_sampling: str = "uniform", *,
                      logit_mean: float = 0.0, logit_std: float = 1.0) -> Tensor:
    r"""Training times (batch,) float32 in [0, 1]: ``"uniform"`` t ~ U[0, 1] (Lipman et al. 2023) or
    ``"logit_normal"`` t = sigmoid(m + s n), n ~ N(0, 1), which puts more weight on the middle of the path
    (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 19, π_ln(t; m, s))."""
    batch = check_int(batch, "batch", 1)
    logit_mean, logit_std = _check_time_sampling(time_sampling, logit_mean, logit_std)
    if time_sampling == "uniform":
        return torch.rand(batch, generator=generator)
    return torch.sigmoid(logit_mean + logit_std * torch.randn(batch, generator=generator))


def flow_matching_loss(time_sampling: str = "uniform", *, logit_mean: float = 0.0, logit_std: float = 1.0,
                       p_uncond: float = 0.0, null: cond_ops.NullSpec | None = None,
                       keys: Sequence[str] = cond_ops.NULL_KEYS) -> LossFn:
    r"""Conditional flow matching as a ``loss_fn`` for :func:`minidiff.train.fit` (Lipman et al. 2023, eq. 23;
    Liu et al. 2023, eq. 1): mean over batch and dimensions of ‖v_θ(x_t, t, c) − (ε − x_0)‖², x_t on the linear path.

    A batch is x_0: (B, *shape) or (x_0, cond). The model runs on the continuous clock (``ContinuousTime(net)``;
    a discrete-time net is refused). Times: :func:`sample_flow_times`. With probability ``p_uncond`` a row's
    condition is replaced by the null condition (``null``, default the model's ``null_cond``; only ``keys`` of a
    mapping) through :func:`minidiff.cond.drop`, as :func:`minidiff.train.diffusion_loss` does for CFG.
    """
    logit_mean, logit_std = _check_time_sampling(time_sampling, logit_mean, logit_std)
    p_uncond = check_real(p_uncond, "p_uncond", low=0, high=1, hint=" (the condition-dropout probability)")
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"keys must be a sequence of condition names, e.g. ('label', 'context'), got {keys!r}")

    def loss_fn(model: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        check_continuous_model(model, "flow_matching_loss")
        x0, cond = split_batch(batch)
        check_tensor(x0, "x0", floating=True, min_ndim=2, nonempty=True)
        t = sample_flow_times(x0.shape[0], generator, time_sampling, logit_mean=logit_mean, logit_std=logit_std)
        noise = noise_like(x0, generator=generator)
        cond = drop_conditions(model, cond, p_uncond, null, keys, generator, x0.shape[0], "flow_matching_loss")
        t = t.to(device=x0.device, dtype=x0.dtype)
        v = call_eps(model, linear_path(x0, noise, t), t, cond)
        return (v - velocity_target(x0, noise)).pow(2).mean()

    return loss_fn


# ------------------------------------------------------------------------------ the path as an SDE
class FlowPath(SDE):
    r"""The linear path as an SDE of :mod:`minidiff.sde`, on the solvers' clock τ ∈ [0, 1] with path time t = t_max·τ.

    marginal (m, s) = (1 − t, t);  f(x, τ) = −t_max x/(1 − t);  g(τ)² = t_max · 2t/(1 − t)  (the chain rule
    dt = t_max dτ on f = −x/(1 − t), g² = 2t/(1 − t)). Its PF-ODE f − ½g²∇log p (eq. 13) is t_max·v(x, t).
    t_max < 1 keeps f and g finite (module docstring: zero terminal SNR); the prior N(0, I) at τ = 1 neglects
    the (1 − t_max) x_0 still in x_{t_max}. With t_max = 1 the marginals are the whole path, but the drift is
    refused at τ = 1.
    """

    name = "flow"

    def __init__(self, t_max: float = 0.999) -> None:
        self.t_max = check_real(t_max, "t_max", low=0, high=1, low_open=True,
                                hint=" (the path time the solvers' τ = 1 maps to; < 1 for the ODE solvers, e.g. 0.999)")

    def path_time(self, tau: Tensor | float) -> Tensor:
        """t = t_max·τ, (B,) float64."""
        return self.t_max * check_time(tau, name="tau")

    def marginal_coeffs(self, tau: Tensor | float) -> tuple[Tensor, Tensor]:
        t = self.path_time(tau)
        return 1 - t, t

    def _finite(self, tau: Tensor | float) -> Tensor:
        t = self.path_time(tau)
        if bool((t >= 1).any()):
            raise ValueError("the linear path's SDE drift and diffusion are singular at t = 1" + _AT_NOISE)
        return t

    def drift(self, x: Tensor, tau: Tensor | float) -> Tensor:
        t = self._finite(check_time(tau, x.shape[0], "tau"))
        return -self.t_max * x / (1 - t).to(x).reshape(-1, *([1] * (x.ndim - 1)))

    def diffusion(self, tau: Tensor | float) -> Tensor:
        t = self._finite(tau)
        return (2 * self.t_max * t / (1 - t)).sqrt()


class VelocityEps(nn.Module):
    r"""A velocity model as an eps-model on a :class:`FlowPath`'s clock: ε(x, τ) = x + (1 − t) v(x, t), t = t_max·τ.

    With it, every solver of :mod:`minidiff.sde` / :mod:`minidiff.ode` samples a flow model, and
    :func:`minidiff.ode.ode_log_likelihood` gives its exact likelihood.
    x: (B, *shape), τ: (B,) in [0, 1] -> (B, *shape).
    Declares ``clock = "continuous"`` and forwards the velocity model's ``null_cond`` (CFG works on it).
    """

    clock = "continuous"

    def __init__(self, velocity_model: VelocityModel, path: FlowPath) -> None:
        super().__init__()
        if not callable(velocity_model):
            raise TypeError(f"velocity_model must be callable as v(x_t, t, cond), got {type(velocity_model).__name__}")
        check_continuous_model(velocity_model, "VelocityEps")
        if not isinstance(path, FlowPath):
            raise TypeError(f"path must be a FlowPath (the clock the eps-model runs on), got {type(path).__name__}")
        self.velocity_model, self.path = velocity_model, path

    @property
    def null_cond(self) -> Any:
        return cond_ops.model_null(self.velocity_model)

    def forward(self, x: Tensor, tau: Tensor | float, cond: Any = None) -> Tensor:
        check_tensor(x, "x", floating=True, min_ndim=1)
        t = self.path.path_time(check_time(tau, x.shape[0], "tau"))
        v = call_eps(self.velocity_model, x, t.to(device=x.device, dtype=x.dtype), cond)
        return velocity_to_eps(x, v, t)


class EpsVelocity(nn.Module):
    r"""The other direction: an eps-model of any SDE of :mod:`minidiff.sde` as a velocity model on the linear path.

    Processes with the same signal-to-noise ratio are the same up to a scale (Kingma et al. 2021, "Variational
    Diffusion Models", sec. 5.1; Karras et al. 2022, EDM, eq. 4): the linear path at t has SNR ((1 − t)/t)², the SDE
    the SNR (m(τ)/s(τ))² at the τ found by bisection (it falls monotonically for VP, sub-VP and VE), and there
    x_sde = c·x_lin with c = ‖(m, s)‖/‖(1 − t, t)‖ (finite at both ends). The noise is the same, so

    .. math:: \varepsilon(x, t) = \varepsilon_\theta(c\,x, \tau),\qquad v = (\varepsilon - x)/(1 - t).

    Valid for t ≤ ``t_max`` = s(1)/(m(1) + s(1)), the SDE's own end (0.9934 for the VP-SDE of a linear DDPM
    schedule): start :func:`flow_sample` there, ``t_start=model.t_max``. x: (B, *shape), t: (B,) -> (B, *shape).
    """

    clock = "continuous"

    def __init__(self, eps_model: EpsModel, sde: SDE, bisection_steps: int = 60) -> None:
        super().__init__()
        if not callable(eps_model):
            raise TypeError(f"eps_model must be callable as eps(x_t, t, cond), got {type(eps_model).__name__}")
        check_continuous_model(eps_model, "EpsVelocity")
        if not callable(getattr(sde, "marginal_coeffs", None)):
            raise TypeError(f"sde must be an SDE of minidiff.sde (VPSDE(), ...), got {type(sde).__name__}")
        self.eps_model, self.sde = eps_model, sde
        self.bisection_steps = check_int(bisection_steps, "bisection_steps", 1, hint=" (60 halvings reach float64)")
        m1, s1 = (float(c) for c in sde.marginal_coeffs(1.0))
        self.t_max = s1 / (m1 + s1)

    @property
    def null_cond(self) -> Any:
        return cond_ops.model_null(self.eps_model)

    def sde_time(self, t: Tensor) -> Tensor:
        """τ (B,) float64 with log SNR_sde(τ) = 2 log((1 − t)/t), by bisection on [0, 1]. t: (B,) float64."""
        target = 2 * (torch.log1p(-t) - torch.log(t))
        lo, hi = torch.zeros_like(t), torch.ones_like(t)
        for _ in range(self.bisection_steps):
            mid = (lo + hi) / 2
            m, s = self.sde.marginal_coeffs(mid)
            later = 2 * (m.log() - s.log()) > target          # still less noisy than the target: τ is later
            lo, hi = torch.where(later, mid, lo), torch.where(later, hi, mid)
        return (lo + hi) / 2

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        check_tensor(x, "x", floating=True, min_ndim=1)
        t = check_time(t, x.shape[0])
        if bool((t > self.t_max + 1e-6).any()):                 # 1e-6: t_max rounded to float32 by a sampler
            raise ValueError(f"t must be <= t_max={self.t_max:.6g}, the linear-path time of the SDE's end (τ = 1); "
                             f"got max {float(t.max()):g}: start the flow there, flow_sample(..., t_start=model.t_max)")
        t = t.clamp(max=self.t_max)
        tau = self.sde_time(t)
        m, s = self.sde.marginal_coeffs(tau)
        c = ((m**2 + s**2) / ((1 - t) ** 2 + t**2)).sqrt().to(x).reshape(-1, *([1] * (x.ndim - 1)))
        eps = call_eps(self.eps_model, c * x, tau.to(device=x.device, dtype=x.dtype), cond)
        return eps_to_velocity(x, eps, t)


# ------------------------------------------------------------------------------ exact velocity of a mixture
def mixture_posterior_means(gmm: GaussianMixture, process: NoiseSchedule | SDE, x_t: Tensor,
                            t: Tensor | float) -> tuple[Tensor, Tensor]:
    r"""(E[x_0 | x_t], E[ε | x_t]) for mixture data under any affine process x_t = m x_0 + s ε (a schedule, an SDE,
    a FlowPath), each (B, D) in x_t's dtype; x_t: (B, D), t: (B,) or a float on the process's clock.

    In the rescaled VP form y = x_t/c = √ᾱ' x_0 + √(1−ᾱ') ε (:func:`minidiff.exact.noise_level`), Gaussian
    conditioning within component k gives, with its score ∇log p(y | k) = C_k⁻¹(√ᾱ' μ_k − y), C_k = ᾱ'Σ_k + (1−ᾱ')I,

    .. math:: E[x_0 | y, k] = \mu_k + \sqrt{\bar\alpha'}\,\Sigma_k C_k^{-1}(y - \sqrt{\bar\alpha'}\mu_k)
              = \mu_k - \sqrt{\bar\alpha'}\,\Sigma_k \nabla\log p(y|k),\qquad
              E[\varepsilon | y, k] = -\sqrt{1-\bar\alpha'}\,\nabla\log p(y|k),

    averaged with the posterior p(k | y) (the second is Tweedie: −√(1−ᾱ')∇log p'(y), i.e. :class:`MixtureEps`).
    Unlike (x_t + s²∇log p_t)/m the first stays finite at m = 0 (pure noise: it is the data mean). The mixture
    math itself is :class:`~minidiff.data.GaussianMixture`'s (``class_log_posterior``, ``class_score``).
    """
    if not isinstance(x_t, Tensor) or x_t.ndim != 2 or x_t.shape[1] != gmm.dim:
        raise ValueError(f"x_t must have shape (B, {gmm.dim}), got {tuple(getattr(x_t, 'shape', ()))}")
    ab, c = noise_level(process, t, x_t.shape[0])
    y = x_t.double().cpu() / c[:, None]                        # differentiable (likelihoods)
    K = gmm.num_components
    resp = gmm.class_log_posterior(y, ab).exp()                                               # p(k | y): (B, K)
    scores = gmm.class_score(repeat(y, "b d -> (b k) d", k=K), repeat(ab, "b -> (b k)", k=K),
                             torch.arange(K).repeat(x_t.shape[0]))
    scores = rearrange(scores, "(b k) d -> b k d", k=K)                                       # ∇log p(y | k)
    x0_k = gmm.means - ab.sqrt()[:, None, None] * torch.einsum("kde,bke->bkd", gmm.covs, scores)
    eps_k = -(1 - ab).sqrt()[:, None, None] * scores
    x0, eps = (torch.einsum("bk,bkd->bd", resp, v) for v in (x0_k, eps_k))
    return x0.to(device=x_t.device, dtype=x_t.dtype), eps.to(device=x_t.device, dtype=x_t.dtype)


class MixtureVelocity:
    r"""The exact velocity v*(x, t) = E[ε − x_0 | x_t = x] of mixture data on the linear path (the marginal field
    of Lipman et al. 2023, Thm. 2), from the posterior means of :func:`mixture_posterior_means` — finite on all of
    [0, 1] (no division by t or 1 − t). x_t: (B, D), t: (B,) or float in [0, 1] -> (B, D) in x_t's dtype (float64
    inside). Runs on the continuous clock; unconditional.
    """

    clock = "continuous"

    def __init__(self, gmm: GaussianMixture) -> None:
        if not all(hasattr(gmm, a) for a in ("means", "covs", "class_score", "class_log_posterior")):
            raise TypeError(f"gmm must be a minidiff.data.GaussianMixture, got {type(gmm).__name__}")
        self.gmm, self.path = gmm, FlowPath(t_max=1.0)       # the whole path: only its marginals are read

    def __call__(self, x_t: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        if cond is not None:
            raise ValueError("MixtureVelocity is unconditional; got cond")
        x0, eps = mixture_posterior_means(self.gmm, self.path, x_t.double(), t)
        return (eps - x0).to(x_t.dtype)

    def __repr__(self) -> str:
        return f"MixtureVelocity(K={self.gmm.num_components}, D={self.gmm.dim})"


# ------------------------------------------------------------------------------ sampling
FLOW_METHODS = {"euler": 1, "heun": 2, "rk4": 4}      # velocity calls per step


def _flow_times(steps: int, t_start: float, t_end: float) -> list[float]:
    steps = check_int(steps, "steps", 1, hint=" (ODE steps from t_start to t_end)")
    t_start = check_real(t_start, "t_start", low=0, high=1, hint=" (1 = pure noise)")
    t_end = check_real(t_end, "t_end", low=0, high=1, hint=" (0 = data)")
    if not t_end < t_start:
        raise ValueError(f"need t_end < t_start (the flow runs from noise at t = 1 to data at t = 0), "
                         f"got t_start={t_start:g}, t_end={t_end:g}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()


@torch.no_grad()
def flow_loop(velocity_model: VelocityModel, x_T: Tensor, steps: int = 50, method: str = "euler", *,
              cond: Any = None, t_start: float = 1.0, t_end: float = 0.0, progress: bool = True
              ) -> Iterator[dict[str, Any]]:
    r"""Integrate dx/dt = v(x, t) from x_T: (B, *shape) at ``t_start`` to ``t_end`` in ``steps`` equal steps
    (``method`` "euler", "heun" or "rk4": :func:`minidiff.ode.ode_step`, 1/2/4 calls per step).

    Euler from t = 1 is the rectified-flow sampler (Liu et al. 2023, eq. 2); one Euler step is x̂_0 = x_1 − v.
    Yields ``{"t": t_next, "x": x_{t_next}, "nfe": calls so far}`` after every step. Deterministic.
    """
    check_choice(method, "method", tuple(FLOW_METHODS))
    grid = _flow_times(steps, t_start, t_end)
    check_tensor(x_T, "x_T", floating=True, min_ndim=2, nonempty=True)
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T must be finite (no NaN or inf): the flow would carry them to every sample")
    check_continuous_model(velocity_model, "flow_sample")

    def velocity(x: Tensor, t: float) -> Tensor:
        return call_eps(velocity_model, x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device), cond)

    x = x_T
    for k in tqdm(range(len(grid) - 1), desc=f"flow {method}", disable=not show_progress(progress), leave=False):
        x = ode_step(velocity, x, grid[k], grid[k + 1], method)
        yield {"t": grid[k + 1], "x": x, "nfe": FLOW_METHODS[method] * (k + 1)}


def flow_sample(velocity_model: VelocityModel, shape: tuple[int, ...], steps: int = 50, method: str = "euler", *,
                cond: Any = None, generator: torch.Generator | None = None, device: str | torch.device | None = None,
                x_T: Tensor | None = None, t_start: float = 1.0, t_end: float = 0.0, return_trajectory: bool = False,
                progress: bool = True) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Samples of ``shape`` (B, *data_shape) from a velocity model: x_T ~ N(0, I) (drawn in float32 on the CPU
    ``generator``, then cast and moved like :func:`minidiff.sample`), then :func:`flow_loop`. ``cond`` is checked
    to have batch B and moved. Returns x at ``t_end`` (and the list [x_T, x after each step])."""
    shape = check_shape(shape)
    dev, dtype = infer_device_dtype(velocity_model, x_T, device)
    if x_T is None:
        x_T = torch.randn(shape, generator=generator).to(device=dev, dtype=dtype)
    elif not isinstance(x_T, Tensor) or tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(getattr(x_T, 'shape', ()))} but shape={shape}")
    else:
        x_T = x_T.to(dev)
    if cond_ops.is_cond(cond):
        cond = cond_ops.to(cond_ops.check_cond(cond, batch=shape[0]), dev, dtype)
    loop = flow_loop(velocity_model, x_T, steps, method, cond=cond, t_start=t_start, t_end=t_end, progress=progress)
    return run_loop(loop, x_T, return_trajectory)

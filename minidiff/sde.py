r"""Chapter 3 — diffusion as a stochastic differential equation (Song et al. 2021, ICLR,
"Score-Based Generative Modeling through SDEs"; Anderson 1982).

Continuous time ``t ∈ [0, 1]`` (DESIGN.md, "two clocks"). A forward SDE

.. math:: dx = f(x, t)\,dt + g(t)\,dw                                               \quad\text{(Song eq. 5)}

has, for the affine drifts used here, Gaussian transition kernels
:math:`x_t \mid x_0 \sim \mathcal N(m(t)\,x_0,\ s(t)^2 I)` (:meth:`SDE.marginal`), and runs backwards as

.. math:: dx = [f(x, t) - g(t)^2 \nabla_x \log p_t(x)]\,dt + g(t)\,d\bar w             \quad\text{(eq. 6, Anderson 1982)}

* VP (eq. 11, the limit of DDPM):  f = −½β(t)x,  g = √β(t),  m = e^{−½B(t)},  s² = 1 − e^{−B(t)},  B(t) = ∫₀ᵗβ
* sub-VP (eq. 29):                 f = −½β(t)x,  g = √(β(t)(1 − e^{−2B(t)})),  m = e^{−½B},  s = 1 − e^{−B}
* VE (eq. 9/30, SMLD):             f = 0,  g = σ(t)√(2 log(σ_max/σ_min)),  σ(t) = σ_min(σ_max/σ_min)ᵗ,
                                   m = 1,  s² = σ(t)² − σ_min²  (exact from x(0) = x_0; Song's code uses
                                   s = σ(t), i.e. treats the data as already noised by σ_min)

Models keep the eps-contract of :mod:`minidiff.eps` with a *continuous* clock:
``eps_model(x_t: (B, *shape), t: (B,) float in [0, 1], cond=None)``; the score is
``eps_to_score(eps, s(t))`` — the one conversion, Tweedie (:func:`minidiff.clock.score_fn`, which refuses a
discrete-time model). :class:`~minidiff.clock.ContinuousTime` is the single place where a continuous time
becomes the step index the minidiff nets embed, and the bridge that lets a chapter-2 DDPM model be sampled
by these solvers (:meth:`VPSDE.from_schedule`).

This module holds the SDEs and the stochastic samplers (reverse-SDE Euler–Maruyama and
predictor–corrector, Alg. 2–3 / App. G); the probability-flow ODE and exact likelihoods live in
:mod:`minidiff.ode`, the clock and the bridge in :mod:`minidiff.clock`, the DSM loss in :mod:`minidiff.dsm`,
the exact mixture eps-model in :mod:`minidiff.exact` (all re-exported here).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checks import check_int, check_real
from .clock import ContinuousTime, CountCalls, check_time, score_fn, time_grid
from .config import resolve_device, show_progress
from .dsm import WEIGHTINGS, dsm_loss
from .eps import EpsModel
from .exact import MixtureEps, noised_mixture
from .forward import noise_like
from .ode import ode_loop
from .samplers import run_loop
from .schedules import NoiseSchedule

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "SDES", "make_sde", "em_step", "reverse_diffusion_step",
           "langevin_step", "pc_loop", "em_loop", "sample_sde", "PREDICTORS", "CORRECTORS", "SAMPLE_METHODS",
           # re-exported from their own modules (chapter 3 imports them from here)
           "check_time", "ContinuousTime", "CountCalls", "score_fn", "MixtureEps", "noised_mixture", "dsm_loss",
           "WEIGHTINGS"]


def _check_dt(dt: float) -> float:
    return check_real(dt, "dt", low=0, low_open=True, hint=" (the step goes from t to t - dt)")


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) on x's device and dtype."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class SDE:
    """A forward SDE dx = f(x, t) dt + g(t) dw on t ∈ [0, 1] with affine drift (Song eq. 5).

    Subclasses give ``drift``, ``diffusion`` and ``marginal_coeffs``; everything else follows.
    Shapes: x: (B, *shape), t: (B,) float in [0, 1] (a Python float is broadcast).
    """

    name = "sde"

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """f(x, t): (B, *shape)."""
        raise NotImplementedError

    def diffusion(self, t: Tensor | float) -> Tensor:
        """g(t): (B,) (scalar diffusion, the same for every coordinate)."""
        raise NotImplementedError

    def marginal_coeffs(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(m(t), s(t)), each (B,) float64: x_t | x_0 ~ N(m x_0, s² I)."""
        raise NotImplementedError

    def marginal(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean (B, *shape) and std (B, 1, ..., 1) of the transition kernel p_{0t}(x_t | x_0)."""
        t = check_time(t, x0.shape[0])
        m, s = self.marginal_coeffs(t)
        return _bcast(m, x0) * x0, _bcast(s, x0)

    def std(self, t: Tensor | float) -> Tensor:
        """s(t), (B,) float64: the std that converts eps <-> score (:func:`minidiff.eps.eps_to_score`)."""
        return self.marginal_coeffs(t)[1]

    @property
    def prior_std(self) -> float:
        return 1.0

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: str | torch.device | None = None) -> Tensor:
        """x_1 ~ N(0, prior_std² I) of ``shape`` (B, *shape), drawn on the CPU generator then moved."""
        return (self.prior_std * torch.randn(tuple(shape), generator=generator)).to(resolve_device(device))

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std² I) summed over all but the batch dim: (B, *shape) -> (B,)."""
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * self.prior_std**2) - 0.5 * sq / self.prior_std**2

    def discretize(self, x: Tensor, t: Tensor | float, dt: float) -> tuple[Tensor, Tensor]:
        """One forward step of size dt > 0 as x_{k+1} = x_k + F + G z (Euler–Maruyama by default):
        F = f(x, t) dt: (B, *shape), G = g(t) √dt: (B, 1, ..., 1). Used by the reverse-diffusion predictor."""
        dt = _check_dt(dt)
        t = check_time(t, x.shape[0])
        return self.drift(x, t) * dt, _bcast(self.diffusion(t), x) * math.sqrt(dt)

    def reverse_drift(self, x: Tensor, t: Tensor | float, score: Tensor, probability_flow: bool = False) -> Tensor:
        r"""Drift of the reverse-time SDE, f − g² ∇log p_t (eq. 6), or of the probability-flow ODE,
        f − ½ g² ∇log p_t (eq. 13). x, score: (B, *shape) -> (B, *shape)."""
        if score.shape != x.shape:
            raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}")
        t = check_time(t, x.shape[0])
        g2 = _bcast(self.diffusion(t), x) ** 2
        return self.drift(x, t) - (0.5 if probability_flow else 1.0) * g2 * score

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v:g}' for k, v in vars(self).items() if isinstance(v, float))})"


class VPSDE(SDE):
    """Variance preserving (Song eq. 11): dx = −½β(t)x dt + √β(t) dw, β(t) = β_min + t(β_max − β_min).

    DDPM with T steps β_i is its discretisation with β(t_i) ≈ T β_i (see :meth:`from_schedule`).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min = check_real(beta_min, "beta_min", low=0, low_open=True, hint=" (β(0); 0.1 in Song et al.)")
        beta_max = check_real(beta_max, "beta_max", low=0, low_open=True, hint=" (β(1); 20 in Song et al.)")
        if beta_min > beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max (β(t) rises linearly), got {beta_min:g}, {beta_max:g}")
        self.beta_min, self.beta_max = beta_min, beta_max

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule) -> "VPSDE":
        r"""The VP-SDE whose discretisation is a *linear* DDPM schedule: β_min = T β_1, β_max = T β_T
        (0.1 and 20 for Ho et al.'s 1e-4 … 0.02 with T = 1000). Time t ↔ index t·T − 1, i.e. the
        paper's step i at t = i/T (:meth:`ContinuousTime.from_ddpm`); there s(t) matches √(1 − ᾱ_i)
        to 1.4e-3 (absolute) for T = 1000, see tests/test_sde.py."""
        b = schedule.betas
        ramp = torch.linspace(float(b[0]), float(b[-1]), schedule.T, dtype=torch.float64)
        if not torch.allclose(b, ramp, rtol=1e-6, atol=1e-12):
            raise ValueError(f"from_schedule needs a linear schedule (betas evenly spaced), got {schedule.name!r}; "
                             "a VP-SDE with another beta(t) is not implemented")
        return cls(schedule.T * float(b[0]), schedule.T * float(b[-1]))

    def beta(self, t: Tensor | float) -> Tensor:
        return self.beta_min + check_time(t).double() * (self.beta_max - self.beta_min)

    def integral_beta(self, t: Tensor | float) -> Tensor:
        """B(t) = ∫₀ᵗ β(s) ds = β_min t + ½ t² (β_max − β_min)."""
        t = check_time(t).double()
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        return -0.5 * _bcast(self.beta(check_time(t, x.shape[0])), x) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        return self.beta(t).sqrt()

    def marginal_coeffs(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        B = self.integral_beta(t)
        return torch.exp(-0.5 * B), (-torch.expm1(-B)).sqrt()

    def discretize(self, x: Tensor, t: Tensor | float, dt: float) -> tuple[Tensor, Tensor]:
        """DDPM's own step (Song App. E): x_{k+1} = √(1−β) x_k + √β z with β = 1 − e^{−β(t) dt}
        (= β(t) dt to first order, the DDPM β_i; the exponential keeps β < 1 for large steps)."""
        dt = _check_dt(dt)
        beta = _bcast(-torch.expm1(-self.beta(check_time(t, x.shape[0])) * dt), x)
        return (torch.sqrt(1 - beta) - 1) * x, beta.sqrt()


class SubVPSDE(VPSDE):
    """sub-VP (Song eq. 29): like VP but g² = β(t)(1 − e^{−2B(t)}); its variance (1 − e^{−B})² stays
    below VP's 1 − e^{−B} at every t (hence the name)."""

    name = "subvp"

    def diffusion(self, t: Tensor | float) -> Tensor:
        return (self.beta(t) * -torch.expm1(-2 * self.integral_beta(t))).sqrt()

    def marginal_coeffs(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        B = self.integral_beta(t)
        return torch.exp(-0.5 * B), -torch.expm1(-B)

    def discretize(self, x: Tensor, t: Tensor | float, dt: float) -> tuple[Tensor, Tensor]:
        return SDE.discretize(self, x, t, dt)


class VESDE(SDE):
    """Variance exploding (Song eq. 9/30, the limit of SMLD/NCSN): dx = σ(t)√(2 log(σ_max/σ_min)) dw,
    σ(t) = σ_min (σ_max/σ_min)ᵗ; x_t | x_0 ~ N(x_0, (σ(t)² − σ_min²) I); prior N(0, σ_max² I)."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        sigma_min = check_real(sigma_min, "sigma_min", low=0, low_open=True, hint=" (σ(0), e.g. 0.01)")
        sigma_max = check_real(sigma_max, "sigma_max", low=0, low_open=True,
                               hint=" (σ(1): about the largest distance between data points)")
        if not sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min:g}, {sigma_max:g}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigma(self, t: Tensor | float) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** check_time(t).double()

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        check_time(t, x.shape[0])
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor | float) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal_coeffs(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        sigma = self.sigma(t)
        # ∫₀ᵗ g² ds = σ(t)² − σ_min²
        return torch.ones_like(sigma), (sigma**2 - self.sigma_min**2).clamp_min(0).sqrt()


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def make_sde(name: str, **kwargs: Any) -> SDE:
    """An SDE by name: ``make_sde("vp")``, ``make_sde("ve", sigma_max=5.0)``."""
    if not isinstance(name, str) or name not in SDES:
        raise ValueError(f"unknown SDE {name!r}; choose from {sorted(SDES)}")
    return SDES[name](**kwargs)


# ------------------------------------------------------------------------------ stochastic samplers
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")
CORRECTORS = ("langevin", "none")


def em_step(sde: SDE, x: Tensor, t: float, dt: float, score: Tensor, noise: Tensor | None = None,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r"""One Euler–Maruyama step of the reverse SDE (eq. 6) from t to t − dt (dt > 0):
    x̄ = x − [f(x, t) − g² ∇log p_t(x)] dt,  x' = x̄ + g √dt z.  Returns (x', x̄), each (B, *shape)."""
    dt = _check_dt(dt)
    x_mean = x - sde.reverse_drift(x, t, score) * dt
    g = _bcast(sde.diffusion(check_time(t, x.shape[0])), x)
    return x_mean + g * math.sqrt(dt) * noise_like(x, noise, generator), x_mean


def reverse_diffusion_step(sde: SDE, x: Tensor, t: float, dt: float, score: Tensor, noise: Tensor | None = None,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Song's reverse-diffusion predictor: undo the forward discretisation F, G of :meth:`SDE.discretize`,
    x̄ = x − F + G² ∇log p_t,  x' = x̄ + G z (for VP this is DDPM-like). Returns (x', x̄)."""
    f, G = sde.discretize(x, t, dt)
    x_mean = x - f + G**2 * score
    return x_mean + G * noise_like(x, noise, generator), x_mean


def langevin_step(x: Tensor, score: Tensor, snr: float, alpha: Tensor | float = 1.0, noise: Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r"""One corrector step of Langevin MCMC with the signal-to-noise step size (Song Alg. 4/5):
    ε = 2α (snr ‖z‖ / ‖∇log p‖)², x̄ = x + ε ∇log p,  x' = x̄ + √(2ε) z. Returns (x', x̄).

    As in Song et al.'s code the norms are averaged over the batch (one ε per step): per-example norms
    make ε explode wherever the score is small (between modes), which in low dimensions throws samples away."""
    if score.shape != x.shape:
        raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}")
    snr = check_real(snr, "snr", low=0, low_open=True, hint=" (the corrector's signal-to-noise ratio, e.g. 0.16)")
    alpha = check_real(alpha, "alpha", low=0, low_open=True, hint=" (α_i = 1 − β_i for VP, 1 for VE)")
    z = noise_like(x, noise, generator)
    grad_norm = score.reshape(score.shape[0], -1).norm(dim=1).mean().clamp_min(1e-12)
    noise_norm = z.reshape(z.shape[0], -1).norm(dim=1).mean()
    step = 2 * float(alpha) * float(snr * noise_norm / grad_norm) ** 2
    x_mean = x + step * score
    return x_mean + math.sqrt(2 * step) * z, x_mean


def _check_start(x: Tensor) -> None:
    if x.ndim < 2:
        raise ValueError(f"x_T must be batched, shape (B, *shape), got {tuple(x.shape)}")


@torch.no_grad()
def pc_loop(eps_model: EpsModel, sde: SDE, x_T: Tensor, steps: int = 500, *, predictor: str = "euler_maruyama",
            corrector: str = "langevin", snr: float = 0.16, n_corrector: int = 1, t_eps: float = 1e-3,
            cond: Any = None, generator: torch.Generator | None = None, progress: bool = True
            ) -> Iterator[dict[str, Any]]:
    """Predictor–corrector sampling (Song Alg. 1–3) from x_T: (B, *shape) at t = 1 down to ``t_eps``.

    Each of ``steps`` steps: ``n_corrector`` Langevin corrector steps at t (Alg. 4/5, step size from
    ``snr``), then one predictor step t → t − dt. The last predictor step adds no noise. Yields
    ``{"t", "x", "x_mean", "nfe"}`` after each step (``nfe``: model calls so far, 1 + n_corrector per step).
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none'")
    snr = check_real(snr, "snr", low=0, low_open=True, hint=" (the corrector's signal-to-noise ratio, e.g. 0.16)")
    n_corrector = check_int(n_corrector, "n_corrector", low=0)
    _check_start(x_T)
    score = score_fn(eps_model, sde, cond)
    grid = time_grid(steps, t_eps)
    x, nfe = x_T, 0
    bar = tqdm(range(steps), desc=f"PC {predictor}/{corrector}", disable=not show_progress(progress), leave=False)
    for k in bar:
        t, dt = grid[k], grid[k] - grid[k + 1]
        t_b = torch.full((x.shape[0],), t, dtype=torch.float64)
        x_mean = x
        if corrector == "langevin":
            # α_i = 1 − β_i ≈ e^{−β(t) dt} for VP-type SDEs (Alg. 5; the exponential stays > 0 for big steps), 1 for VE (Alg. 4)
            alpha = math.exp(-float(sde.beta(t)) * dt) if isinstance(sde, VPSDE) else 1.0
            for _ in range(n_corrector):
                x, x_mean = langevin_step(x, score(x, t_b), snr, alpha, generator=generator)
                nfe += 1
        if predictor != "none":
            step = em_step if predictor == "euler_maruyama" else reverse_diffusion_step
            x, x_mean = step(sde, x, t, dt, score(x, t_b), generator=generator)
            nfe += 1
        if k == steps - 1:
            x = x_mean                                   # no noise on the last step (like DDPM Alg. 2)
        yield {"t": grid[k + 1], "x": x, "x_mean": x_mean, "nfe": nfe}


def em_loop(eps_model: EpsModel, sde: SDE, x_T: Tensor, steps: int = 1000, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Reverse-SDE Euler–Maruyama (predictor only, one model call per step); see :func:`pc_loop`."""
    return pc_loop(eps_model, sde, x_T, steps, predictor="euler_maruyama", corrector="none", **kwargs)


SAMPLE_METHODS = ("euler_maruyama", "pc", "ode_euler", "ode_heun", "ode_rk4", "ode_rk45")


def sample_sde(eps_model: EpsModel, sde: SDE, shape: tuple[int, ...], method: str = "euler_maruyama",
               steps: int = 500, *, generator: torch.Generator | None = None, device: str | torch.device | None = None,
               x_T: Tensor | None = None, return_trajectory: bool = False, progress: bool = True,
               **loop_kwargs: Any) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Samples of ``shape`` (B, *data_shape): draw x_T from the prior (``generator``, CPU) and run
    ``method`` to the end — "euler_maruyama", "pc" (:func:`pc_loop`), or the probability-flow ODE
    "ode_euler" / "ode_heun" / "ode_rk4" / "ode_rk45" (:func:`minidiff.ode.ode_loop`). Returns x_0
    (and the list of states, x_T first)."""
    if method not in SAMPLE_METHODS:
        raise ValueError(f"method must be one of {SAMPLE_METHODS}, got {method!r}")
    shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else shape
    if not isinstance(shape, tuple) or len(shape) < 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ValueError(f"shape must be a batched shape (B, *data_shape) of positive ints, got {shape!r}")
    if x_T is None:
        x_T = sde.prior_sample(shape, generator, device)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}")
    if method == "euler_maruyama":
        loop = em_loop(eps_model, sde, x_T, steps, generator=generator, progress=progress, **loop_kwargs)
    elif method == "pc":
        loop = pc_loop(eps_model, sde, x_T, steps, generator=generator, progress=progress, **loop_kwargs)
    else:
        loop = ode_loop(eps_model, sde, x_T, steps, method=method[4:], progress=progress, **loop_kwargs)
    return run_loop(loop, x_T, return_trajectory)

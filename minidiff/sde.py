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
``eps_to_score(eps, s(t))`` — the one conversion, Tweedie. :class:`ContinuousTime` is the single place
where a continuous time becomes the step index the minidiff nets embed, and the bridge that lets a
chapter-2 DDPM model be sampled by these solvers (:meth:`VPSDE.from_schedule`).

Samplers here are the stochastic ones (reverse-SDE Euler–Maruyama and predictor–corrector, Alg. 2–3 /
App. G); the probability-flow ODE and exact likelihoods live in :mod:`minidiff.ode`.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import resolve_device, show_progress
from .data.toys import GaussianMixture
from .eps import EpsModel, call_eps, eps_to_score
from .forward import noise_like
from .samplers import run_loop
from .schedules import NoiseSchedule
from .train import Batch, LossFn

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "SDES", "make_sde", "check_time", "ContinuousTime",
           "MixtureEps", "noised_mixture", "score_fn", "dsm_loss", "WEIGHTINGS", "em_step", "langevin_step",
           "pc_loop", "em_loop", "sample_sde", "PREDICTORS", "CORRECTORS", "SAMPLE_METHODS", "CountCalls"]


def check_time(t: Tensor | float, batch: int | None = None, name: str = "t") -> Tensor:
    """Validate continuous times: a float or a (B,) float tensor in [0, 1]; returns a float64 tensor,
    broadcast to (batch,) when ``batch`` is given."""
    t = t if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.float64)   # a Python 0.3 stays 0.3
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)) or t.ndim > 1:
        raise ValueError(f"{name} must be a float or a (B,) float tensor in [0, 1], got {t.dtype} {tuple(t.shape)}")
    t = t.double()                       # coefficients are computed in float64, cast where they multiply x
    if t.numel() and (torch.isnan(t).any() or t.min() < 0 or t.max() > 1):
        raise ValueError(f"{name} must be in [0, 1], got min {float(t.min()):g}, max {float(t.max()):g}"
                         " (the continuous clock; discrete step indices belong to NoiseSchedule)")
    if batch is not None:
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape[0] != batch:
            raise ValueError(f"{name} has {t.shape[0]} entries but the batch has {batch}; give {name} shape (B,)")
    return t


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
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
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
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

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
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
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
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

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
    if name not in SDES:
        raise ValueError(f"unknown SDE {name!r}; choose from {sorted(SDES)}")
    return SDES[name](**kwargs)


# ------------------------------------------------------------------------------ models on the continuous clock
class ContinuousTime(nn.Module):
    """The one place where a continuous t ∈ [0, 1] becomes the step index a minidiff net embeds.

    ``ContinuousTime(net)`` feeds index = t·(T−1) (T = ``net.num_timesteps``, 999 by default): use it to
    *train* a continuous-time model with MLPDenoiser/UNet (their sinusoidal embedding takes fractional steps).
    ``ContinuousTime.from_ddpm(model)`` is the *bridge* for a chapter-2 model trained on indices: index =
    t·T − 1 (clamped to [0, T−1]), so that the model sees the noise level it was trained at
    (:meth:`VPSDE.from_schedule`). Either way: eps_model(x: (B, *shape), t: (B,) in [0, 1], cond=None).
    """

    def __init__(self, net: nn.Module | EpsModel, scale: float | None = None, shift: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.T = int(getattr(net, "num_timesteps", 1000))
        self.scale = float(self.T - 1 if scale is None else scale)
        self.shift = float(shift)

    @classmethod
    def from_ddpm(cls, model: nn.Module | EpsModel, T: int | None = None) -> "ContinuousTime":
        T = int(T or getattr(model, "num_timesteps", 1000))
        return cls(model, scale=T, shift=-1.0)

    def index(self, t: Tensor) -> Tensor:
        return (t * self.scale + self.shift).clamp(0, self.T - 1)

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        t = check_time(t, x.shape[0]).to(x.device)
        idx = self.index(t.float())
        return self.net(x, idx) if cond is None else self.net(x, idx, cond)


def noised_mixture(gmm: GaussianMixture, sde: SDE, t: float) -> GaussianMixture:
    """p_t of mixture data under ``sde`` at one time t: again a mixture, means m μ_k, covs m² Σ_k + s² I."""
    m, s = (float(v) for v in sde.marginal_coeffs(check_time(float(t))))
    eye = torch.eye(gmm.dim, dtype=torch.float64)
    return GaussianMixture(m * gmm.means, m**2 * gmm.covs + s**2 * eye, gmm.weights)


class MixtureEps:
    r"""The exact eps-model of mixture data under any of these SDEs: ε*(x, t) = −s(t) ∇log p_t(x).

    Every SDE here is a *rescaled VP*: x_t = m x_0 + s z = c·(√ᾱ' x_0 + √(1−ᾱ') z) with c = √(m²+s²),
    ᾱ' = m²/c². So ε*(x, t) = ε*_VP(x/c, ᾱ') — reusing :meth:`GaussianMixture.score`. x: (B, D), t: (B,).
    """

    def __init__(self, gmm: GaussianMixture, sde: SDE) -> None:
        self.gmm, self.sde = gmm, sde

    def __call__(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        if cond is not None:
            raise ValueError("the exact eps-model of a mixture is unconditional; got cond")
        m, s = self.sde.marginal_coeffs(check_time(t, x.shape[0]))
        c = (m**2 + s**2).sqrt()
        ab = (m / c) ** 2
        score_y = self.gmm.score(x / c.to(x)[:, None], ab.to(x.device))        # ∇_y log p(y), y = x / c
        return -(s / c).to(x)[:, None] * score_y                              # −√(1−ᾱ') ∇_y = −s ∇_x


def score_fn(eps_model: EpsModel, sde: SDE, cond: Any = None):
    """x, t -> ∇log p_t(x) = eps_to_score(eps_model(x, t), s(t)) (the one conversion, :mod:`minidiff.eps`)."""

    def score(x: Tensor, t: Tensor) -> Tensor:
        eps = call_eps(eps_model, x, t.to(x.device), cond)
        return eps_to_score(eps, _bcast(sde.std(t), x))

    return score


class CountCalls:
    """Wrap an eps-model and count its calls (``.calls``) — an honest NFE for any sampler."""

    def __init__(self, eps_model: EpsModel) -> None:
        self.eps_model, self.calls = eps_model, 0

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        self.calls += 1
        return self.eps_model(x, t) if cond is None else self.eps_model(x, t, cond)


# ------------------------------------------------------------------------------ denoising score matching
WEIGHTINGS = ("sigma2", "likelihood")


def dsm_loss(sde: SDE, weighting: str = "sigma2", t_eps: float = 1e-3) -> LossFn:
    r"""Denoising score matching as a ``loss_fn`` for :func:`minidiff.train.fit` (Song eq. 7, in ε form).

    x_t = m x_0 + s ε with t ~ U[t_eps, 1] (t_eps = 1e-3 avoids s → 0, where the score blows up);
    score error ‖s_θ − ∇log p_{0t}‖² = ‖ε_θ − ε‖²/s², weighted by λ(t):
    ``"sigma2"`` λ = s² ⇒ ‖ε − ε_θ‖² (DDPM's L_simple); ``"likelihood"`` λ = g² ⇒ (g²/s²)‖ε − ε_θ‖²
    (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training": bounds the KL of the ODE's model).
    Averaged over dimensions and batch. A batch is x_0: (B, *shape) or (x_0, cond).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not 0 < t_eps < 1:
        raise ValueError(f"t_eps must be in (0, 1), got {t_eps}")

    def loss_fn(model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        x0, cond = (batch[0], batch[1]) if isinstance(batch, tuple) else (batch, None)
        t = t_eps + (1 - t_eps) * torch.rand(x0.shape[0], generator=generator)
        noise = noise_like(x0, generator=generator)
        mean, std = sde.marginal(x0, t)
        eps = call_eps(model, mean + std * noise, t.to(x0.device), cond)
        err = (noise - eps).pow(2).reshape(x0.shape[0], -1).mean(1)
        if weighting == "likelihood":
            err = err * (sde.diffusion(t) ** 2 / sde.std(t) ** 2).to(err)
        return err.mean()

    return loss_fn


# ------------------------------------------------------------------------------ stochastic samplers
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")
CORRECTORS = ("langevin", "none")


def em_step(sde: SDE, x: Tensor, t: float, dt: float, score: Tensor, noise: Tensor | None = None,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r"""One Euler–Maruyama step of the reverse SDE (eq. 6) from t to t − dt (dt > 0):
    x̄ = x − [f(x, t) − g² ∇log p_t(x)] dt,  x' = x̄ + g √dt z.  Returns (x', x̄), each (B, *shape)."""
    if not dt > 0:
        raise ValueError(f"dt must be > 0 (the step goes from t to t - dt), got {dt}")
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
    z = noise_like(x, noise, generator)
    grad_norm = score.reshape(score.shape[0], -1).norm(dim=1).mean().clamp_min(1e-12)
    noise_norm = z.reshape(z.shape[0], -1).norm(dim=1).mean()
    step = 2 * float(alpha) * float(snr * noise_norm / grad_norm) ** 2
    x_mean = x + step * score
    return x_mean + math.sqrt(2 * step) * z, x_mean


def _time_grid(steps: int, t_eps: float) -> list[float]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0 <= t_eps < 1:
        raise ValueError(f"t_eps must be in [0, 1), got {t_eps}")
    return torch.linspace(1.0, t_eps, steps + 1, dtype=torch.float64).tolist()


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
    if not snr > 0 or n_corrector < 0:
        raise ValueError(f"need snr > 0 and n_corrector >= 0, got {snr}, {n_corrector}")
    _check_start(x_T)
    score = score_fn(eps_model, sde, cond)
    grid = _time_grid(steps, t_eps)
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
    from .ode import ode_loop  # the ODE module builds on this one

    if method not in SAMPLE_METHODS:
        raise ValueError(f"method must be one of {SAMPLE_METHODS}, got {method!r}")
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

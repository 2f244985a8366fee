r"""Chapter 3 — the probability-flow ODE: deterministic sampling and exact likelihoods.

Every SDE of :mod:`minidiff.sde` has an ODE whose trajectories share its marginals p_t (Song et al.
2021, ICLR, eq. 13):

.. math:: \frac{dx}{dt} = v(x, t) = f(x, t) - \tfrac12 g(t)^2 \nabla_x \log p_t(x).

* **Sampling**: integrate from x_1 ~ prior at t = 1 down to t_eps with fixed steps (Euler, Heun,
  RK4: 1, 2, 4 model calls per step) or adaptively with scipy's ``solve_ivp`` (RK45, Dormand–Prince,
  ``rtol``/``atol``; scipy is already a dependency of scikit-learn, so nothing new is installed).
* **Likelihood** (instantaneous change of variables, Chen et al. 2018; FFJORD, Grathwohl et al. 2019):
  along a trajectory d log p_t(x(t))/dt = −∇·v, so integrating from t_eps up to 1,

  .. math:: \log p_{t_\epsilon}(x) = \log p_1(x(1)) + \int_{t_\epsilon}^1 \nabla\!\cdot v(x(t), t)\,dt.

  The divergence is exact (D backward passes; fine for 2-D) or Hutchinson's estimate
  ∇·v ≈ zᵀ(∂v/∂x)z with a Rademacher z fixed for the whole solve (Hutchinson 1989; one backward pass).

Shapes: x: (B, *shape); times are Python floats or (B,) tensors in [0, 1].
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checks import check_int, check_real
from .clock import score_fn, time_grid
from .config import show_progress
from .eps import EpsModel

if TYPE_CHECKING:                      # sde.py builds on this module (sample_sde dispatches to ode_loop)
    from .sde import SDE

__all__ = ["pf_ode_velocity", "ode_step", "ode_loop", "ODE_METHODS", "ode_log_likelihood", "DIVERGENCES",
           "divergence", "dequantized_nll"]

ODE_METHODS = {"euler": 1, "heun": 2, "rk4": 4, "rk45": None}   # model calls per step (rk45: adaptive)
DIVERGENCES = ("exact", "hutchinson")
Velocity = Callable[[Tensor, float], Tensor]


def pf_ode_velocity(eps_model: EpsModel, sde: SDE, cond: Any = None) -> Velocity:
    """v(x, t) = f(x, t) − ½ g(t)² ∇log p_t(x) (eq. 13) with the score from the eps-model. t: a float."""
    score = score_fn(eps_model, sde, cond)

    def velocity(x: Tensor, t: float) -> Tensor:
        t_b = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        return sde.reverse_drift(x, t_b, score(x, t_b), probability_flow=True)

    return velocity


def ode_step(velocity: Velocity, x: Tensor, t: float, t_next: float, method: str = "heun") -> Tensor:
    """One fixed step of dx/dt = v(x, t) from t to t_next (either direction). x: (B, *shape).

    euler: x + h v(x, t);  heun: x + h/2 [v(x, t) + v(x + h v(x, t), t_next)];  rk4: classical Runge–Kutta.
    """
    h = t_next - t
    if method == "euler":
        return x + h * velocity(x, t)
    if method == "heun":
        k1 = velocity(x, t)
        k2 = velocity(x + h * k1, t_next)
        return x + 0.5 * h * (k1 + k2)
    if method == "rk4":
        k1 = velocity(x, t)
        k2 = velocity(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = velocity(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = velocity(x + h * k3, t_next)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    raise ValueError(f"fixed-step method must be 'euler', 'heun' or 'rk4', got {method!r} (rk45 is adaptive: ode_loop)")


def _check_method(method: str) -> None:
    if not isinstance(method, str) or method not in ODE_METHODS:
        raise ValueError(f"ODE method must be one of {tuple(ODE_METHODS)}, got {method!r}")


def _check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        check_real(value, name, low=0, low_open=True, hint=" (the adaptive solver's tolerance, e.g. 1e-5)")


def _solve_rk45(fun: Callable[[float, Tensor], Tensor], y0: Tensor, t_eval: list[float], rtol: float, atol: float
                ) -> tuple[list[Tensor], int]:
    """scipy's adaptive RK45 on a flat float64 state; returns the states at ``t_eval`` and the NFE."""
    from scipy.integrate import solve_ivp

    calls = 0

    def f(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return fun(t, torch.from_numpy(y).to(y0.device)).detach().cpu().double().numpy()

    sol = solve_ivp(f, (t_eval[0], t_eval[-1]), y0.detach().cpu().double().numpy(), method="RK45",
                    rtol=rtol, atol=atol, t_eval=t_eval[1:])
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return [torch.from_numpy(sol.y[:, k]).to(y0.device) for k in range(sol.y.shape[1])], calls


@torch.no_grad()
def ode_loop(eps_model: EpsModel, sde: SDE, x_T: Tensor, steps: int = 100, method: str = "heun", *,
             t_eps: float = 1e-3, rtol: float = 1e-5, atol: float = 1e-5, cond: Any = None,
             progress: bool = True) -> Iterator[dict[str, Any]]:
    """Sample by integrating the PF-ODE from x_T: (B, *shape) at t = 1 to ``t_eps``.

    Fixed-step methods take ``steps`` steps (NFE = steps × 1/2/4 for euler/heun/rk4). "rk45" lets scipy
    choose its steps to meet ``rtol``/``atol`` and reports the states at the same ``steps + 1`` grid
    (it solves first, then yields; ``nfe`` is then its total count). Yields ``{"t", "x", "x_mean", "nfe"}``
    (``x_mean`` = ``x``: the ODE adds no noise). No randomness: the same x_T gives the same sample.
    """
    _check_method(method)
    _check_tolerances(rtol, atol)
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be batched, shape (B, *shape), got {tuple(x_T.shape)}")
    grid = time_grid(steps, t_eps)
    velocity = pf_ode_velocity(eps_model, sde, cond)
    if method == "rk45":
        fun = lambda t, y: velocity(y.to(x_T.dtype).reshape(x_T.shape), t).reshape(-1).double()
        states, nfe = _solve_rk45(fun, x_T.reshape(-1).double(), grid, rtol, atol)
        for t, y in zip(grid[1:], states):
            x = y.to(x_T.dtype).reshape(x_T.shape)
            yield {"t": t, "x": x, "x_mean": x, "nfe": nfe}
        return
    x, per_step = x_T, ODE_METHODS[method]
    for k in tqdm(range(steps), desc=f"PF-ODE {method}", disable=not show_progress(progress), leave=False):
        x = ode_step(velocity, x, grid[k], grid[k + 1], method)
        yield {"t": grid[k + 1], "x": x, "x_mean": x, "nfe": per_step * (k + 1)}


# ------------------------------------------------------------------------------------- likelihood
def divergence(velocity: Velocity, x: Tensor, t: float, method: str = "exact", probes: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """(v(x, t), ∇·v(x, t)): (B, *shape), (B,). ``exact`` sums ∂v_d/∂x_d with D backward passes;
    ``hutchinson`` averages zᵀ(∂v/∂x)z over ``probes`` (P, B, *shape) — unbiased for E[zzᵀ] = I."""
    if method not in DIVERGENCES:
        raise ValueError(f"divergence method must be one of {DIVERGENCES}, got {method!r}")
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ValueError(f"x must be a batched tensor (B, *shape), got {getattr(x, 'shape', type(x).__name__)}")
    B = x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x, t)
        if method == "exact":
            flat = v.reshape(B, -1)
            D = flat.shape[1]
            div = torch.zeros(B, dtype=x.dtype, device=x.device)
            for d in range(D):
                grad = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=d < D - 1)[0]
                div = div + grad.reshape(B, -1)[:, d]
        else:
            if probes is None or probes.shape[1:] != x.shape:
                raise ValueError(f"hutchinson needs probes (P, *x.shape) = (P, {', '.join(map(str, x.shape))}), "
                                 f"got {None if probes is None else tuple(probes.shape)}")
            div = torch.zeros(B, dtype=x.dtype, device=x.device)
            for i, z in enumerate(probes):
                grad = torch.autograd.grad((v * z).sum(), x, retain_graph=i < len(probes) - 1)[0]
                div = div + (grad * z).reshape(B, -1).sum(1)
            div = div / len(probes)
    return v.detach(), div.detach()


def ode_log_likelihood(eps_model: EpsModel, sde: SDE, x: Tensor, method: str = "exact", *, solver: str = "rk45",
                       steps: int = 100, t_eps: float = 1e-3, rtol: float = 1e-5, atol: float = 1e-5,
                       n_probes: int = 1, generator: torch.Generator | None = None, cond: Any = None,
                       return_nfe: bool = False) -> Tensor | tuple[Tensor, int]:
    r"""log p(x) in nats of the PF-ODE's model density at t = ``t_eps``, per example: x: (B, *shape) -> (B,).

    Integrates the augmented ODE d[x, Δ]/dt = [v, ∇·v] from t_eps to 1 (``solver``: "rk45" adaptive with
    ``rtol``/``atol``, or "euler"/"heun"/"rk4" with ``steps``) and returns prior_logp(x(1)) + Δ(1).
    ``method``: "exact" divergence or "hutchinson" with ``n_probes`` Rademacher probes drawn once from
    ``generator`` (FFJORD). Bits/dim: ``minidiff.forward.bits_per_dim(-logp, D)`` (or :func:`dequantized_nll`
    for data on a grid). With ``return_nfe``: (logp, number of velocity evaluations).
    """
    if method not in DIVERGENCES:
        raise ValueError(f"method must be one of {DIVERGENCES}, got {method!r}")
    _check_method(solver)
    _check_tolerances(rtol, atol)
    steps = check_int(steps, "steps", 1, hint=" (fixed-step solvers take this many steps from t_eps to 1)")
    t_eps = check_real(t_eps, "t_eps", low=0, high=1, high_open=True, hint=" (the likelihood is that of p_{t_eps})")
    n_probes = check_int(n_probes, "n_probes", 1, hint=" (Rademacher probes per Hutchinson estimate)")
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be batched, shape (B, *shape), got {getattr(x, 'shape', type(x).__name__)}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite (no NaN or inf): its log-density is undefined")
    B, D = x.shape[0], x[0].numel()
    probes = None
    if method == "hutchinson":
        probes = (torch.randint(0, 2, (n_probes, *x.shape), generator=generator) * 2 - 1).to(x)
    velocity = pf_ode_velocity(eps_model, sde, cond)

    def fun(t: float, y: Tensor) -> Tensor:                 # y = [x (B·D), Δ (B)] flat, float64
        xs = y[: B * D].to(x.dtype).reshape(x.shape)
        v, div = divergence(velocity, xs, t, method, probes)
        return torch.cat([v.reshape(-1).double(), div.double()])

    y0 = torch.cat([x.detach().reshape(-1).double(), torch.zeros(B, dtype=torch.float64, device=x.device)])
    grid = torch.linspace(t_eps, 1.0, steps + 1, dtype=torch.float64).tolist()
    if solver == "rk45":
        states, nfe = _solve_rk45(fun, y0, [t_eps, 1.0], rtol, atol)
        y1 = states[-1]
    else:
        y1, nfe = y0, ODE_METHODS[solver] * steps
        for k in range(steps):
            y1 = ode_step(lambda y, t: fun(t, y), y1, grid[k], grid[k + 1], solver)
    z, delta = y1[: B * D].reshape(x.shape), y1[B * D:]
    logp = sde.prior_logp(z) + delta
    return (logp, nfe) if return_nfe else logp


def dequantized_nll(eps_model: EpsModel, sde: SDE, x: Tensor, bin_width: float, *, n_samples: int = 1,
                    generator: torch.Generator | None = None, **kwargs: Any) -> Tensor:
    r"""Upper bound on −log P(x) in nats for data on a grid of width Δ (e.g. digits, Δ = 2/16) by uniform
    dequantisation: −log P(x) ≤ E_u[−log p(x + u)] − D log Δ, u ~ U[−Δ/2, Δ/2]^D (Theis et al. 2016;
    Song et al. 2021, App. D.1). x: (B, *shape) -> (B,), averaged over ``n_samples`` draws of u.
    ``kwargs`` go to :func:`ode_log_likelihood`. Comparable with the discretised ELBO of chapters 1–2."""
    bin_width = check_real(bin_width, "bin_width", low=0, low_open=True,
                           hint=" (the spacing of the data grid, e.g. DIGITS_BIN_WIDTH = 2/16)")
    n_samples = check_int(n_samples, "n_samples", 1, hint=" (dequantisation draws to average)")
    D = x[0].numel()
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(n_samples):
        u = ((torch.rand(x.shape, generator=generator) - 0.5) * bin_width).to(x)
        total = total - ode_log_likelihood(eps_model, sde, x + u, generator=generator, **kwargs)
    return total / n_samples - D * math.log(bin_width)

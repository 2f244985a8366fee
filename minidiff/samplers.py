r"""Chapter 2 — samplers that turn an eps-model into samples.

* DDPM ancestral sampling (Ho et al. 2020, Alg. 2):
  :math:`x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\varepsilon_\theta\big) + \sigma_t z`.
* DDIM (Song, Meng & Ermon 2021, eq. 12), on a sub-sequence of steps τ:
  :math:`x_{\tau_{i-1}} = \sqrt{\bar\alpha_{\tau_{i-1}}}\,\hat x_0 + \sqrt{1-\bar\alpha_{\tau_{i-1}}-\sigma^2}\,\varepsilon_\theta + \sigma z`,
  :math:`\sigma = \eta\sqrt{\tfrac{1-\bar\alpha_{\tau_{i-1}}}{1-\bar\alpha_{\tau_i}}}\sqrt{1-\tfrac{\bar\alpha_{\tau_i}}{\bar\alpha_{\tau_{i-1}}}}`
  (eq. 16); η = 0 is deterministic, η = 1 matches DDPM's variance.

Each sampler comes as a *step* (pure function of x_t and ε) and a *loop* (a generator that yields
``{"t", "x", "x0"}`` after every step, so a notebook can plot trajectories). :func:`sample` runs a
loop to the end. Sampling never builds autograd graphs (``torch.no_grad``).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import resolve_device, show_progress
from .eps import EpsModel, call_eps, eps_to_x0, x0_to_eps
from .forward import model_mean, model_variance, noise_like
from .schedules import NoiseSchedule

__all__ = ["ddpm_step", "ddim_step", "ddim_timesteps", "ddpm_loop", "ddim_loop", "sample", "run_loop",
           "METHODS", "SPACINGS"]

METHODS = ("ddpm", "ddim")
SPACINGS = ("leading", "trailing", "linspace")


def _clip(x0: Tensor, clip_x0: float | None) -> Tensor:
    if clip_x0 is None:
        return x0
    if not clip_x0 > 0:
        raise ValueError(f"clip_x0 must be a positive bound (e.g. 1.0 for data in [-1, 1]) or None, got {clip_x0}")
    return x0.clamp(-clip_x0, clip_x0)


def ddpm_step(schedule: NoiseSchedule, x_t: Tensor, t: int, eps: Tensor, noise: Tensor | None = None,
              generator: torch.Generator | None = None, variance: str = "fixed_small",
              clip_x0: float | None = None) -> Tensor:
    """One ancestral step x_t -> x_{t-1} (DDPM Alg. 2, line 4). No noise is added at t = 0.

    x_t, eps: (B, *shape); t: int in [0, T); variance: "fixed_small" (σ² = β̃_t) or "fixed_large" (σ² = β_t).
    clip_x0: if given, x̂_0 is clamped to [−clip_x0, clip_x0] and the mean is the posterior mean
    μ̃_t(x_t, x̂_0) (eq. 7) — Ho et al.'s released sampler and diffusers' ``clip_sample=True``.
    """
    t = int(schedule.check_t(t))
    if clip_x0 is not None:
        # μ_θ in ε form (eq. 11) *is* μ̃_t(x_t, x̂_0(ε)), so clipping x̂_0 = re-deriving ε from it
        ab = float(schedule.alpha_bar[t])
        eps = x0_to_eps(x_t, _clip(eps_to_x0(x_t, eps, ab), clip_x0), ab)
    mean = model_mean(schedule, x_t, t, eps)
    if t == 0:
        return mean
    var = model_variance(schedule, t, x_t, variance)
    return mean + var.sqrt() * noise_like(x_t, noise, generator)


def ddim_step(schedule: NoiseSchedule, x_t: Tensor, t: int, t_prev: int, eps: Tensor, eta: float = 0.0,
              noise: Tensor | None = None, generator: torch.Generator | None = None,
              final_alpha_bar: float = 1.0, clip_x0: float | None = None) -> Tensor:
    """One DDIM step x_t -> x_{t_prev} (DDIM eq. 12). ``t_prev = -1`` means "to x_0", whose ᾱ is
    ``final_alpha_bar`` (1.0, or ᾱ at index 0: diffusers' ``set_alpha_to_one=False``).

    x_t, eps: (B, *shape); t > t_prev; eta ≥ 0. clip_x0: clamp x̂_0 to [−clip_x0, clip_x0] and keep the
    model's ε for the direction term (diffusers' ``clip_sample=True`` with its default
    ``use_clipped_model_output=False``).
    """
    t = int(schedule.check_t(t))
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must satisfy -1 <= t_prev < t={t}, got {t_prev}")
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    ab = float(schedule.alpha_bar[t])
    ab_prev = float(schedule.alpha_bar[t_prev]) if t_prev >= 0 else final_alpha_bar
    x0 = _clip(eps_to_x0(x_t, eps, ab), clip_x0)
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
    x_prev = ab_prev**0.5 * x0 + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
    return x_prev + sigma * noise_like(x_t, noise, generator) if sigma > 0 else x_prev


def ddim_timesteps(T: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> list[int]:
    """The descending sub-sequence τ of step indices DDIM visits, as diffusers' ``DDIMScheduler``
    builds it for ``timestep_spacing`` in {"leading", "trailing", "linspace"}."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, T]=[1, {T}], got {steps}")
    if spacing == "leading":
        ts = torch.arange(steps) * (T // steps) + steps_offset
    elif spacing == "trailing":
        # diffusers' exact float arithmetic (its rounding ties depend on it), cut to `steps` entries:
        # for some (T, steps), e.g. (1000, 61), the float arange overshoots and diffusers appends a -1
        ts = torch.from_numpy(np.round(np.arange(T, 0, -T / steps))[:steps].astype(np.int64) - 1)
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long()
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    ts = sorted({int(v) for v in ts}, reverse=True)
    if ts[0] >= T or ts[-1] < 0:
        raise ValueError(f"steps_offset={steps_offset} pushes timesteps outside [0, {T})")
    return ts


def _start(eps_model: EpsModel, schedule: NoiseSchedule, x_T: Tensor) -> None:
    schedule.check_model(eps_model)
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be batched, shape (B, *shape), got {tuple(x_T.shape)}")


def _check_t_start(schedule: NoiseSchedule, t_start: int | None) -> int:
    """The index the loop starts from: T − 1 (pure noise) unless ``t_start`` says x is a noised x_t."""
    if t_start is None:
        return schedule.T - 1
    if not 0 <= t_start < schedule.T:
        raise ValueError(f"t_start must be an index in [0, T)=[0, {schedule.T}) (x is x_{{t_start}}), got {t_start}")
    return int(t_start)


def _predict(eps_model: EpsModel, schedule: NoiseSchedule, x: Tensor, t: int, cond: Any,
             clip_x0: float | None) -> tuple[Tensor, Tensor]:
    """One model call at step ``t``: returns (ε_θ, x̂_0), x̂_0 clipped like the step will clip it."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    eps = call_eps(eps_model, x, t_batch, cond)
    return eps, _clip(eps_to_x0(x, eps, float(schedule.alpha_bar[t])), clip_x0)


@torch.no_grad()
def ddpm_loop(eps_model: EpsModel, schedule: NoiseSchedule, x_T: Tensor, cond: Any = None,
              generator: torch.Generator | None = None, variance: str = "fixed_small",
              clip_x0: float | None = None, t_start: int | None = None,
              progress: bool = True) -> Iterator[dict[str, Any]]:
    """DDPM ancestral sampling from x_T: (B, *shape); yields ``{"t": int, "x": x_{t-1}, "x0": x̂_0}``
    for t = t_start … 0 (t_start + 1 model calls; t_start = T − 1 by default, i.e. x_T is pure noise;
    a smaller t_start denoises a noised x_{t_start}, e.g. from :func:`minidiff.forward.q_sample`).

    Like Alg. 2, the last step adds no noise: samples are the decoder's *mean* μ_θ(x_1, 1), not draws
    from the decoder p_θ(x_0|x_1) that the ELBO scores."""
    _start(eps_model, schedule, x_T)
    x = x_T
    for t in tqdm(range(_check_t_start(schedule, t_start), -1, -1), desc="DDPM",
                  disable=not show_progress(progress), leave=False):
        eps, x0 = _predict(eps_model, schedule, x, t, cond, clip_x0)
        x = ddpm_step(schedule, x, t, eps, generator=generator, variance=variance, clip_x0=clip_x0)
        yield {"t": t, "x": x, "x0": x0}


@torch.no_grad()
def ddim_loop(eps_model: EpsModel, schedule: NoiseSchedule, x_T: Tensor, steps: int = 50, eta: float = 0.0,
              cond: Any = None, generator: torch.Generator | None = None, spacing: str = "leading",
              final_alpha_bar: float = 1.0, clip_x0: float | None = None, t_start: int | None = None,
              progress: bool = True) -> Iterator[dict[str, Any]]:
    """DDIM sampling with ``steps`` model calls; yields ``{"t", "x": x_{t_prev}, "x0"}`` per step.

    t_start: x_T is a noised x_{t_start}; the loop visits t_start and then the sub-sequence's
    indices below it (SDEdit / img2img), so it makes fewer than ``steps`` calls."""
    _start(eps_model, schedule, x_T)
    ts = ddim_timesteps(schedule.T, steps, spacing)
    if t_start is not None:
        t_start = _check_t_start(schedule, t_start)
        ts = [t_start] + [t for t in ts if t < t_start]
    x = x_T
    for t, t_prev in tqdm(list(zip(ts, ts[1:] + [-1])), desc="DDIM", disable=not show_progress(progress), leave=False):
        eps, x0 = _predict(eps_model, schedule, x, t, cond, clip_x0)
        x = ddim_step(schedule, x, t, t_prev, eps, eta, generator=generator, final_alpha_bar=final_alpha_bar,
                      clip_x0=clip_x0)
        yield {"t": t, "x": x, "x0": x0}


def sample(eps_model: EpsModel, schedule: NoiseSchedule, shape: tuple[int, ...], method: str = "ddpm",
           steps: int | None = None, eta: float = 0.0, cond: Any = None,
           generator: torch.Generator | None = None, device: str | torch.device | None = None,
           x_T: Tensor | None = None, return_trajectory: bool = False, progress: bool = True,
           **loop_kwargs: Any) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Draw samples of ``shape = (B, *data_shape)`` from an eps-model.

    method: "ddpm" (T steps; ``steps`` must be None or T) or "ddim" (``steps`` model calls, default 50).
    x_T: start noise (B, *shape); drawn from ``generator`` on the CPU when omitted, so the same seed
    gives the same samples on every device. Returns x_0 (and the list of x after each step).
    loop_kwargs go to the loop: ``variance`` (DDPM), ``spacing`` and ``final_alpha_bar`` (DDIM),
    ``clip_x0`` and ``t_start`` (both).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dev = resolve_device(device)
    if x_T is None:
        x_T = torch.randn(tuple(shape), generator=generator).to(dev)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}")
    if method == "ddpm":
        if steps not in (None, schedule.T):
            raise ValueError(f"DDPM takes all T={schedule.T} steps; got steps={steps} (use method='ddim' for fewer)")
        loop = ddpm_loop(eps_model, schedule, x_T, cond, generator, progress=progress, **loop_kwargs)
    else:
        loop = ddim_loop(eps_model, schedule, x_T, steps or 50, eta, cond, generator, progress=progress, **loop_kwargs)
    return run_loop(loop, x_T, return_trajectory)


def run_loop(loop: Iterator[dict[str, Any]], x_T: Tensor, return_trajectory: bool = False
             ) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Drive a sampling loop (any generator yielding ``{"x": ...}``, here or in :mod:`minidiff.sde`)
    to its end: the final x, and with ``return_trajectory`` also [x_T, x after each step]."""
    x, trajectory = x_T, [x_T]
    for state in loop:
        x = state["x"]
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x

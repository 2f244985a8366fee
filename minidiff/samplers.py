r"""Chapter 2 — samplers that turn an eps-model into samples.

* DDPM ancestral sampling (Ho et al. 2020, Alg. 2), written through x̂_0 like Ho et al.'s released
  code and diffusers' ``DDPMScheduler``:
  :math:`x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sigma_t z` with
  :math:`\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}\hat x_0 + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t`
  (eq. 7). With the unclipped :math:`\hat x_0 = (x_t-\sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}`
  this *is* eq. 11, :math:`\frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\varepsilon_\theta\big)`.
* DDIM (Song, Meng & Ermon 2021, eq. 12), on a sub-sequence of steps τ:
  :math:`x_{\tau_{i-1}} = \sqrt{\bar\alpha_{\tau_{i-1}}}\,\hat x_0 + \sqrt{1-\bar\alpha_{\tau_{i-1}}-\sigma^2}\,\varepsilon_\theta + \sigma z`,
  :math:`\sigma = \eta\sqrt{\tfrac{1-\bar\alpha_{\tau_{i-1}}}{1-\bar\alpha_{\tau_i}}}\sqrt{1-\tfrac{\bar\alpha_{\tau_i}}{\bar\alpha_{\tau_{i-1}}}}`
  (eq. 16); η = 0 is deterministic, η = 1 matches DDPM's variance.

Both steps are "x̂_0, then a linear combination": ``x_prev = a·x̂_0 + b·(x_t or ε) + σ·z``. A loop
computes every step's (a, b, σ) once, as Python floats from the float64 tables (:class:`StepCoefficients`),
so a step costs a handful of tensor ops; :func:`ddpm_step` / :func:`ddim_step` run the very same
arithmetic, so a loop equals its steps to the last bit.

x̂_0 can be kept in range before it is used: ``clip_x0=c`` clamps it to [−c, c] (Ho et al.'s released
sampler), ``dynamic_threshold=p`` applies Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3),
see :func:`dynamic_threshold`. On a zero-terminal-SNR schedule (ᾱ_{T−1} = 0, Lin et al. 2024) the
ε-parametrised x̂_0 is undefined at the last index: the steps and loops refuse it with an error that says
how to start one index later (``t_start=T-2``).

Each sampler comes as a *step* (pure function of x_t and ε) and a *loop* (a generator that yields
``{"t", "x", "x0"}`` after every step, so a notebook can plot trajectories). :func:`sample` runs a
loop to the end. Sampling never builds autograd graphs (``torch.no_grad``).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import cond as conditions
from .checks import check_int, check_real, check_tensor
from .clock import model_clock
from .config import resolve_device, show_progress
from .eps import EpsModel, call_eps
from .forward import VARIANCE_KINDS, noise_like
from .schedules import NoiseSchedule

__all__ = ["check_shape", "ddpm_step", "ddim_step", "ddim_timesteps", "ddpm_loop", "ddim_loop", "sample", "run_loop",
           "StepCoefficients", "ddpm_coefficients", "ddim_coefficients", "infer_device_dtype", "METHODS", "SPACINGS",
           "DynamicThreshold", "dynamic_threshold"]

METHODS = ("ddpm", "ddim")
SPACINGS = ("leading", "trailing", "linspace")


# ------------------------------------------------------------------------------ argument checks
def _int(value: Any, name: str, hint: str = "") -> int:
    """An int (also a numpy integer or a 0-d integer tensor), never a bool or a float."""
    return check_int(value, name, hint=hint)


def _real(value: Any, name: str, low: float, high: float = math.inf, low_open: bool = False,
          hint: str = "") -> float:
    """A finite real number in [low, high] ((low, high] with ``low_open``), never a bool."""
    return check_real(value, name, low, None if math.isinf(high) else high, low_open=low_open, hint=hint)


def _check_clip(clip_x0: Any) -> float | None:
    if clip_x0 is None:
        return None
    return _real(clip_x0, "clip_x0", 0.0, low_open=True, hint=" (a bound like 1.0 for data in [-1, 1]) or None")


def _check_x0_rule(clip_x0: Any, dynamic_threshold: Any) -> tuple[float | None, DynamicThreshold | None]:
    """What happens to x̂_0 before it is used: (static bound or None, dynamic threshold or None), at most one."""
    if dynamic_threshold is None:
        return _check_clip(clip_x0), None
    if clip_x0 is not None:
        raise ValueError("pass clip_x0 or dynamic_threshold, not both (dynamic thresholding already clips, at "
                         "±bound·s with s >= 1; its bound= plays clip_x0's role)")
    if isinstance(dynamic_threshold, DynamicThreshold):
        return None, dynamic_threshold
    if isinstance(dynamic_threshold, numbers.Real) and not isinstance(dynamic_threshold, bool):
        return None, DynamicThreshold(percentile=dynamic_threshold)
    raise TypeError(f"dynamic_threshold must be a percentile p in (0, 1] (e.g. 0.995), a DynamicThreshold or None, "
                    f"got {type(dynamic_threshold).__name__}")


def _check_index(schedule: NoiseSchedule, t: Any, name: str = "t") -> int:
    t = _int(t, name, " step index")
    if not 0 <= t < schedule.T:
        raise ValueError(f"{name} must be in [0, T)=[0, {schedule.T}), got {t}")
    return t


def _check_variance(variance: Any) -> str:
    if variance not in VARIANCE_KINDS:
        raise ValueError(f"variance must be one of {VARIANCE_KINDS}, got {variance!r}")
    return variance


def _check_like(x_t: Tensor, **tensors: Tensor | None) -> None:
    if not isinstance(x_t, Tensor) or not x_t.is_floating_point():
        raise TypeError(f"x_t must be a floating tensor (B, *shape), got {type(x_t).__name__}"
                        + (f" of dtype {x_t.dtype}" if isinstance(x_t, Tensor) else ""))
    for name, value in tensors.items():
        if value is not None and (not isinstance(value, Tensor) or value.shape != x_t.shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must have the shape of x_t {tuple(x_t.shape)}, got {got}")


# ------------------------------------------------------------------ keeping x̂_0 in the data range
@dataclass(frozen=True)
class DynamicThreshold:
    """Settings of :func:`dynamic_threshold`, checked once; ``rule(x0)`` applies it.

    Give one (or just the percentile, a float) as ``dynamic_threshold=`` to :func:`ddpm_step`,
    :func:`ddim_step`, the loops or :func:`sample`. percentile: p in (0, 1] (Imagen: 0.995 … 0.9999);
    max_value: a cap on s, >= 1, or None for none (diffusers' ``sample_max_value``); bound > 0: the data
    live in [−bound, bound] (1 for images in [−1, 1], as Imagen and diffusers assume).
    """

    percentile: float = 0.995
    max_value: float | None = None
    bound: float = 1.0

    def __post_init__(self) -> None:
        # frozen: write the checked (float) values through object.__setattr__
        object.__setattr__(self, "percentile", _real(self.percentile, "percentile", 0.0, 1.0, low_open=True,
                                                     hint=" (the quantile of |x̂_0| that sets s, e.g. 0.995)"))
        if self.max_value is not None:
            object.__setattr__(self, "max_value", _real(self.max_value, "max_value", 1.0,
                                                        hint=" (largest s, in units of bound) or None for no cap"))
        object.__setattr__(self, "bound", _real(self.bound, "bound", 0.0, low_open=True,
                                                hint=" (data range [-bound, bound], 1.0 for images in [-1, 1])"))

    def __call__(self, x0: Tensor) -> Tensor:
        check_tensor(x0, "x0", floating=True, min_ndim=2, nonempty=True)
        return _apply_threshold(x0, self)


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, max_value: float | None = None,
                      bound: float = 1.0) -> Tensor:
    r"""Imagen's dynamic thresholding of a predicted x̂_0 (Saharia et al. 2022, Sec. 2.3 and App. E),
    per sample, in units of the data range ``bound``:

    .. math:: s = \max\big(\mathrm{quantile}_p(|\hat x_0|/b),\ 1\big), \qquad
              \hat x_0 \leftarrow b\cdot\mathrm{clip}(\hat x_0/b,\,-s,\,s)\,/\,s

    (s also capped at ``max_value`` if given). While at most a fraction 1 − p of the entries leaves
    [−b, b], s = 1 and this is the static clip (``clip_x0=b``); beyond that the whole sample is shrunk by
    1/s, so saturated entries are pulled inside instead of piling up at ±b.

    x0: (B, *shape) floating; the quantile (linear interpolation, as ``torch.quantile`` and NumPy) runs over
    all entries of each sample. With ``bound=1`` it is diffusers' ``_threshold_sample`` (``thresholding=True``,
    ``dynamic_thresholding_ratio=p``, ``sample_max_value=max_value``). Returns a new tensor, same shape and dtype.
    """
    return DynamicThreshold(percentile, max_value, bound)(x0)


def _apply_threshold(x0: Tensor, rule: DynamicThreshold) -> Tensor:
    """:func:`dynamic_threshold` without the checks (the loops check their rule once)."""
    flat = rearrange(x0, "b ... -> b (...)")
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()                    # torch.quantile (and CPU half clamp) need float32/64
    y = flat / rule.bound
    s = torch.quantile(y.abs(), rule.percentile, dim=1, keepdim=True).clamp(min=1.0, max=rule.max_value)  # (B, 1)
    y = y.clamp(-s, s) / s                     # Imagen: "threshold x̂_0 to [−s, s], then divide by s"
    return (y * rule.bound).to(x0.dtype).reshape(x0.shape)


# ------------------------------------------------------------------------- per-step coefficients
class StepCoefficients(NamedTuple):
    r"""One step x_t -> x_prev as Python floats:
    :math:`\hat x_0 = (x_t - \text{eps\_scale}\cdot\varepsilon)/\text{root\_alpha\_bar}`, then
    ``x_prev = coef_x0·x̂_0 + coef_other·(ε if other_is_eps else x_t) + sigma·z`` (no z when sigma = 0)."""

    t: int
    eps_scale: float        # √(1 − ᾱ_t)
    root_alpha_bar: float   # √ᾱ_t
    coef_x0: float
    coef_other: float
    other_is_eps: bool
    sigma: float


def ddpm_coefficients(schedule: NoiseSchedule, t: int, variance: str = "fixed_small") -> StepCoefficients:
    r"""DDPM step t -> t − 1 (eq. 7): coef_x0 = √ᾱ_{t−1} β_t/(1−ᾱ_t), coef of x_t = √α_t (1−ᾱ_{t−1})/(1−ᾱ_t),
    σ_t² = β̃_t ("fixed_small") or β_t ("fixed_large"), σ = 0 at t = 0 (Alg. 2, line 3)."""
    t, variance = _check_index(schedule, t), _check_variance(variance)
    return _ddpm_coefficients(_tables(schedule), t, variance)


def ddim_coefficients(schedule: NoiseSchedule, t: int, t_prev: int, eta: float = 0.0,
                      final_alpha_bar: float = 1.0) -> StepCoefficients:
    """DDIM step t -> t_prev (eq. 12, σ of eq. 16); ``t_prev = -1`` uses ᾱ = ``final_alpha_bar``."""
    t, t_prev = _check_index(schedule, t), _int(t_prev, "t_prev", " step index (-1 means 'to x_0')")
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must satisfy -1 <= t_prev < t={t}, got {t_prev}")
    eta = _real(eta, "eta", 0.0, hint=" (0: deterministic DDIM, 1: DDPM-like)")
    final = _real(final_alpha_bar, "final_alpha_bar", 0.0, 1.0, low_open=True,
                  hint=" (1.0, or alpha_bar[0] for diffusers' set_alpha_to_one=False)")
    return _ddim_coefficients(_tables(schedule), t, t_prev, eta, final)


def _tables(schedule: NoiseSchedule) -> dict[str, list[float]]:
    """The float64 tables as Python lists: one conversion per loop, then plain float arithmetic."""
    names = ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "posterior_variance")
    return {n: getattr(schedule, n).tolist() for n in names}


def _check_signal(tab: dict[str, list[float]], t: int) -> None:
    """Refuse a step from ᾱ_t = 0 (the last index of a zero-terminal-SNR schedule, Lin et al. 2024):
    x_t = ε there, so an ε-model says nothing about x_0 and x̂_0 = (x_t − ε̂)/√ᾱ_t divides by zero."""
    if tab["alpha_bar"][t] == 0.0:
        raise ValueError(
            f"alpha_bar[{t}] = 0 (a zero-terminal-SNR schedule): x_t is pure noise at t={t}, and an eps-model's "
            "x0_hat = (x_t - sqrt(1 - alpha_bar) eps)/sqrt(alpha_bar) divides by zero there (Lin et al. 2024 switch "
            f"to v-prediction). Start one index later with t_start={t - 1}: x_T ~ N(0, I) is then x_{t - 1} up to "
            f"alpha_bar[{t - 1}] = {tab['alpha_bar'][t - 1]:.1e}")


def _ddpm_coefficients(tab: dict[str, list[float]], t: int, variance: str) -> StepCoefficients:
    _check_signal(tab, t)
    beta, alpha, ab, ab_prev = tab["betas"][t], tab["alphas"][t], tab["alpha_bar"][t], tab["alpha_bar_prev"][t]
    var = tab["posterior_variance"][t] if variance == "fixed_small" else beta
    return StepCoefficients(t, math.sqrt(1 - ab), math.sqrt(ab),
                            coef_x0=math.sqrt(ab_prev) * beta / (1 - ab),                    # eq. 7
                            coef_other=math.sqrt(alpha) * (1 - ab_prev) / (1 - ab), other_is_eps=False,
                            sigma=math.sqrt(var) if t > 0 else 0.0)


def _ddim_coefficients(tab: dict[str, list[float]], t: int, t_prev: int, eta: float,
                       final_alpha_bar: float) -> StepCoefficients:
    _check_signal(tab, t)
    ab = tab["alpha_bar"][t]
    ab_prev = tab["alpha_bar"][t_prev] if t_prev >= 0 else final_alpha_bar
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))                  # eq. 16
    return StepCoefficients(t, math.sqrt(1 - ab), math.sqrt(ab), coef_x0=math.sqrt(ab_prev),
                            coef_other=math.sqrt(max(1 - ab_prev - sigma**2, 0.0)), other_is_eps=True,
                            sigma=sigma)                                                   # eq. 12


# ------------------------------------------------------------------------------- the arithmetic
def _predict_x0(c: StepCoefficients, x: Tensor, eps: Tensor, clip_x0: float | None,
                threshold: DynamicThreshold | None = None) -> Tensor:
    """x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t (DDPM eq. 4 solved for x_0), clamped to ±clip_x0 if given, or
    dynamically thresholded (:func:`dynamic_threshold`)."""
    x0 = torch.add(x, eps, alpha=-c.eps_scale).div_(c.root_alpha_bar)
    if threshold is not None:
        return _apply_threshold(x0, threshold)
    return x0 if clip_x0 is None else x0.clamp_(-clip_x0, clip_x0)


def _update(c: StepCoefficients, x: Tensor, eps: Tensor, x0: Tensor, noise: Tensor | None,
            generator: torch.Generator | None) -> Tensor:
    """x_prev = coef_x0·x̂_0 + coef_other·(ε or x_t) + σ·z; z drawn (CPU generator) only when σ > 0."""
    out = torch.add(x0 * c.coef_x0, eps if c.other_is_eps else x, alpha=c.coef_other)
    if c.sigma > 0:
        out.add_(noise_like(x, noise, generator), alpha=c.sigma)
    return out


# ------------------------------------------------------------------------------------ the steps
def ddpm_step(schedule: NoiseSchedule, x_t: Tensor, t: int, eps: Tensor, noise: Tensor | None = None,
              generator: torch.Generator | None = None, variance: str = "fixed_small",
              clip_x0: float | None = None, dynamic_threshold: float | DynamicThreshold | None = None) -> Tensor:
    """One ancestral step x_t -> x_{t-1} (DDPM Alg. 2, line 4). No noise is added at t = 0.

    x_t, eps, noise: (B, *shape); t: int in [0, T); variance: "fixed_small" (σ² = β̃_t) or "fixed_large"
    (σ² = β_t). clip_x0: if given, x̂_0 is clamped to [−clip_x0, clip_x0] before the posterior mean
    μ̃_t(x_t, x̂_0) (eq. 7) — Ho et al.'s released sampler and diffusers' ``clip_sample=True``.
    dynamic_threshold: instead, Imagen's dynamic thresholding of x̂_0 (a percentile p or a
    :class:`DynamicThreshold`) — diffusers' ``thresholding=True``.
    """
    _check_like(x_t, eps=eps, noise=noise)
    c, (clip_x0, rule) = ddpm_coefficients(schedule, t, variance), _check_x0_rule(clip_x0, dynamic_threshold)
    return _update(c, x_t, eps, _predict_x0(c, x_t, eps, clip_x0, rule), noise, generator)


def ddim_step(schedule: NoiseSchedule, x_t: Tensor, t: int, t_prev: int, eps: Tensor, eta: float = 0.0,
              noise: Tensor | None = None, generator: torch.Generator | None = None,
              final_alpha_bar: float = 1.0, clip_x0: float | None = None,
              dynamic_threshold: float | DynamicThreshold | None = None) -> Tensor:
    """One DDIM step x_t -> x_{t_prev} (DDIM eq. 12). ``t_prev = -1`` means "to x_0", whose ᾱ is
    ``final_alpha_bar`` in (0, 1] (1.0, or ᾱ at index 0: diffusers' ``set_alpha_to_one=False``).

    x_t, eps, noise: (B, *shape); ints -1 <= t_prev < t < T; eta: finite, >= 0 (noise is used only when
    σ > 0). clip_x0: clamp x̂_0 to [−clip_x0, clip_x0] and keep the model's ε for the direction term
    (diffusers' ``clip_sample=True`` with its default ``use_clipped_model_output=False``);
    dynamic_threshold (a percentile p or a :class:`DynamicThreshold`): threshold x̂_0 instead, ε kept likewise.
    """
    _check_like(x_t, eps=eps, noise=noise)
    c = ddim_coefficients(schedule, t, t_prev, eta, final_alpha_bar)
    clip_x0, rule = _check_x0_rule(clip_x0, dynamic_threshold)
    return _update(c, x_t, eps, _predict_x0(c, x_t, eps, clip_x0, rule), noise, generator)


def ddim_timesteps(T: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> list[int]:
    """The descending sub-sequence τ of step indices DDIM visits, as diffusers' ``DDIMScheduler``
    builds ``scheduler.timesteps`` for ``timestep_spacing`` in {"leading", "trailing", "linspace"}.

    minidiff's DDIM steps from each τ_i to the *next entry* τ_{i-1} (the DDIM paper's sub-sequence,
    Sec. 4.2). diffusers' ``DDIMScheduler.step`` instead always steps to ``t − T // steps``, whatever the
    spacing; for "leading" (and "trailing" when ``steps`` divides T) that is the same thing, but for
    "linspace" it is not — e.g. T=100, steps=10: τ = 99, 88, 77, …, 0, and diffusers goes 99 -> 89,
    88 -> 78, …, i.e. never to the index it evaluates next. So with "linspace" the two samplers differ.
    """
    T = _int(T, "T", " (number of training steps)")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    steps = _int(steps, "steps", " (number of DDIM steps)")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, T]=[1, {T}], got {steps}")
    steps_offset = _int(steps_offset, "steps_offset")
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


# ------------------------------------------------------------------------------------ the loops
def _start(eps_model: EpsModel, schedule: NoiseSchedule, x_T: Tensor) -> None:
    schedule.check_model(eps_model)
    if model_clock(eps_model) == "continuous":      # fed step indices 0..T-1 as t in [0, 1]: garbage, silently
        raise ValueError(
            f"this {type(eps_model).__name__} runs on the continuous clock (t in [0, 1]), but the DDPM/DDIM "
            "loops call it with step indices [0, T); sample it with sample_sde / ode_loop on its SDE, or give "
            "these loops the discrete model itself (ContinuousTime(model).net)")
    if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.ndim < 2:
        got = f"shape {tuple(x_T.shape)}, dtype {x_T.dtype}" if isinstance(x_T, Tensor) else type(x_T).__name__
        raise ValueError(f"x_T must be a batched floating tensor (B, *shape), got {got}")


def _check_t_start(schedule: NoiseSchedule, t_start: Any) -> int:
    """The index the loop starts from: T − 1 (pure noise) unless ``t_start`` says x is a noised x_t."""
    if t_start is None:
        return schedule.T - 1
    t_start = _int(t_start, "t_start", " step index (x_T is then x_{t_start}) or None")
    if not 0 <= t_start < schedule.T:
        raise ValueError(f"t_start must be an index in [0, T)=[0, {schedule.T}) (x is x_{{t_start}}), got {t_start}")
    return t_start


@torch.no_grad()
def _run(eps_model: EpsModel, x_T: Tensor, steps: Sequence[StepCoefficients], cond: Any,
         generator: torch.Generator | None, clip_x0: float | None, threshold: DynamicThreshold | None,
         desc: str, progress: bool) -> Iterator[dict[str, Any]]:
    """The one loop: ε = model(x, t), x̂_0, x_prev = a·x̂_0 + b·(x or ε) + σ z; yields each state."""
    x, B = x_T, x_T.shape[0]
    for c in tqdm(steps, desc=desc, disable=not show_progress(progress), leave=False):
        eps = call_eps(eps_model, x, torch.full((B,), c.t, dtype=torch.long, device=x.device), cond)
        x0 = _predict_x0(c, x, eps, clip_x0, threshold)
        x = _update(c, x, eps, x0, None, generator)
        yield {"t": c.t, "x": x, "x0": x0}


def ddpm_loop(eps_model: EpsModel, schedule: NoiseSchedule, x_T: Tensor, cond: Any = None,
              generator: torch.Generator | None = None, variance: str = "fixed_small",
              clip_x0: float | None = None, t_start: int | None = None, progress: bool = True,
              dynamic_threshold: float | DynamicThreshold | None = None) -> Iterator[dict[str, Any]]:
    """DDPM ancestral sampling from x_T: (B, *shape); yields ``{"t": int, "x": x_{t-1}, "x0": x̂_0}``
    for t = t_start … 0 (t_start + 1 model calls; t_start = T − 1 by default, i.e. x_T is pure noise;
    a smaller t_start denoises a noised x_{t_start}, e.g. from :func:`minidiff.forward.q_sample`).

    Arguments are checked when called (not at the first ``next``). Each step is :func:`ddpm_step`'s
    arithmetic with its coefficients precomputed. Like Alg. 2, the last step adds no noise: samples are
    the decoder's *mean* μ_θ(x_1, 1), not draws from the decoder p_θ(x_0|x_1) that the ELBO scores."""
    _start(eps_model, schedule, x_T)
    variance, (clip_x0, rule) = _check_variance(variance), _check_x0_rule(clip_x0, dynamic_threshold)
    tab = _tables(schedule)
    steps = [_ddpm_coefficients(tab, t, variance) for t in range(_check_t_start(schedule, t_start), -1, -1)]
    return _run(eps_model, x_T, steps, cond, generator, clip_x0, rule, "DDPM", progress)


def ddim_loop(eps_model: EpsModel, schedule: NoiseSchedule, x_T: Tensor, steps: int = 50, eta: float = 0.0,
              cond: Any = None, generator: torch.Generator | None = None, spacing: str = "leading",
              final_alpha_bar: float = 1.0, clip_x0: float | None = None, t_start: int | None = None,
              progress: bool = True, dynamic_threshold: float | DynamicThreshold | None = None,
              steps_offset: int = 0) -> Iterator[dict[str, Any]]:
    """DDIM sampling with ``steps`` model calls on τ = :func:`ddim_timesteps` (each τ_i steps to the next
    entry, the last to x_0 with ᾱ = ``final_alpha_bar``); yields ``{"t", "x": x_{t_prev}, "x0"}`` per step.
    ``spacing`` and ``steps_offset`` build τ as diffusers' ``timestep_spacing`` / ``steps_offset`` do (Stable
    Diffusion's scheduler uses "leading" with offset 1: τ = 981, 961, …, 1 for 50 steps).

    t_start: x_T is a noised x_{t_start}; the loop visits t_start and then the sub-sequence's
    indices below it (SDEdit / img2img), so it makes fewer than ``steps`` calls. Arguments are checked
    when called; each step is :func:`ddim_step`'s arithmetic with precomputed coefficients."""
    _start(eps_model, schedule, x_T)
    ts = ddim_timesteps(schedule.T, steps, spacing, steps_offset)
    if t_start is not None:
        t_start = _check_t_start(schedule, t_start)
        ts = [t_start] + [t for t in ts if t < t_start]
    eta = _real(eta, "eta", 0.0, hint=" (0: deterministic DDIM, 1: DDPM-like)")
    final = _real(final_alpha_bar, "final_alpha_bar", 0.0, 1.0, low_open=True,
                  hint=" (1.0, or alpha_bar[0] for diffusers' set_alpha_to_one=False)")
    (clip_x0, rule), tab = _check_x0_rule(clip_x0, dynamic_threshold), _tables(schedule)
    coefs = [_ddim_coefficients(tab, t, t_prev, eta, final) for t, t_prev in zip(ts, ts[1:] + [-1])]
    return _run(eps_model, x_T, coefs, cond, generator, clip_x0, rule, "DDIM", progress)


# ---------------------------------------------------------------------------------- sample()
def _model_tensors(model: Any, depth: int = 2) -> Iterator[Tensor]:
    """Parameters, then buffers, of an nn.Module — or of the nn.Modules a wrapper (guidance, a call
    counter) holds as attributes, up to ``depth`` wrappers deep."""
    if isinstance(model, nn.Module):
        yield from model.parameters()
        yield from model.buffers()
    elif depth > 0:
        for value in getattr(model, "__dict__", {}).values():
            if isinstance(value, nn.Module) or (callable(value) and hasattr(value, "__dict__")
                                                and not isinstance(value, type)):
                yield from _model_tensors(value, depth - 1)


def infer_device_dtype(eps_model: EpsModel, x_T: Tensor | None = None,
                       device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype to sample: x_T's device and dtype when x_T is given, else the model's
    (first parameter / buffer, floating for the dtype; see :func:`_model_tensors`), else CPU and
    float32. ``device`` overrides the device."""
    if x_T is not None:
        dev, dtype = x_T.device, x_T.dtype
    else:
        tensors = list(_model_tensors(eps_model))
        dev = tensors[0].device if tensors else torch.device("cpu")
        dtype = next((p.dtype for p in tensors if p.is_floating_point()), torch.float32)
    return (resolve_device(device) if device is not None else dev), dtype


def check_shape(shape: Any) -> tuple[int, ...]:
    """A sample shape (B, *data_shape): at least 2 positive ints, as a tuple; ValueError otherwise."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or len(shape) < 2 or any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape):
        raise ValueError(f"shape must be (B, *data_shape) with at least 2 positive ints, e.g. (16, 2) or "
                         f"(8, 1, 8, 8), got {shape!r}")
    return tuple(int(s) for s in shape)


def _ddim_steps(steps: Any, T: int) -> int:
    if steps is None:
        return min(50, T)
    steps = _int(steps, "steps", " (number of DDIM model calls)")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, T]=[1, {T}] for DDIM, got {steps}")
    return steps


def sample(eps_model: EpsModel, schedule: NoiseSchedule, shape: tuple[int, ...], method: str = "ddpm",
           steps: int | None = None, eta: float = 0.0, cond: Any = None,
           generator: torch.Generator | None = None, device: str | torch.device | None = None,
           x_T: Tensor | None = None, return_trajectory: bool = False, progress: bool = True,
           **loop_kwargs: Any) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Draw samples of ``shape = (B, *data_shape)`` from an eps-model.

    method: "ddpm" (T steps; ``steps`` must be None or T; ``eta`` must be 0) or "ddim" (``steps`` model
    calls, default min(50, T)). Device and dtype (:func:`infer_device_dtype`): those of ``x_T`` when given,
    else of the model's parameters (CPU / float32 for a parameter-free model); ``device=`` overrides the
    device. x_T, when omitted, is drawn in float32 from ``generator`` on the CPU and then cast (bf16/fp16
    models) and moved, so the same seed gives the same samples on every device. ``cond`` (None, a
    tensor or a mapping, see :mod:`minidiff.cond`) is checked to have batch B and moved to the device,
    its floating entries cast to the dtype; other condition objects are passed through unchanged.
    Returns x_0 (and, with ``return_trajectory``, the list [x_T, x after each step]).
    loop_kwargs go to the loop: ``variance`` (DDPM), ``spacing``, ``steps_offset`` and ``final_alpha_bar`` (DDIM),
    ``clip_x0``, ``dynamic_threshold`` and ``t_start`` (both).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    shape = check_shape(shape)
    dev, dtype = infer_device_dtype(eps_model, x_T, device)
    if x_T is None:
        x_T = torch.randn(shape, generator=generator).to(device=dev, dtype=dtype)
    elif not isinstance(x_T, Tensor) or tuple(x_T.shape) != shape:
        got = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
        raise ValueError(f"x_T has shape {got} but shape={shape}")
    else:
        x_T = x_T.to(dev)
    if conditions.is_cond(cond):
        cond = conditions.to(conditions.check_cond(cond, batch=shape[0]), dev, dtype)
    if method == "ddpm":
        if steps is not None and (isinstance(steps, bool) or steps != schedule.T):
            raise ValueError(f"DDPM takes all T={schedule.T} steps; got steps={steps!r} (use method='ddim' for fewer)")
        if _real(eta, "eta", 0.0) != 0:
            raise ValueError(f"eta={eta} applies to method='ddim' only (DDPM's variance is set by variance=)")
        loop = ddpm_loop(eps_model, schedule, x_T, cond, generator, progress=progress, **loop_kwargs)
    else:
        loop = ddim_loop(eps_model, schedule, x_T, _ddim_steps(steps, schedule.T), eta, cond, generator,
                         progress=progress, **loop_kwargs)
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

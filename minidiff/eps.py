r"""The one contract of the course: an *eps-model*.

Every denoiser in minidiff — a trained net, a guided net, a LoRA- or BPS-adapted net, the
Stable Diffusion U-Net — is a callable

    eps_model(x_t: (B, *shape), t: (B,) long in [0, T), cond=None) -> (B, *shape)

that predicts the noise ε in :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon`.
Samplers consume it, guidance wraps it. This module is the single home of the conversions
between ε, x̂_0, the score (Tweedie's formula) and v (Salimans & Ho 2022), so no chapter re-derives them.

**What a network may predict** (chapter 2). Writing :math:`\alpha=\sqrt{\bar\alpha_t}`, :math:`\sigma=\sqrt{1-\bar\alpha_t}`
and :math:`x_t=\alpha x_0+\sigma\varepsilon`, a network can be trained to output ε, x_0 or the *velocity*
:math:`v=\alpha\varepsilon-\sigma x_0` (Salimans & Ho 2022, "Progressive distillation", Sec. 4 and App. D;
Stable Diffusion 2.x's 768-px checkpoints). (x_t, v) is a rotation of (x_0, ε) by the angle φ with
cos φ = α, so each is a linear function of the other two: :func:`v_target`, :func:`eps_to_v`,
:func:`v_to_eps`, :func:`v_to_x0`. :class:`PredictionEps` turns an x_0- or v-model into an eps-model.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from .checks import check_positive_tensor, check_tensor
from .schedules import NoiseSchedule

__all__ = ["PREDICTIONS", "EpsModel", "PredictionEps", "call_eps", "eps_to_score", "eps_to_v", "eps_to_x0", "score_to_eps",
           "v_target", "v_to_eps", "v_to_x0", "x0_to_eps"]

PREDICTIONS = ("eps", "x0", "v")


class EpsModel(Protocol):
    """Anything callable as ``eps_model(x_t, t, cond=None) -> eps`` with ``eps.shape == x_t.shape``."""

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor: ...


def call_eps(eps_model: EpsModel, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
    """Evaluate an eps-model and check it kept the contract (same shape as ``x_t``).

    ``cond`` is passed only when given, so a plain ``lambda x, t: ...`` is a valid
    unconditional eps-model.
    """
    if not callable(eps_model):
        raise TypeError(f"eps_model must be callable as eps_model(x_t, t, cond), got {type(eps_model).__name__}")
    eps = eps_model(x_t, t) if cond is None else eps_model(x_t, t, cond)
    if not isinstance(eps, Tensor) or eps.shape != x_t.shape:
        got = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
        raise ValueError(
            f"an eps-model must return a tensor shaped like x_t {tuple(x_t.shape)}, got {got}"
        )
    return eps


def eps_to_score(eps: Tensor, std: Tensor | float) -> Tensor:
    r"""Tweedie: :math:`\nabla_x \log p_t(x) = -\varepsilon^*(x, t)/\sigma_t`, with
    :math:`\sigma_t = \sqrt{1-\bar\alpha_t}` the marginal std (BPS seed eq. 3; Song et al. 2021).

    eps: (B, *shape); std > 0: scalar or broadcastable to eps (e.g. (B, 1, 1, 1)).
    """
    _check_coefficient(eps, std, "std", "eps", low_open=True)
    return -eps / std


def score_to_eps(score: Tensor, std: Tensor | float) -> Tensor:
    r"""Inverse of :func:`eps_to_score`: :math:`\varepsilon = -\sigma_t \nabla_x \log p_t(x)`; std > 0."""
    _check_coefficient(score, std, "std", "score", low_open=True)
    return -score * std


def eps_to_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    r"""Predicted clean sample :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}`
    (Ho et al. 2020, eq. 4 solved for x_0; seed 004 "we also have").

    alpha_bar ∈ (0, 1]: scalar or broadcastable to x_t, e.g. ``schedule.gather(schedule.alpha_bar, t, x_t)``.
    """
    _same_shape(x_t, eps, "eps")
    _check_coefficient(x_t, alpha_bar, "alpha_bar", "x_t", low_open=True, upper=1.0)
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    return (x_t - torch.sqrt(1 - alpha_bar) * eps) / torch.sqrt(alpha_bar)


def x0_to_eps(x_t: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    r""":math:`\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t}` — the inverse of :func:`eps_to_x0`.

    alpha_bar ∈ [0, 1) (at ᾱ = 1 there is no noise to recover).
    """
    _same_shape(x_t, x0, "x0")
    _check_coefficient(x_t, alpha_bar, "alpha_bar", "x_t", low_open=False, upper=1.0, upper_open=True)
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    return (x_t - torch.sqrt(alpha_bar) * x0) / torch.sqrt(1 - alpha_bar)


def _same_shape(x_t: Tensor, other: Tensor, name: str) -> None:
    check_tensor(other, name, floating=True)
    if other.shape != x_t.shape:
        raise ValueError(f"{name} must have the shape of x_t {tuple(x_t.shape)}, got {tuple(other.shape)}")


def _check_coefficient(x: Tensor, value: Tensor | float, name: str, x_name: str, *, low_open: bool,
                       upper: float | None = None, upper_open: bool = False) -> None:
    """A per-example coefficient: a number, or a tensor with x's number of dims (e.g. (B, 1, 1, 1)) so
    it cannot broadcast along a data axis by accident; every entry in range."""
    check_tensor(x, x_name, floating=True)
    if isinstance(value, Tensor) and value.ndim not in (0, x.ndim) and value.numel() != 1:
        raise ValueError(f"{name} must be a number or shaped to broadcast against {x_name} {tuple(x.shape)} with "
                         f"the same number of dims (e.g. (B, {', '.join(['1'] * (x.ndim - 1))})), got {tuple(value.shape)}")
    check_positive_tensor(value, name, allow_zero=not low_open, upper=upper, upper_open=upper_open)


# ------------------------------------------------------------------ v-prediction (Salimans & Ho 2022)
def v_target(x0: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    r"""The velocity :math:`v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0` that a v-model is trained
    to output (Salimans & Ho 2022, App. D: :math:`v \equiv \alpha_t\varepsilon - \sigma_t x`; diffusers'
    ``DDPMScheduler.get_velocity``).

    x0, eps: (B, *shape); alpha_bar ∈ [0, 1]: a number or shaped like (B, 1, ...). At ᾱ = 1 the target is ε, at
    ᾱ = 0 (pure noise) it is −x_0: the network must say what the data is, even from pure noise (Lin et al. 2024).
    """
    _same_shape(x0, eps, "eps")
    _check_coefficient(x0, alpha_bar, "alpha_bar", "x0", low_open=False, upper=1.0)
    alpha, sigma = _alpha_sigma(alpha_bar, x0)
    return alpha * eps - sigma * x0


def v_to_eps(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    r""":math:`\varepsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,v` (substitute
    :math:`x_0 = (x_t-\sigma\varepsilon)/\alpha` into :func:`v_target`; α² + σ² = 1).

    Defined for every alpha_bar ∈ [0, 1], including the last step of a zero-terminal-SNR schedule, where ε = x_t.
    x_t, v: (B, *shape); alpha_bar: a number or shaped like (B, 1, ...).
    """
    _same_shape(x_t, v, "v")
    _check_coefficient(x_t, alpha_bar, "alpha_bar", "x_t", low_open=False, upper=1.0)
    alpha, sigma = _alpha_sigma(alpha_bar, x_t)
    return sigma * x_t + alpha * v


def v_to_x0(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    r""":math:`\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,v` (Salimans & Ho 2022, Sec. 4:
    :math:`\hat x = \alpha_t z_t - \sigma_t \hat v`). No division: finite at ᾱ = 0, where x̂_0 = −v.

    x_t, v: (B, *shape); alpha_bar ∈ [0, 1]: a number or shaped like (B, 1, ...).
    """
    _same_shape(x_t, v, "v")
    _check_coefficient(x_t, alpha_bar, "alpha_bar", "x_t", low_open=False, upper=1.0)
    alpha, sigma = _alpha_sigma(alpha_bar, x_t)
    return alpha * x_t - sigma * v


def eps_to_v(x_t: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    r""":math:`v = (\varepsilon - \sqrt{1-\bar\alpha_t}\,x_t)/\sqrt{\bar\alpha_t}` — the inverse of :func:`v_to_eps`.

    alpha_bar ∈ (0, 1] (at ᾱ = 0, ε = x_t carries no information about v). x_t, eps: (B, *shape).
    """
    _same_shape(x_t, eps, "eps")
    _check_coefficient(x_t, alpha_bar, "alpha_bar", "x_t", low_open=True, upper=1.0)
    alpha, sigma = _alpha_sigma(alpha_bar, x_t)
    return (eps - sigma * x_t) / alpha


def _alpha_sigma(alpha_bar: Tensor | float, like: Tensor) -> tuple[Tensor, Tensor]:
    """(√ᾱ, √(1−ᾱ)) in ``like``'s dtype and device."""
    ab = torch.as_tensor(alpha_bar, dtype=like.dtype, device=like.device)
    return ab.sqrt(), (1 - ab).sqrt()


class PredictionEps:
    """An eps-model from a network trained to predict ``prediction`` ∈ {"eps", "x0", "v"} (chapter 2):
    ``PredictionEps(v_net, schedule, "v")(x_t, t, cond)`` = :func:`v_to_eps` of the net's output, so every
    sampler and guidance wrapper takes it unchanged.

    x_t: (B, *shape); t: (B,) long step indices in [0, T) (``schedule.alpha_bar[t]`` is read per example).
    An x0-model cannot give ε at ᾱ = 1 (no noise to recover); a v-model gives ε everywhere, at ᾱ = 0 too.
    """

    def __init__(self, model: EpsModel, schedule: NoiseSchedule, prediction: str = "v") -> None:
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, t, cond), got {type(model).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        schedule.check_model(model)
        self.model, self.schedule, self.prediction = model, schedule, prediction
        self.num_timesteps = schedule.T

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        out = call_eps(self.model, x_t, t, cond)         # the same contract: a tensor shaped like x_t
        if self.prediction == "eps":
            return out
        ab = self.schedule.gather(self.schedule.alpha_bar, t, x_t)
        return v_to_eps(x_t, out, ab) if self.prediction == "v" else x0_to_eps(x_t, out, ab)

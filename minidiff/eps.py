r"""The one contract of the course: an *eps-model*.

Every denoiser in minidiff — a trained net, a guided net, a LoRA- or BPS-adapted net, the
Stable Diffusion U-Net — is a callable

    eps_model(x_t: (B, *shape), t: (B,) long in [0, T), cond=None) -> (B, *shape)

that predicts the noise ε in :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon`.
Samplers consume it, guidance wraps it. This module is the single home of the conversions
between ε, x̂_0 and the score (Tweedie's formula), so no chapter re-derives them.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from .checks import check_positive_tensor, check_tensor

__all__ = ["EpsModel", "call_eps", "eps_to_score", "score_to_eps", "eps_to_x0", "x0_to_eps"]


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

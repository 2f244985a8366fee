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

__all__ = ["EpsModel", "call_eps", "eps_to_score", "score_to_eps", "eps_to_x0", "x0_to_eps"]


class EpsModel(Protocol):
    """Anything callable as ``eps_model(x_t, t, cond=None) -> eps`` with ``eps.shape == x_t.shape``."""

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor: ...


def call_eps(eps_model: EpsModel, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
    """Evaluate an eps-model and check it kept the contract (same shape as ``x_t``).

    ``cond`` is passed only when given, so a plain ``lambda x, t: ...`` is a valid
    unconditional eps-model.
    """
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

    eps: (B, *shape); std: scalar or broadcastable to eps (e.g. (B, 1, 1, 1)).
    """
    return -eps / std


def score_to_eps(score: Tensor, std: Tensor | float) -> Tensor:
    r"""Inverse of :func:`eps_to_score`: :math:`\varepsilon = -\sigma_t \nabla_x \log p_t(x)`."""
    return -score * std


def eps_to_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    r"""Predicted clean sample :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}`
    (Ho et al. 2020, eq. 4 solved for x_0; seed 004 "we also have").

    alpha_bar: scalar or broadcastable to x_t, e.g. ``schedule.gather(schedule.alpha_bar, t, x_t)``.
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    return (x_t - torch.sqrt(1 - alpha_bar) * eps) / torch.sqrt(alpha_bar)


def x0_to_eps(x_t: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    r""":math:`\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t}` — the inverse of :func:`eps_to_x0`."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    return (x_t - torch.sqrt(alpha_bar) * x0) / torch.sqrt(1 - alpha_bar)

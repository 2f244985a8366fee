r"""Sampling the target with the source model: density-ratio guidance (TGDP, chapter 8).

**Derivation** (seed 001, Theorem). Source p and target q share the forward kernel
p(x_t | x_0) = q(x_t | x_0). Then

.. math:: h^*(x_t, t) := \mathbb E_{p(x_0\mid x_t)}\Big[\frac{q(x_0)}{p(x_0)}\Big]
          = \int \frac{p(x_t\mid x_0)\,p(x_0)}{p_t(x_t)}\,\frac{q(x_0)}{p(x_0)}\,dx_0
          = \frac{\int p(x_t\mid x_0)\,q(x_0)\,dx_0}{p_t(x_t)} = \frac{q_t(x_t)}{p_t(x_t)},

so ∇ log q_t = ∇ log p_t + ∇ log h*: the target score is the source score plus a guidance term.
With Tweedie, ε* = −σ_t ∇ log p_t (σ_t = √(1 − ᾱ_t); BPS seed eq. 3):

.. math:: \varepsilon_q(x_t, t) = -\sigma_t\nabla\log q_t = \varepsilon_p(x_t, t) - \sigma_t\,\nabla_{x_t}\log h(x_t, t).

This is classifier guidance's formula with g = h and scale s = 1 (:class:`minidiff.guidance.GradientGuidance`):
:class:`DensityRatioGuidance` is classifier guidance's sibling. Sign and scale matter: the public TGDP
code adds +∇ log h to ε with no σ_t — that pushes samples *away* from the target and mis-weights the
guidance across noise levels (the tests check both against the exact target ε on mixtures).

Conditional version: with p(x_0, y), q(x_0, y) and a class-conditional source model,
h*(x_t, t, y) = E_{p(x_0|x_t, y)}[q(x_0, y)/p(x_0, y)] = q_t(x_t, y)/p_t(x_t, y) and
ε_q(x_t, t, y) = ε_p(x_t, t, y) − σ_t ∇ log h(x_t, t, y).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..cond import NULL_KEYS, Cond, NullSpec
from ..eps import EpsModel
from ..guidance import GradientGuidance
from ..schedules import NoiseSchedule

__all__ = ["DensityRatioGuidance", "grad_log_h", "log_h_of"]

GuidanceFn = Callable[..., Tensor]     # h(x_t (B, D), t (B,)[, cond]) -> (B,) > 0, optionally with .log_h


def log_h_of(h: GuidanceFn, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
    """log h(x_t, t[, cond]): (B,). Uses ``h.log_h`` when h has one (finite where h underflows), else
    log of h's output, which must be positive."""
    fn = getattr(h, "log_h", None)
    args = (x_t, t) if cond is None else (x_t, t, cond)
    out = fn(*args) if callable(fn) else h(*args)
    if not isinstance(out, Tensor) or tuple(out.shape) != (x_t.shape[0],):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the guidance network must return one value per example, shape (B,)=({x_t.shape[0]},), "
                         f"got {got}")
    if callable(fn):
        return out
    if not bool((out > 0).all()):
        raise ValueError(f"h(x_t, t) must be > 0 (a density ratio), got min {float(out.detach().min()):.3g}; use a positive "
                         "output (GuidanceNet's softplus) or give h a log_h method")
    return out.log()


def grad_log_h(h: GuidanceFn, x_t: Tensor, t: Tensor, cond: Any = None, create_graph: bool = False) -> Tensor:
    """∇_{x_t} log h(x_t, t[, cond]): (B, D). ``create_graph=True`` keeps it differentiable in h's
    parameters (the consistency loss trains through it); otherwise it is detached."""
    with torch.enable_grad():
        x = x_t if (create_graph and x_t.requires_grad) else x_t.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_h_of(h, x, t, cond).sum(), x, create_graph=create_graph)
    return grad if create_graph else grad.detach()


class DensityRatioGuidance(GradientGuidance):
    r"""ε_q(x_t, t[, y]) = ε_p(x_t, t[, y]) − s σ_t ∇_{x_t} log h(x_t, t[, y]),  σ_t = √(1 − ᾱ_t) (module docstring).

    Args:
        source_eps_model: the eps-model trained on the source (unconditional, or class-conditional for
            the conditional version; then ``cond`` = labels (B,) reach both it and h).
        h: the guidance network h_ψ (:class:`~minidiff.tgdp.GuidanceNet`), or the exact
            :class:`~minidiff.tgdp.MixtureDensityRatio`, or any positive ``h(x_t, t[, cond]) -> (B,)``.
        schedule: the source model's schedule (σ_t; h must be built for the same T).
        scale: s >= 0; s = 1 is the theory (exact for h = h*), s = 0 the source model.
        base_cond, null, keys: what the source model receives (:class:`~minidiff.guidance.GradientGuidance`).

    An eps-model ``(x_t (B, D), t (B,), cond=None) -> (B, D)``, detached: every sampler uses it.
    """

    def __init__(self, source_eps_model: EpsModel, h: GuidanceFn, schedule: NoiseSchedule, scale: float = 1.0,
                 base_cond: str = "auto", null: NullSpec | None = None, keys: Sequence[str] = NULL_KEYS) -> None:
        if not callable(h):
            raise TypeError(f"h must be callable as h(x_t, t[, cond]) -> (B,), got {type(h).__name__}")
        super().__init__(source_eps_model, scale, schedule, base_cond, null, keys)
        schedule.check_model(h)                   # h read with the wrong T would see the wrong noise level
        self.h = h

    def log_g(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """log h(x_t, t[, cond]): (B,)."""
        return log_h_of(self.h, x_t, t, cond)

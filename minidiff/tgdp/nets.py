r"""The two small networks of TGDP (chapter 8): a domain classifier and the guidance network h_ψ.

Both are the residual MLP trunk of :class:`~minidiff.nets.MLPDenoiser` (its ``_Block``: the time and
class embeddings are added inside every block) with a one-number head, so they train in seconds on
2-D data and take the same ``(x, t, cond)`` arguments as an eps-model.

* :class:`DomainClassifier` returns the **source logit** ℓ = log c/(1 − c), c = P(source | x). Built
  with ``num_timesteps=None`` it is the time-independent c_ω(x_0) (seed 001, "Step 1"); with a number
  of steps it is the noisy c'_ω(x_t, t) of the cycle regulariser. With ``num_classes`` it reads a
  label too: c_ω(x_0, y) for the conditional version.
* :class:`GuidanceNet` returns h_ψ(x_t, t) > 0 ≈ E_{p(x_0|x_t)}[q(x_0)/p(x_0)].

**Why softplus for h_ψ.** h must be positive (its log is taken for the guidance), and the lemma of
seed 001 needs the squared loss on h itself (the conditional *mean* of the ratio), not on log h (whose
minimiser is the geometric mean, biased low by Jensen). With h = exp(u) the gradient of
(h − r)² is 2(h − r)·e^u: it explodes where the net overshoots and vanishes where h → 0, so Adam's
steps are dominated by a few large ratios. With h = softplus(u) = log(1 + e^u) it is
2(h − r)·σ(u), bounded by the residual; and softplus ≈ e^u for u ≪ 0, so small ratios stay
representable. The head's bias starts at softplus⁻¹(1) = log(e − 1): h ≡ 1 ("no guidance") at
initialisation, the right answer at large t, where q_t/p_t → 1.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import record_config
from ..checks import check_int
from ..nets.embeddings import (
    ClassEmbedding,
    TimeEmbedding,
    check_timesteps,
    class_labels,
)
from ..nets.mlp import _Block

__all__ = ["DomainClassifier", "GuidanceNet", "log_softplus"]

_LOG_SOFTPLUS_CUT = -15.0   # below this, log softplus(u) = u to float precision (softplus(u) = e^u (1 + O(e^u)))


def log_softplus(u: Tensor) -> Tensor:
    """log(softplus(u)), finite for every u (softplus(−100) underflows to 0 in float32): (B,) -> (B,)."""
    return torch.where(u < _LOG_SOFTPLUS_CUT, u, F.softplus(u.clamp(min=_LOG_SOFTPLUS_CUT)).log())


class _ScalarMLP(nn.Module):
    """Residual MLP x: (B, dim) [, t: (B,)] [, labels: (B,)] -> one number per example, (B,)."""

    def _build(self, dim: int, width: int, depth: int, num_timesteps: int | None, emb_dim: int,
               num_classes: int | None) -> None:
        self.dim = check_int(dim, "dim", 1)
        self.width = check_int(width, "width", 1)
        depth = check_int(depth, "depth", 1)
        self.emb_dim = check_int(emb_dim, "emb_dim", 2)
        if self.emb_dim % 2:
            raise ValueError(f"emb_dim must be even (half sines, half cosines), got {emb_dim}; use {emb_dim + 1}")
        self.num_timesteps = None if num_timesteps is None else check_int(num_timesteps, "num_timesteps", 1)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", 1)
        self.time_embed = TimeEmbedding(self.emb_dim) if self.num_timesteps is not None else None
        self.class_embed = ClassEmbedding(self.num_classes, self.emb_dim) if self.num_classes is not None else None
        self.inp = nn.Linear(self.dim, self.width)
        self.blocks = nn.ModuleList(_Block(self.width, self.emb_dim) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(self.width), nn.SiLU(), nn.Linear(self.width, 1))

    def _embedding(self, x: Tensor, t: Any, cond: Any) -> Tensor:
        """e(t) + e(y) (each only if the net reads it): (B, emb_dim)."""
        batch = x.shape[0]
        emb = x.new_zeros(batch, self.emb_dim)
        if self.time_embed is None:
            if t is not None:
                raise ValueError(f"this {type(self).__name__} is time-independent (num_timesteps=None): call it "
                                 "without t, or build it with num_timesteps=T for noisy inputs")
        else:
            if t is None:
                raise ValueError(f"this {type(self).__name__} reads noisy inputs: pass t (B,) step indices in "
                                 f"[0, {self.num_timesteps})")
            emb = emb + self.time_embed(check_timesteps(t, batch, self.num_timesteps).to(x.device))
        labels = class_labels(self.class_embed, cond)
        if labels is not None:
            emb = emb + self.class_embed(labels, batch)
        return emb

    def _scalar(self, x: Tensor, t: Any, cond: Any) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}), got {got}")
        emb = self._embedding(x, t, cond)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.head(h)[:, 0]


@record_config
class DomainClassifier(_ScalarMLP):
    """Source-vs-target classifier: x: (B, dim) [, t: (B,)] [, cond: labels (B,)] -> source logit (B,).

    logit = log c/(1 − c) with c = P(source | x); the density ratio is q/p = (1 − c)/c = e^{−logit} for a
    classifier trained with the balanced loss (:func:`minidiff.tgdp.domain_classifier_loss`).

    Args:
        dim: data dimension. width, depth: the residual MLP (small: with 10 target samples a big
            classifier memorises them).
        num_timesteps: None for c_ω(x_0); T for the noisy c'_ω(x_t, t) (cycle regulariser).
        emb_dim: time / class embedding size (even). num_classes: K for c_ω(x_0, y) (labels in [0, K)).
    """

    def __init__(self, dim: int = 2, width: int = 64, depth: int = 2, num_timesteps: int | None = None,
                 emb_dim: int = 32, num_classes: int | None = None) -> None:
        super().__init__()
        self._build(dim, width, depth, num_timesteps, emb_dim, num_classes)

    def forward(self, x: Tensor, t: Tensor | None = None, cond: Any = None) -> Tensor:
        return self._scalar(x, t, cond)


@record_config
class GuidanceNet(_ScalarMLP):
    """h_ψ(x_t, t [, y]) > 0: x_t: (B, dim), t: (B,) step indices [, cond: labels (B,)] -> (B,).

    h = softplus(u) of a scalar head u (module docstring); :meth:`log_h` is log h, finite everywhere,
    which :class:`~minidiff.tgdp.DensityRatioGuidance` differentiates. Starts at h ≡ 1.
    """

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, num_timesteps: int = 1000,
                 emb_dim: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        check_int(num_timesteps, "num_timesteps", 1, hint=" (h_psi reads noisy inputs: the schedule's T)")
        self._build(dim, width, depth, num_timesteps, emb_dim, num_classes)
        with torch.no_grad():                   # h = softplus(bias) = 1 at the start: no guidance
            self.head[-1].weight.mul_(0.1)
            self.head[-1].bias.fill_(math.log(math.e - 1))

    def raw(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The head's output u, h = softplus(u): (B,)."""
        return self._scalar(x_t, t, cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return F.softplus(self.raw(x_t, t, cond))

    def log_h(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """log h_ψ(x_t, t [, y]): (B,), differentiable in x_t."""
        return log_softplus(self.raw(x_t, t, cond))

r"""The exact TGDP quantities when source and target are Gaussian mixtures: the oracle h* (chapter 8).

Noising a mixture gives a mixture (:meth:`minidiff.data.GaussianMixture.noised`), so with the identity
of :mod:`minidiff.tgdp.guided`

.. math:: h^*(x_t, t) = \mathbb E_{p(x_0\mid x_t)}\big[q(x_0)/p(x_0)\big] = q_t(x_t)/p_t(x_t),
   \qquad \nabla\log h^* = \nabla\log q_t - \nabla\log p_t

are closed-form. :class:`MixtureDensityRatio` is that oracle: it replaces the learned h_ψ in
:class:`~minidiff.tgdp.DensityRatioGuidance` (samples with h* vs h_ψ separate the error of the method
from the error of learning h_ψ), and its :meth:`~MixtureDensityRatio.source_logit` is the Bayes-optimal
balanced domain classifier, clean (t = None) or noisy, for exact checks of the three losses.

Conditional version (``conditional=True``; component k of each mixture is class k):
h*(x_t, t, y) = q_t(x_t, y)/p_t(x_t, y) with log p_t(x, y) = log p_t(x) + log p_t(y | x).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..checks import check_labels
from ..data.toys import GaussianMixture
from ..schedules import NoiseSchedule

__all__ = ["MixtureDensityRatio"]


class MixtureDensityRatio:
    """The oracle h*(x_t, t[, y]) = q_t/p_t of two Gaussian mixtures on a discrete schedule.

    ``h(x_t (B, D), t (B,) step indices[, labels (B,)]) -> (B,)``; float64 inside, returned in x_t's
    dtype, differentiable in x_t. source, target: :class:`~minidiff.data.GaussianMixture` of one dimension
    (and, if ``conditional``, one number of components: the classes).
    """

    def __init__(self, source: GaussianMixture, target: GaussianMixture, schedule: NoiseSchedule,
                 conditional: bool = False) -> None:
        for name, gmm in (("source", source), ("target", target)):
            if not isinstance(gmm, GaussianMixture):
                raise TypeError(f"{name} must be a minidiff.data.GaussianMixture, got {type(gmm).__name__}")
        if source.dim != target.dim:
            raise ValueError(f"source and target must have the same dimension, got {source.dim} and {target.dim}")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if not isinstance(conditional, bool):
            raise TypeError(f"conditional must be True or False, got {conditional!r}")
        if conditional and source.num_components != target.num_components:
            raise ValueError(f"conditional ratios need one class per component in both mixtures, got "
                             f"{source.num_components} source and {target.num_components} target components")
        self.source, self.target, self.schedule, self.conditional = source, target, schedule, conditional
        self.num_timesteps = schedule.T
        self.num_classes = source.num_components if conditional else None

    # ------------------------------------------------------------------ log densities
    def _alpha_bar(self, x: Tensor, t: Tensor | int | None) -> Tensor:
        """ᾱ_t (B,) float64 on x's device; t = None means clean data (ᾱ = 1)."""
        if t is None:
            return torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self.schedule.alpha_bar_at(t, x.shape[0]).to(x.device)

    def _labels(self, x: Tensor, cond: Any) -> Tensor | None:
        """The class labels (B,) long of a conditional ratio (None if unconditional), checked."""
        if not self.conditional:
            if cond is not None:
                raise ValueError("this MixtureDensityRatio is unconditional; build it with conditional=True for labels")
            return None
        if cond is None:
            raise ValueError("this MixtureDensityRatio is conditional: pass cond=labels (B,)")
        return check_labels(cond, "labels", x.shape[0], self.num_classes, device=x.device)

    def _log_joint(self, gmm: GaussianMixture, x: Tensor, ab: Tensor, labels: Tensor | None) -> Tensor:
        """log p_t(x) or, with labels, log p_t(x, y) = log p_t(x) + log p_t(y | x): (B,) float64."""
        log_p = gmm.noised_log_prob(x, ab)
        if labels is None:
            return log_p
        return log_p + gmm.class_log_posterior(x, ab).gather(1, labels[:, None])[:, 0]

    def _log_h(self, x: Tensor, ab: Tensor, cond: Any) -> Tensor:
        labels = self._labels(x, cond)
        return (self._log_joint(self.target, x, ab, labels) - self._log_joint(self.source, x, ab, labels)).to(x.dtype)

    def log_h(self, x_t: Tensor, t: Tensor | int, cond: Any = None) -> Tensor:
        """log h*(x_t, t[, y]) = log q_t(x_t[, y]) − log p_t(x_t[, y]): (B,) in x_t's dtype."""
        return self._log_h(x_t, self._alpha_bar(x_t, t), cond)

    def __call__(self, x_t: Tensor, t: Tensor | int, cond: Any = None) -> Tensor:
        """h*(x_t, t[, y]) = q_t/p_t: (B,)."""
        return self.log_h(x_t, t, cond).exp()

    def log_ratio(self, x0: Tensor, cond: Any = None) -> Tensor:
        """log q(x_0)/p(x_0) (or log q(x_0, y)/p(x_0, y)) of clean data: (B,) — the target of L_guidance."""
        return self._log_h(x0, self._alpha_bar(x0, None), cond)

    def source_logit(self, x: Tensor, t: Tensor | int | None = None, cond: Any = None) -> Tensor:
        """The Bayes-optimal balanced domain classifier's logit log p_t/q_t = −log h* (t = None: clean x_0).
        Callable like :class:`~minidiff.tgdp.DomainClassifier`: (B, D)[, (B,)][, labels] -> (B,)."""
        return -(self.log_ratio(x, cond) if t is None else self.log_h(x, t, cond))

    def grad_log_h(self, x_t: Tensor, t: Tensor | int, cond: Any = None) -> Tensor:
        """∇ log h* = ∇ log q_t − ∇ log p_t in closed form (mixture scores, no autograd): (B, D)."""
        ab, labels = self._alpha_bar(x_t, t), self._labels(x_t, cond)
        if labels is None:
            return self.target.score(x_t, ab) - self.source.score(x_t, ab)
        return self.target.class_score(x_t, ab, labels) - self.source.class_score(x_t, ab, labels)   # log w_y: no x

    def __repr__(self) -> str:
        return (f"MixtureDensityRatio(K_source={self.source.num_components}, K_target={self.target.num_components}, "
                f"D={self.source.dim}, T={self.num_timesteps}, conditional={self.conditional})")

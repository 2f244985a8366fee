r"""Exact eps-models and class posteriors of Gaussian-mixture data, on either clock (chapters 1–4, 8).

The references trained models are measured against. The mathematics — noised density, score, class
posterior, class-conditional score — lives in one place, :class:`minidiff.data.GaussianMixture`; the classes
here are thin adapters that keep the eps-model contract (:mod:`minidiff.eps`).

**One formula for every forward process.** A discrete schedule (x_t = √ᾱ_t x_0 + √(1−ᾱ_t) z) and every SDE
of :mod:`minidiff.sde` (x_t = m(t) x_0 + s(t) z) are *rescaled VP* processes:

.. math:: x_t = m x_0 + s z = c\,(\sqrt{\bar\alpha'}\,x_0 + \sqrt{1-\bar\alpha'}\,z),\qquad c = \sqrt{m^2+s^2},\ \bar\alpha' = m^2/c^2

(c = 1 and ᾱ' = ᾱ_t for a schedule). With y = x_t / c, ∇_x log p_t(x) = ∇_y log p'(y) / c, so Tweedie's
ε* = −s ∇_x log p_t (BPS seed eq. 3; Song et al. 2021) becomes

.. math:: \varepsilon^*(x_t, t) = -\sqrt{1-\bar\alpha'}\;\nabla_y \log p'_{\bar\alpha'}(y),\qquad y = x_t / c,

and the class posterior is unchanged by the rescaling: p_t(k | x_t) = p'(k | y) (every component's density
picks up the same Jacobian). Discrete models take integer or fractional step indices
(:meth:`NoiseSchedule.alpha_bar_at`), continuous ones t ∈ [0, 1] (:func:`minidiff.clock.check_time`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .checks import check_int, check_real
from .clock import check_time
from .schedules import NoiseSchedule

if TYPE_CHECKING:
    from .data.toys import GaussianMixture
    from .sde import SDE

__all__ = ["noise_level", "MixtureEps", "MixtureConditionalEps", "MixturePosterior", "noised_mixture", "tilted_weights"]


def _check_process(process: Any) -> Any:
    if isinstance(process, NoiseSchedule) or callable(getattr(process, "marginal_coeffs", None)):
        return process
    raise ValueError(f"the forward process must be a NoiseSchedule (discrete clock) or an SDE (continuous clock, "
                     f"minidiff.sde), got {type(process).__name__}")


def _check_gmm(gmm: Any) -> Any:
    if not all(hasattr(gmm, a) for a in ("means", "covs", "weights", "score", "class_log_posterior")):
        raise ValueError(f"gmm must be a minidiff.data.GaussianMixture, got {type(gmm).__name__}")
    return gmm


def noise_level(process: "NoiseSchedule | SDE", t: Tensor | float, batch: int) -> tuple[Tensor, Tensor]:
    """(ᾱ', c), each (batch,) float64 on the CPU, of the rescaled VP form x_t = c (√ᾱ' x_0 + √(1−ᾱ') z).

    t: step indices for a NoiseSchedule, times in [0, 1] for an SDE."""
    if isinstance(process, NoiseSchedule):
        ab = process.alpha_bar_at(t, batch)
        return ab, torch.ones_like(ab)
    m, s = process.marginal_coeffs(check_time(t, batch))
    c = (m**2 + s**2).sqrt()
    return (m / c) ** 2, c


def _check_points(gmm: "GaussianMixture", x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != gmm.dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape (B, {gmm.dim}), got {got}")


class _OnAClock:
    """A mixture reference on a schedule (discrete clock) or an SDE (continuous clock)."""

    def __init__(self, gmm: "GaussianMixture", process: "NoiseSchedule | SDE") -> None:
        self.gmm, process = _check_gmm(gmm), _check_process(process)
        discrete = isinstance(process, NoiseSchedule)
        self.schedule, self.sde = (process, None) if discrete else (None, process)
        self.clock = "discrete" if discrete else "continuous"
        self.num_timesteps = process.T if discrete else None

    def _level(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(y = x / c (B, D) float64, ᾱ' (B,), √(1−ᾱ') (B, 1)) on x's device."""
        ab, c = noise_level(self.schedule or self.sde, t, x.shape[0])
        ab, c = ab.to(x.device), c.to(x.device)
        return x.double() / c[:, None], ab, (1 - ab).sqrt()[:, None]


class MixtureEps(_OnAClock):
    r"""The exact eps-model ε*(x_t, t) = −√(1−ᾱ') ∇_y log p'(y), y = x_t / c, of mixture data (module docstring).

    ``MixtureEps(gmm, schedule)`` runs on step indices (``gmm.optimal_eps_model(schedule)``, chapters 1–2);
    ``MixtureEps(gmm, sde)`` on t ∈ [0, 1] (chapter 3). With ``conditional=True`` (see
    :class:`MixtureConditionalEps`) ``cond`` picks the class = component.
    x_t: (B, D), t: (B,) -> (B, D) in x_t's dtype (float64 inside).
    """

    def __init__(self, gmm: "GaussianMixture", process: "NoiseSchedule | SDE", conditional: bool = False) -> None:
        super().__init__(gmm, process)
        if not isinstance(conditional, bool):
            raise ValueError(f"conditional must be True or False, got {conditional!r}")
        self.conditional = conditional
        K = gmm.means.shape[0]
        self.num_classes = K if conditional else None
        self.null_label = self.null_cond = K if conditional else None   # label K = the whole mixture
        self.class_embed = self if conditional else None                 # where chapter 4's guidance reads .null_label

    def __call__(self, x_t: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        _check_points(self.gmm, x_t, "x")
        labels = self._labels(cond, x_t)
        y, ab, sigma = self._level(x_t, t)
        if labels is None:
            score = self.gmm.score(y, ab)
        else:
            K = self.num_classes
            score = self.gmm.class_score(y, ab, labels.clamp(max=K - 1))       # ∇ log p_t(x | y)
            null = labels == K
            if null.any():
                score[null] = self.gmm.score(y[null], ab[null])                 # ∇ log p_t(x): the null label
        return (-sigma * score).to(x_t.dtype)                                   # ε* = −√(1−ᾱ') ∇_y log p'

    def _labels(self, cond: Any, x_t: Tensor) -> Tensor | None:
        if not self.conditional:
            if cond is not None:
                raise ValueError("this exact eps-model of a mixture is unconditional; got cond "
                                 "(use MixtureConditionalEps for class-conditional references)")
            return None
        K, batch = self.num_classes, x_t.shape[0]
        if cond is None:
            raise ValueError(f"this exact eps-model is class-conditional: pass cond=labels (B,)=({batch},) "
                             f"(or {K} = null for the whole mixture)")
        labels = torch.as_tensor(cond, device=x_t.device)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"cond must be integer class labels, got dtype {labels.dtype}")
        labels = labels.expand(batch) if labels.ndim == 0 else labels
        if labels.shape != (batch,):
            raise ValueError(f"cond must have shape (B,)=({batch},), got {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() > K):
            raise ValueError(f"class labels must be in [0, {K}) (or {K} = null), got min {int(labels.min())}, "
                             f"max {int(labels.max())}")
        return labels.long()

    def __repr__(self) -> str:
        on = f"schedule T={self.num_timesteps}" if self.schedule is not None else repr(self.sde)
        return f"{type(self).__name__}(K={self.gmm.means.shape[0]}, D={self.gmm.dim}, {on})"


class MixtureConditionalEps(MixtureEps):
    r"""The exact conditional eps-model of a mixture whose components are the classes:
    ε*(x_t, t, y) = −σ_t ∇ log p_t(x_t | y), p_t(·|y) the noised component y; for the null label K (like
    :class:`~minidiff.nets.ClassEmbedding`) the unconditional ε* of the whole mixture — what a perfectly
    trained CFG model would be. x_t: (B, D), t: (B,), cond: labels (B,) in [0, K] -> (B, D).
    """

    def __init__(self, gmm: "GaussianMixture", process: "NoiseSchedule | SDE") -> None:
        super().__init__(gmm, process, conditional=True)


class MixturePosterior(_OnAClock):
    r"""The exact noisy class posterior of a mixture whose components are the classes, a "perfect classifier":
    log p_t(y | x_t) = log w_y + log N(x_t; m μ_y, m² Σ_y + s² I) − log p_t(x_t)
    (:meth:`GaussianMixture.class_log_posterior`). ``posterior(x_t (B, D), t (B,)) -> log-probabilities (B, K)``,
    differentiable in x_t (float64 inside, returned in x_t's dtype).
    """

    def __init__(self, gmm: "GaussianMixture", process: "NoiseSchedule | SDE") -> None:
        super().__init__(gmm, process)
        self.num_classes = gmm.means.shape[0]

    def __call__(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        _check_points(self.gmm, x_t, "x_t")
        y, ab, _ = self._level(x_t, t)
        return self.gmm.class_log_posterior(y, ab).to(x_t.dtype)


def noised_mixture(gmm: "GaussianMixture", sde: "SDE", t: float) -> "GaussianMixture":
    """p_t of mixture data under ``sde`` at one time t ∈ [0, 1]: again a mixture, means m μ_k, covs m² Σ_k + s² I."""
    t = check_time(t)
    if t.numel() != 1:
        raise ValueError(f"noised_mixture takes one time t (a float), got shape {tuple(t.shape)}")
    m, s = (float(v) for v in _check_process(sde).marginal_coeffs(t.reshape(())))
    return _check_gmm(gmm).marginal(m, s)


def tilted_weights(gmm: "GaussianMixture", x: Tensor, label: int, scale: float) -> Tensor:
    r"""Self-normalised importance weights of the *tilted* data density (chapter 4), for samples x ~ p:

    .. math:: \pi_s(x) = \frac{p(x)\,p(y\mid x)^s}{Z_s},\qquad
       w_i = \frac{\pi_s(x_i)/p(x_i)}{\sum_j \pi_s(x_j)/p(x_j)} = \frac{p(y\mid x_i)^s}{\sum_j p(y\mid x_j)^s},

    p(y | x) the clean class posterior of the mixture (components = classes). π_s is what "classifier guidance
    with scale s samples ∝ p(x) p(y|x)^s" would mean; Σ_i w_i f(x_i) estimates E_{π_s}[f] (consistent as
    N → ∞), and 1 / Σ_i w_i² is the effective sample size. Computed in log space (stable for large s).

    x: (N, D) samples of ``gmm``; label: the class y in [0, K); scale: s >= 0 -> (N,) float64, summing to 1.
    """
    gmm = _check_gmm(gmm)
    _check_points(gmm, x, "x")
    label = check_int(label, "label", 0, gmm.num_components - 1, hint=" (the class = mixture component to tilt towards)")
    scale = check_real(scale, "scale", 0.0, hint=" (the tilt exponent s of p(y|x)^s)")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one sample (N >= 1), got N = 0")
    log_post = gmm.class_log_posterior(x.double(), 1.0)[:, label]   # ᾱ = 1: the clean posterior log p(y | x)
    return torch.softmax(scale * log_post, dim=0)                    # ∝ p(y | x_i)^s, normalised

r"""Chapter 4 — guidance: eps-models that wrap eps-models.

Both guidance methods steer a trained diffusion model towards a class y *at sampling time*, and
both are written as wrappers that keep the eps-model contract (:mod:`minidiff.eps`), so every
sampler (DDPM, DDIM, and chapter 3's solvers through their ε→score bridge) uses them unchanged.

**Classifier guidance** (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 4). Bayes:
:math:`\nabla\log p_t(x\mid y)=\nabla\log p_t(x)+\nabla\log p_t(y\mid x)`. A classifier
p_φ(y | x_t, t) trained on noisy inputs supplies the second term; with Tweedie's
ε = −√(1−ᾱ_t) ∇log p_t (BPS seed eq. 3) the guided noise prediction is

.. math:: \hat\varepsilon(x_t, t, y) = \varepsilon_\theta(x_t, t) - s\,\sqrt{1-\bar\alpha_t}\;\nabla_{x_t}\log p_\phi(y\mid x_t, t)
   \qquad\text{(ADM eq. 14, Alg. 2)}

which samples (approximately) ∝ p(x) p(y|x)^s. For ancestral sampling this shifts DDPM's mean by
s·β_t/√α_t·∇log p_φ, ADM Alg. 1's "μ + sΣg" up to β_t vs Σ = β̃_t and the factor 1/√α_t ≈ 1
(ADM evaluates g at x_t, not at μ; chapter 4 checks the Taylor step behind Alg. 1 numerically).

**Classifier-free guidance** (Ho & Salimans 2022, eq. 6, Alg. 2). One network trained with its
condition replaced by a null token with probability p_uncond (Alg. 1;
:func:`minidiff.train.diffusion_loss`) is both ε_θ(z, c) and ε_θ(z, ∅); combine

.. math:: \tilde\varepsilon = (1+w)\,\varepsilon_\theta(z, c) - w\,\varepsilon_\theta(z, \varnothing)
   = \varepsilon_\theta(z,\varnothing) + g\,(\varepsilon_\theta(z,c)-\varepsilon_\theta(z,\varnothing)),\quad g = 1 + w.

w = 0 is the plain conditional model (the paper's convention); g is diffusers' ``guidance_scale``.
In score terms CFG is classifier guidance with the *implicit* classifier
∇log p(c|z) = ∇log p(z|c) − ∇log p(z): CFG with weight w equals classifier guidance with
s = 1 + w on the unconditional model (checked exactly on a Gaussian mixture in the tests).

The module also holds the exact references for a Gaussian mixture whose components are the
classes (:class:`MixturePosterior`, :class:`MixtureConditionalEps`), and the classifier
training loss :func:`classifier_loss`.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .eps import EpsModel, call_eps, score_to_eps
from .forward import q_sample
from .schedules import NoiseSchedule

__all__ = ["ClassifierGuidance", "ClassifierFreeGuidance", "cfg_combine", "classifier_loss",
           "MixturePosterior", "MixtureConditionalEps", "check_guidance_scale", "alpha_bar_at"]

Classifier = Callable[[Tensor, Tensor], Tensor]   # (x_t (B, *shape), t (B,)) -> logits (B, K)


def check_guidance_scale(value: Any, name: str) -> float:
    """``value`` as a float, or a ValueError naming ``name`` if it is not a finite number >= 0."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _labels(cond: Any, batch: int, device: torch.device, what: str) -> Tensor:
    if cond is None:
        raise ValueError(f"{what} needs the target class: pass cond=labels of shape (B,)=({batch},) "
                         "(an int is broadcast to the batch)")
    labels = torch.as_tensor(cond, device=device)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"cond must be integer class labels, got dtype {labels.dtype}")
    if labels.ndim == 0:
        labels = labels.expand(batch)
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(f"cond must have shape (B,)=({batch},), got {tuple(labels.shape)}")
    return labels.long()


def _batch_t(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(t, device=device)
    return t.expand(batch) if t.ndim == 0 else t


def alpha_bar_at(schedule: NoiseSchedule, t: Tensor | int, batch: int) -> Tensor:
    """ᾱ at (integer or fractional) step indices -> (batch,) float64: :meth:`NoiseSchedule.alpha_bar_at`."""
    return schedule.alpha_bar_at(t, batch)


# ---------------------------------------------------------------------------------- training


def classifier_loss(schedule: NoiseSchedule) -> Callable[[nn.Module, tuple[Tensor, Tensor], torch.Generator], Tensor]:
    r"""Cross-entropy of a time-dependent classifier on noisy inputs, as a ``loss_fn`` for
    :func:`minidiff.train.fit`: a batch (x0 (B, *shape), y (B,)) is noised to
    x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε with t ~ U{0..T−1} (the same t distribution the sampler visits;
    ADM Sec. 4.1) and scored by −log p_φ(y | x_t, t)."""

    def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor], generator: torch.Generator) -> Tensor:
        if not isinstance(batch, tuple) or len(batch) != 2:
            raise ValueError("classifier_loss needs labelled data: fit(classifier, loss, (x0, labels), ...)")
        x0, y = batch
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return F.cross_entropy(model(q_sample(schedule, x0, t, noise), t), y)

    return loss_fn


# ---------------------------------------------------------------------------------- guidance


class ClassifierGuidance:
    r"""ε̂(x_t, t, y) = ε_θ(x_t, t[, ·]) − s √(1−ᾱ_t) ∇_{x_t} log p_φ(y | x_t, t)  (ADM eq. 14).

    Args:
        eps_model: the diffusion model (unconditional or class-conditional).
        classifier: ``classifier(x_t, t) -> logits (B, K)`` on noisy inputs (log-probabilities work
            too: log_softmax leaves them unchanged). Put it in eval mode; it must treat examples
            independently (no BatchNorm in train mode).
        scale: s >= 0. s = 0 returns the base model's ε; s = 1 targets p(x|y); s > 1 sharpens
            towards ∝ p(x) p(y|x)^s.
        schedule: gives ᾱ_t. t are step indices in [0, T); fractional indices (chapter 3's samplers
            through ``ContinuousTime.from_ddpm``) interpolate log ᾱ between neighbouring steps.
        base_cond: what the *base* model receives as ``cond``: ``"auto"`` (the labels if the model
            has ``num_classes``, else nothing), ``"label"``, ``"none"``, or ``"null"`` (its null token:
            the unconditional half of a CFG-trained model).

    The result is an eps-model ``(x_t (B, *shape), t (B,), cond=labels (B,)) -> (B, *shape)``,
    detached. The input gradient is taken under ``torch.enable_grad()``, so it works inside the
    samplers' ``no_grad``; the classifier's parameters get no ``.grad``.
    """

    BASE_CONDS = ("auto", "label", "none", "null")

    def __init__(self, eps_model: EpsModel, classifier: Classifier, scale: float, schedule: NoiseSchedule,
                 base_cond: str = "auto") -> None:
        if not callable(eps_model) or not callable(classifier):
            raise TypeError("eps_model and classifier must be callables")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule (ᾱ_t is needed), got {type(schedule).__name__}")
        if base_cond not in self.BASE_CONDS:
            raise ValueError(f"base_cond must be one of {self.BASE_CONDS}, got {base_cond!r}")
        schedule.check_model(eps_model)
        self.eps_model, self.classifier, self.schedule = eps_model, classifier, schedule
        self.scale = check_guidance_scale(scale, "scale")
        if base_cond == "auto":
            base_cond = "label" if getattr(eps_model, "num_classes", None) else "none"
        if base_cond == "null" and _null_label(eps_model) is None:
            raise ValueError("base_cond='null' needs a model with a null token (model.class_embed.null_label)")
        self.base_cond = base_cond

    @property
    def num_timesteps(self) -> int | None:
        return getattr(self.eps_model, "num_timesteps", None)

    def grad_log_prob(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """∇_{x_t} log p_φ(y | x_t, t): (B, *shape), detached. labels: (B,) in [0, K)."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x, t), dim=1)          # (B, K)
            if labels.numel() and (labels.min() < 0 or labels.max() >= log_probs.shape[1]):
                raise ValueError(f"class labels must be in [0, {log_probs.shape[1]}) for this classifier, "
                                 f"got min {int(labels.min())}, max {int(labels.max())}")
            picked = log_probs.gather(1, labels[:, None]).sum()               # Σ_b log p(y_b | x_b)
            (grad,) = torch.autograd.grad(picked, x)                          # row b only sees x_b
        return grad.detach()

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        labels = _labels(cond, x_t.shape[0], x_t.device, "classifier guidance")
        t = _batch_t(t, x_t.shape[0], x_t.device)
        if self.base_cond == "label":
            eps = call_eps(self.eps_model, x_t, t, labels)
        elif self.base_cond == "null":
            eps = call_eps(self.eps_model, x_t, t, torch.full_like(labels, _null_label(self.eps_model)))
        else:
            eps = call_eps(self.eps_model, x_t, t)
        if self.scale == 0:
            return eps.detach()
        grad = self.grad_log_prob(x_t, t, labels)
        alpha_bar = self.alpha_bar(t, x_t)                                                # (B, 1, ...)
        return (eps - self.scale * (1 - alpha_bar).sqrt() * grad).detach()                 # ADM eq. 14

    def alpha_bar(self, t: Tensor, x_t: Tensor) -> Tensor:
        """ᾱ_t broadcastable to x_t: (B, 1, ...) (see :func:`alpha_bar_at`)."""
        ab = alpha_bar_at(self.schedule, t, x_t.shape[0])
        return ab.to(device=x_t.device, dtype=x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))

    def __repr__(self) -> str:
        return f"ClassifierGuidance(scale={self.scale:g}, base_cond={self.base_cond!r})"


def cfg_combine(eps_cond: Tensor, eps_uncond: Tensor, w: float) -> Tensor:
    r""":math:`(1+w)\,\varepsilon_c - w\,\varepsilon_u` (Ho & Salimans 2022, eq. 6). Shapes equal."""
    if eps_cond.shape != eps_uncond.shape:
        raise ValueError(f"eps_cond and eps_uncond must have the same shape, got "
                         f"{tuple(eps_cond.shape)} and {tuple(eps_uncond.shape)}")
    w = check_guidance_scale(w, "w")
    return (1 + w) * eps_cond - w * eps_uncond


def _null_label(eps_model: Any) -> int | None:
    return getattr(getattr(eps_model, "class_embed", None), "null_label", None)


class ClassifierFreeGuidance:
    r"""ε̃(z, t, c) = (1+w) ε_θ(z, t, c) − w ε_θ(z, t, ∅)  (Ho & Salimans 2022, eq. 6, Alg. 2).

    Args:
        eps_model: a conditional eps-model trained with condition dropout (``diffusion_loss(schedule,
            p_uncond, null_label)``, Alg. 1), so that the null condition gives ε_θ(z, ∅).
        w: guidance weight >= 0 in the paper's convention (w = 0: the conditional model). diffusers'
            ``guidance_scale`` is g = 1 + w; build from it with :meth:`from_guidance_scale`.
        null_label: the null condition. Default: ``eps_model.class_embed.null_label`` (the learned
            null token of :class:`~minidiff.nets.ClassEmbedding`). An int fills a label tensor; a
            tensor (e.g. an empty-prompt embedding, shape (1, …) or cond's shape) is broadcast.

    Calling it with cond (B,) runs ONE forward pass on the doubled batch [x, x] with conditions
    [cond, ∅] and returns (B, *shape). With w = 0 it skips the unconditional half.
    """

    def __init__(self, eps_model: EpsModel, w: float, null_label: int | Tensor | None = None) -> None:
        if not callable(eps_model):
            raise TypeError("eps_model must be callable")
        self.eps_model = eps_model
        self.w = check_guidance_scale(w, "w")
        if null_label is None:
            null_label = _null_label(eps_model)
            if null_label is None:
                raise ValueError(
                    "classifier-free guidance needs a model with a null condition: this model has no "
                    "class_embed.null_label (is it unconditional, num_classes=None?). Train a conditional "
                    "model with diffusion_loss(schedule, p_uncond>0, null_label) or pass null_label=")
        self.null_label = null_label

    @classmethod
    def from_guidance_scale(cls, eps_model: EpsModel, guidance_scale: float,
                            null_label: int | Tensor | None = None) -> "ClassifierFreeGuidance":
        """diffusers' convention ε_u + g (ε_c − ε_u): g = 1 + w, so g must be >= 1."""
        g = check_guidance_scale(guidance_scale, "guidance_scale")
        if g < 1:
            raise ValueError(f"guidance_scale g = 1 + w must be >= 1 (g = 1: no guidance), got {g}")
        return cls(eps_model, g - 1, null_label)

    @property
    def num_timesteps(self) -> int | None:
        return getattr(self.eps_model, "num_timesteps", None)

    @property
    def guidance_scale(self) -> float:
        """diffusers' g = 1 + w."""
        return 1 + self.w

    def _null_like(self, cond: Tensor) -> Tensor:
        if isinstance(self.null_label, Tensor):
            return self.null_label.to(cond.device, cond.dtype).expand_as(cond)
        return torch.full_like(cond, int(self.null_label))

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        batch = x_t.shape[0]
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition: pass cond=labels (B,) "
                             "(for unconditional samples, sample the model itself with cond = its null label)")
        if isinstance(self.null_label, Tensor):
            cond = torch.as_tensor(cond, device=x_t.device)
            if cond.shape[0] != batch:
                raise ValueError(f"cond must have batch size {batch}, got {tuple(cond.shape)}")
        else:
            cond = _labels(cond, batch, x_t.device, "classifier-free guidance")
        if self.w == 0:
            return call_eps(self.eps_model, x_t, t, cond)
        t = _batch_t(t, batch, x_t.device)
        both = call_eps(self.eps_model, torch.cat([x_t, x_t]), torch.cat([t, t]),
                        torch.cat([cond, self._null_like(cond)]))
        eps_cond, eps_uncond = both[:batch], both[batch:]
        return cfg_combine(eps_cond, eps_uncond, self.w)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(w={self.w:g}, guidance_scale={self.guidance_scale:g})"


# ------------------------------------------------------------------- exact mixture references


# The exact eps-model, conditional eps-model and class posterior of a Gaussian mixture (on either
# clock) live in :mod:`minidiff.exact`; re-exported here, where chapter 4 imports them.
from .exact import MixtureConditionalEps, MixturePosterior  # noqa: E402

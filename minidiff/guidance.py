r"""Chapter 4 — guidance: eps-models that wrap eps-models.

Both guidance methods steer a trained diffusion model towards a condition y *at sampling time*, and
both are written as wrappers that keep the eps-model contract (:mod:`minidiff.eps`), so every
sampler (DDPM, DDIM, and chapter 3's solvers through their ε→score bridge) uses them unchanged.

**Gradient guidance** (:class:`GradientGuidance`). Bayes: :math:`\nabla\log p_t(x\mid y)=\nabla\log
p_t(x)+\nabla\log p_t(y\mid x)`, and more generally any tilt :math:`p_t(x)\,g_t(x)^s` of the model's
marginal has score :math:`\nabla\log p_t + s\nabla\log g_t`. With Tweedie's
ε = −√(1−ᾱ_t) ∇log p_t (BPS seed eq. 3) the guided noise prediction is

.. math:: \hat\varepsilon(x_t, t) = \varepsilon_\theta(x_t, t) - s\,\sigma_t\,\nabla_{x_t}\log g(x_t, t),
   \qquad \sigma_t = \sqrt{1-\bar\alpha_t}.

One base class computes this; each method supplies log g:

* **classifier guidance** (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 4):
  g = p_φ(y | x_t, t), a classifier trained on noisy inputs (ADM eq. 14, Alg. 2;
  :class:`ClassifierGuidance`). Its score at each t is ∇log p_t(x) + s ∇log p_t(y|x); for s ∉ {0, 1} that is
  *not* the score of the noised tilted density p(x) p(y|x)^s (noising does not commute with the power, chapter 4
  §3.1 measures the gap), so s > 1 sharpens towards class y without sampling that density. For ancestral sampling
  this shifts DDPM's mean by s·β_t/√α_t·∇log p_φ, ADM Alg. 1's "μ + sΣg" up to β_t vs Σ = β̃_t and the
  factor 1/√α_t ≈ 1 (ADM evaluates g at x_t, not at μ; chapter 4 checks the Taylor step numerically);
* **density-ratio guidance** (TGDP, chapter 8): g = the target/source density ratio.

**Classifier-free guidance** (Ho & Salimans 2022, eq. 6, Alg. 2). One network trained with its
condition replaced by a null condition with probability p_uncond (Alg. 1;
:func:`minidiff.train.diffusion_loss`) is both ε_θ(z, c) and ε_θ(z, ∅); combine

.. math:: \tilde\varepsilon = (1+w)\,\varepsilon_\theta(z, c) - w\,\varepsilon_\theta(z, \varnothing)
   = \varepsilon_\theta(z,\varnothing) + g\,(\varepsilon_\theta(z,c)-\varepsilon_\theta(z,\varnothing)),\quad g = 1 + w.

w = 0 is the plain conditional model (the paper's convention); g is diffusers' ``guidance_scale``.
In score terms CFG is classifier guidance with the *implicit* classifier
∇log p(c|z) = ∇log p(z|c) − ∇log p(z): CFG with weight w equals classifier guidance with
s = 1 + w on the unconditional model (checked exactly on a Gaussian mixture in the tests).
Conditions are data (:mod:`minidiff.cond`): a label tensor, an embedding, or a mapping of named
tensors, of which CFG nulls only the entries it is told to (default: the label and the context), so
e.g. a super-resolution model's low-res image or power steering's ``c_add`` reach both halves unchanged.

The module also holds the exact references for a Gaussian mixture whose components are the
classes (:class:`MixturePosterior`, :class:`MixtureConditionalEps`), and the classifier
training loss :func:`classifier_loss`.
"""
from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cond as C
from .checks import check_labels
from .clock import model_clock
from .cond import NULL_KEYS, Cond, NullSpec
from .eps import EpsModel, call_eps
from .forward import q_sample
from .schedules import NoiseSchedule

__all__ = ["GradientGuidance", "ClassifierGuidance", "ClassifierFreeGuidance", "cfg_combine", "classifier_loss",
           "MixturePosterior", "MixtureConditionalEps", "check_guidance_scale", "alpha_bar_at"]

Classifier = Callable[[Tensor, Tensor], Tensor]   # (x_t (B, *shape), t (B,)) -> logits (B, K)


def check_guidance_scale(value: Any, name: str) -> float:
    """``value`` as a float, or a ValueError naming ``name`` if it is not a finite number >= 0
    (a bool, a string, a tensor with more than one element, NaN, ±inf and negatives are refused)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be one number >= 0, got a tensor of shape {tuple(value.shape)}; "
                             "one guidance scale serves the whole batch")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _labels(cond: Any, batch: int, device: torch.device, what: str, name: str = "cond") -> Tensor:
    """Integer class labels (B,) from a tensor, a list or an int (broadcast to the batch)."""
    if cond is None:
        raise ValueError(f"{what} needs the target class: pass cond=labels of shape (B,)=({batch},) "
                         "(an int is broadcast to the batch)")
    return check_labels(cond, name, batch, device=device, broadcast=True)


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


def _model_null(eps_model: Any) -> NullSpec | None:
    """The model's null condition: ``model.null_cond`` (:func:`minidiff.cond.model_null`), else the null
    token of a minidiff ClassEmbedding (``model.class_embed.null_label``, what nets exposed before
    ``null_cond``), else None."""
    null = C.model_null(eps_model)
    if null is None:
        null = getattr(getattr(eps_model, "class_embed", None), "null_label", None)
    return null


def _check_null(null: Any, name: str = "null") -> NullSpec:
    """A null spec: an int, a finite float, a tensor, or a mapping of names to those."""
    if isinstance(null, Mapping):
        if not null:
            raise ValueError(f"{name} is an empty mapping: give the null value of each entry, e.g. {{'label': 10}}")
        for key, value in null.items():
            if not isinstance(key, str):
                raise TypeError(f"{name} must map entry names (str) to null values, got key {key!r}")
            _check_null(value, f"{name}[{key!r}]")
        return dict(null)
    if isinstance(null, Tensor):
        if null.is_floating_point() and not torch.isfinite(null).all():
            raise ValueError(f"{name} must be finite, got a tensor with NaN or inf")
        return null
    if isinstance(null, bool) or not isinstance(null, numbers.Real):
        raise TypeError(f"{name} must be an int (a null label), a float, a tensor (e.g. the empty prompt's "
                        f"embedding) or a mapping of those, got {type(null).__name__}")
    if not math.isfinite(null):
        raise ValueError(f"{name} must be finite, got {null}")
    return null


def _check_keys(keys: Any) -> tuple[str, ...]:
    """The names of the condition entries to null: a non-empty tuple (or list) of str."""
    if not isinstance(keys, (tuple, list)) or not keys or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"keys must be a non-empty tuple of entry names (str), e.g. {NULL_KEYS}, got {keys!r}")
    return tuple(keys)


def _null_of(cond: Cond, null: NullSpec, keys: tuple[str, ...]) -> Cond:
    """The null condition for every row of ``cond``: a mapping null's "label" entry serves a label tensor."""
    if isinstance(cond, Tensor) and isinstance(null, Mapping) and "label" in null:
        null = null["label"]
    if isinstance(cond, Mapping) and not any(k in cond for k in keys):
        raise ValueError(f"cond has entries {sorted(cond)} but none of keys={keys} to null, so guidance would "
                         "change nothing; name the entries that carry the condition in keys=")
    return C.null_like(cond, null, keys)


def _label_null(null: NullSpec) -> bool:
    """True when a null spec's label part is a label (an int), so the condition must hold integer labels."""
    label = null.get("label") if isinstance(null, Mapping) else null
    return isinstance(label, numbers.Integral) and not isinstance(label, bool)


class GradientGuidance(ABC):
    r"""ε̂(x_t, t, c) = ε_θ(x_t, t, c_base) − s σ_t ∇_{x_t} log g(x_t, t, c),  σ_t = √(1−ᾱ_t).

    The one home of gradient guidance (see the module docstring): a subclass supplies only
    :meth:`log_g`. :class:`ClassifierGuidance` is one (g = p_φ(y | x_t, t)); chapter 8's density-ratio
    guidance is another.

    Args:
        eps_model: the diffusion model being guided.
        scale: s >= 0. s = 0 returns the base model's ε (log g is not evaluated).
        schedule: gives ᾱ_t. t are step indices in [0, T); fractional indices (chapter 3's samplers
            through ``ContinuousTime.from_ddpm``) interpolate log ᾱ between neighbouring steps.
        base_cond: what the *base* model receives as ``cond``: ``"auto"`` (the condition if the model
            is conditional — it has ``num_classes`` or a null condition — else nothing), ``"label"``
            (the condition as given), ``"none"``, or ``"null"`` (its null condition: the unconditional
            half of a CFG-trained model).
        null, keys: for ``base_cond="null"``: the null condition (default: the model's own,
            ``model.null_cond`` or ``model.class_embed.null_label``) and the entries of a mapping
            condition it replaces (:func:`minidiff.cond.null_like`).

    The result is an eps-model ``(x_t (B, *shape), t (B,), cond) -> (B, *shape)``, detached. The input
    gradient is taken under ``torch.enable_grad()``, so it works inside the samplers' ``no_grad``; the
    parameters inside g get no ``.grad``. log g must treat examples independently (no BatchNorm in
    train mode): then the gradient of Σ_b log g_b gives row b exactly ∇_{x_b} log g_b.
    """

    BASE_CONDS = ("auto", "label", "none", "null")

    def __init__(self, eps_model: EpsModel, scale: float, schedule: NoiseSchedule, base_cond: str = "auto",
                 null: NullSpec | None = None, keys: Sequence[str] = NULL_KEYS) -> None:
        if not callable(eps_model):
            raise TypeError(f"eps_model must be callable as eps_model(x_t, t, cond), got {type(eps_model).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule (ᾱ_t is needed), got {type(schedule).__name__}")
        if not isinstance(base_cond, str) or base_cond not in self.BASE_CONDS:
            raise ValueError(f"base_cond must be one of {self.BASE_CONDS}, got {base_cond!r}")
        schedule.check_model(eps_model)
        if model_clock(eps_model) == "continuous":
            # σ_t = √(1−ᾱ_t) is looked up with t as a step index: t ∈ [0, 1] would be silently wrong
            raise ValueError(
                f"this {type(eps_model).__name__} runs on the continuous clock (t in [0, 1]), but gradient guidance "
                "reads t as step indices of `schedule`; guide the discrete model and bridge the result: "
                "ContinuousTime.from_ddpm(ClassifierGuidance(model, classifier, scale, schedule))")
        self.eps_model, self.schedule = eps_model, schedule
        self.scale = check_guidance_scale(scale, "scale")
        self.keys = _check_keys(keys)
        own_null = _model_null(eps_model)
        self.null = _check_null(null) if null is not None else own_null
        if base_cond == "auto":
            base_cond = "label" if getattr(eps_model, "num_classes", None) or own_null is not None else "none"
        if base_cond == "null" and self.null is None:
            raise ValueError("base_cond='null' needs a model with a null token (model.null_cond or "
                             "model.class_embed.null_label), or pass null=")
        self.base_cond = base_cond

    @abstractmethod
    def log_g(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """log g(x_t, t, cond), one value per example: (B,), differentiable in x_t (B, *shape).
        Row b must depend on x_t[b] only."""

    @property
    def num_timesteps(self) -> int | None:
        return getattr(self.eps_model, "num_timesteps", None)

    @property
    def null_cond(self) -> NullSpec | None:
        """The wrapped model's null condition (or the ``null=`` given)."""
        return self.null

    def check_condition(self, cond: Any, x_t: Tensor) -> Cond:
        """Validate ``cond`` for the batch of x_t and return it (subclasses also convert, e.g. int labels)."""
        cond = C.check_cond(cond, batch=x_t.shape[0])
        if cond is None and self.base_cond == "null":
            raise ValueError("base_cond='null' nulls the condition, but cond is None: pass the condition")
        return cond

    def base_condition(self, cond: Cond) -> Cond:
        """What the base model sees (``base_cond``): the condition, its null, or None."""
        if self.base_cond == "label":
            return cond
        if self.base_cond == "null":
            return _null_of(cond, self.null, self.keys)
        return None

    def grad_log_g(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """∇_{x_t} log g(x_t, t, cond): (B, *shape), detached."""
        batch = x_t.shape[0]
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            log_g = self.log_g(x, t, cond)
            if not isinstance(log_g, Tensor) or tuple(log_g.shape) != (batch,):
                got = tuple(log_g.shape) if isinstance(log_g, Tensor) else type(log_g).__name__
                raise ValueError(f"log_g must return one value per example, shape (B,)=({batch},), got {got}; "
                                 "sum log g over each example's dimensions")
            (grad,) = torch.autograd.grad(log_g.sum(), x, allow_unused=True) if log_g.requires_grad else (None,)
            if grad is None:
                raise ValueError("log_g must be differentiable in x_t: do not detach it, compute it under "
                                 "torch.no_grad(), or leave x_t out of it")
        return grad.detach()                      # Σ_b log g_b: row b of the gradient only sees x_b

    def alpha_bar(self, t: Tensor, x_t: Tensor) -> Tensor:
        """ᾱ_t broadcastable to x_t: (B, 1, ...) (see :func:`alpha_bar_at`)."""
        ab = alpha_bar_at(self.schedule, t, x_t.shape[0])
        return ab.to(device=x_t.device, dtype=x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))

    def sigma(self, t: Tensor, x_t: Tensor) -> Tensor:
        """σ_t = √(1−ᾱ_t), the marginal std of x_t: (B, 1, ...)."""
        return (1 - self.alpha_bar(t, x_t)).sqrt()

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        cond = self.check_condition(cond, x_t)
        t = _batch_t(t, x_t.shape[0], x_t.device)
        eps = call_eps(self.eps_model, x_t, t, self.base_condition(cond))
        if self.scale == 0:
            return eps.detach()
        grad = self.grad_log_g(x_t, t, cond)
        return (eps - self.scale * self.sigma(t, x_t) * grad).detach()                     # ADM eq. 14

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale:g}, base_cond={self.base_cond!r})"


class ClassifierGuidance(GradientGuidance):
    r"""ε̂(x_t, t, y) = ε_θ(x_t, t[, ·]) − s √(1−ᾱ_t) ∇_{x_t} log p_φ(y | x_t, t)  (ADM eq. 14).

    :class:`GradientGuidance` with g = p_φ(y | x_t, t).

    Args:
        eps_model: the diffusion model (unconditional or conditional).
        classifier: ``classifier(x_t, t) -> logits (B, K)`` on noisy inputs (log-probabilities work
            too: log_softmax leaves them unchanged). Put it in eval mode; it must treat examples
            independently (no BatchNorm in train mode).
        scale: s >= 0. s = 0 returns the base model's ε; s = 1 targets p(x|y); s > 1 sharpens towards
            class y (heuristically like p(x) p(y|x)^s, but it does not sample that density; chapter 4 §3.1).
        schedule, base_cond, null, keys: see :class:`GradientGuidance`.

    ``cond`` is labels (B,) in [0, K) (an int is broadcast), or a mapping with ``"label"`` (B,) whose
    other entries only the base model reads.
    """

    def __init__(self, eps_model: EpsModel, classifier: Classifier, scale: float, schedule: NoiseSchedule,
                 base_cond: str = "auto", null: NullSpec | None = None, keys: Sequence[str] = NULL_KEYS) -> None:
        if not callable(eps_model) or not callable(classifier):
            raise TypeError("eps_model and classifier must be callables")
        super().__init__(eps_model, scale, schedule, base_cond, null, keys)
        self.classifier = classifier

    def check_condition(self, cond: Any, x_t: Tensor) -> Cond:
        """Labels (B,) long, or the mapping with its ``"label"`` entry as labels (B,) long."""
        batch, what = x_t.shape[0], "classifier guidance"
        if isinstance(cond, Mapping):
            cond = C.check_cond(cond, batch=batch)
            if "label" not in cond:
                raise ValueError(f"{what} needs the target class: cond['label'] (B,) is missing (got entries "
                                 f"{sorted(cond)})")
            return {**cond, "label": _labels(cond["label"], batch, x_t.device, what, "cond['label']")}
        return _labels(cond, batch, x_t.device, what)

    def log_g(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """log p_φ(y | x_t, t): (B,). Rows holding the model's null label ("no class": the unconditional
        half when classifier-free guidance wraps this) get log g = 0, i.e. no classifier gradient."""
        labels = cond["label"] if isinstance(cond, Mapping) else cond
        logits = self.classifier(x_t, t)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x_t.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"classifier(x_t, t) must return logits of shape (B, K)=({x_t.shape[0]}, K), got {got}")
        log_probs = F.log_softmax(logits, dim=1)                                          # (B, K)
        null = self._null_label()
        unguided = labels == null if null is not None else torch.zeros_like(labels, dtype=torch.bool)
        real = labels[~unguided]
        if real.numel() and (real.min() < 0 or real.max() >= log_probs.shape[1]):
            raise ValueError(f"class labels must be in [0, {log_probs.shape[1]}) for this classifier"
                             + (f" (or the null label {null})" if null is not None else "")
                             + f", got min {int(real.min())}, max {int(real.max())}")
        picked = log_probs.gather(1, labels.masked_fill(unguided, 0)[:, None])[:, 0]
        return torch.where(unguided, torch.zeros_like(picked), picked)

    def _null_label(self) -> int | None:
        """The null label of the guided model (an int), if it has one."""
        if self.null is None or not _label_null(self.null):
            return None
        return int(self.null["label"] if isinstance(self.null, Mapping) else self.null)

    def grad_log_prob(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """∇_{x_t} log p_φ(y | x_t, t): (B, *shape), detached. labels: (B,) in [0, K)."""
        return self.grad_log_g(x_t, t, labels)


def cfg_combine(eps_cond: Tensor, eps_uncond: Tensor, w: float) -> Tensor:
    r""":math:`(1+w)\,\varepsilon_c - w\,\varepsilon_u` (Ho & Salimans 2022, eq. 6). Shapes equal."""
    if eps_cond.shape != eps_uncond.shape:
        raise ValueError(f"eps_cond and eps_uncond must have the same shape, got "
                         f"{tuple(eps_cond.shape)} and {tuple(eps_uncond.shape)}")
    w = check_guidance_scale(w, "w")
    return (1 + w) * eps_cond - w * eps_uncond


class ClassifierFreeGuidance:
    r"""ε̃(z, t, c) = (1+w) ε_θ(z, t, c) − w ε_θ(z, t, ∅)  (Ho & Salimans 2022, eq. 6, Alg. 2).

    Args:
        eps_model: a conditional eps-model trained with condition dropout (``diffusion_loss(schedule,
            p_uncond, null_label)``, Alg. 1), so that the null condition gives ε_θ(z, ∅).
        w: guidance weight >= 0 in the paper's convention (w = 0: the conditional model). diffusers'
            ``guidance_scale`` is g = 1 + w; build from it with :meth:`from_guidance_scale`.
        null: the null condition ∅ (:mod:`minidiff.cond`'s null spec). Default: the model's own,
            ``model.null_cond``, else ``model.class_embed.null_label`` (the learned null token of
            :class:`~minidiff.nets.ClassEmbedding`). An int fills a label tensor; a tensor (e.g. the
            empty prompt's embedding, shape (1, …) or one row's shape) is broadcast; a mapping gives
            the null of each entry. ``null_label=`` is its old name.
        keys: the entries of a mapping condition to null (default :data:`~minidiff.cond.NULL_KEYS`,
            the label and the context); the others (a low-res image, ``c_add``) reach both halves
            unchanged.

    Calling it with cond (B, ...) or a mapping runs ONE forward pass on the doubled batch [x, x]
    with conditions ``cond.cat([c, null_like(c)])`` and returns (B, *shape). With w = 0 it skips the
    unconditional half.
    """

    def __init__(self, eps_model: EpsModel, w: float, null: NullSpec | None = None,
                 keys: Sequence[str] = NULL_KEYS, *, null_label: NullSpec | None = None) -> None:
        if not callable(eps_model):
            raise TypeError(f"eps_model must be callable as eps_model(x_t, t, cond), got {type(eps_model).__name__}")
        if null_label is not None:
            if null is not None:
                raise TypeError("give the null condition once: null= (null_label= is its old name)")
            null = null_label
        self.eps_model = eps_model
        self.w = check_guidance_scale(w, "w")
        self.keys = _check_keys(keys)
        if null is None:
            null = _model_null(eps_model)
            if null is None:
                raise ValueError(
                    "classifier-free guidance needs a model with a null condition: this model has no "
                    "null_cond or class_embed.null_label (is it unconditional, num_classes=None?). Train a "
                    "conditional model with diffusion_loss(schedule, p_uncond>0, null_label) or pass null=")
        self.null = _check_null(null)

    @classmethod
    def from_guidance_scale(cls, eps_model: EpsModel, guidance_scale: float, null: NullSpec | None = None,
                            keys: Sequence[str] = NULL_KEYS, *,
                            null_label: NullSpec | None = None) -> "ClassifierFreeGuidance":
        """diffusers' convention ε_u + g (ε_c − ε_u): g = 1 + w, so g must be >= 1."""
        g = check_guidance_scale(guidance_scale, "guidance_scale")
        if g < 1:
            raise ValueError(f"guidance_scale g = 1 + w must be >= 1 (g = 1: no guidance), got {g}")
        return cls(eps_model, g - 1, null, keys, null_label=null_label)

    @property
    def num_timesteps(self) -> int | None:
        return getattr(self.eps_model, "num_timesteps", None)

    @property
    def null_cond(self) -> NullSpec:
        """The null condition (the wrapped model's unless ``null=`` was given): a guided call with it is
        the model's own unconditional prediction, (1+w) ε(∅) − w ε(∅) = ε(∅)."""
        return self.null

    @property
    def null_label(self) -> NullSpec | None:
        """Old name of :attr:`null` (a mapping null gives its ``"label"`` entry)."""
        return self.null.get("label") if isinstance(self.null, Mapping) else self.null

    @property
    def guidance_scale(self) -> float:
        """diffusers' g = 1 + w."""
        return 1 + self.w

    def check_condition(self, cond: Any, x_t: Tensor) -> Cond:
        """Validate ``cond`` for the batch of x_t; labels (an int broadcasts) become (B,) long."""
        batch, what = x_t.shape[0], "classifier-free guidance"
        if cond is None:
            raise ValueError(f"{what} needs a condition: pass cond=labels (B,) or a mapping "
                             "(for unconditional samples, sample the model itself with cond = its null condition)")
        if isinstance(cond, Mapping):
            cond = C.check_cond(cond, batch=batch)
            if "label" in cond and _label_null(self.null):
                cond = {**cond, "label": _labels(cond["label"], batch, x_t.device, what, "cond['label']")}
            return cond
        if _label_null(self.null):
            return _labels(cond, batch, x_t.device, what)
        return C.check_cond(cond, batch=batch)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        batch = x_t.shape[0]
        cond = self.check_condition(cond, x_t)
        null = _null_of(cond, self.null, self.keys)
        if self.w == 0:
            return call_eps(self.eps_model, x_t, t, cond)
        t = _batch_t(t, batch, x_t.device)
        both = call_eps(self.eps_model, torch.cat([x_t, x_t]), torch.cat([t, t]), C.cat([cond, null]))
        return cfg_combine(both[:batch], both[batch:], self.w)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(w={self.w:g}, guidance_scale={self.guidance_scale:g})"


# ------------------------------------------------------------------- exact mixture references


# The exact eps-model, conditional eps-model and class posterior of a Gaussian mixture (on either
# clock) live in :mod:`minidiff.exact`; re-exported here, where chapter 4 imports them.
from .exact import MixtureConditionalEps, MixturePosterior  # noqa: E402

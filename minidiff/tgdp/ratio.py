r"""Step 1 of TGDP: a domain classifier gives the density ratio q/p (seed 001, "Step 1"; chapter 8).

A classifier c(x) = P(source | x) trained with the **balanced** logistic loss of seed 001,

.. math:: \omega^* = \arg\min_\omega\; -\frac1m\sum_{x_i\sim p}\log c_\omega(x_i)
          \;-\;\frac1n\sum_{x'_i\sim q}\log\big(1-c_\omega(x'_i)\big),

has the optimum c* = p/(p + q) (pointwise minimiser of −p log c − q log(1 − c)), hence

.. math:: \frac{q(x)}{p(x)} = \frac{1-c^*(x)}{c^*(x)} = e^{-\ell(x)},\qquad \ell = \log\frac{c}{1-c}\ \text{(the logit)}.

**Mind the prior.** The two means weight the domains equally whatever m and n are. A classifier
trained instead on the *pooled* m + n samples with one unweighted cross-entropy learns
c* = m p/(m p + n q), so (1 − c)/c = (n/m)·q/p and the ratio needs the correction m/n:
q/p = (m/n)·e^{−ℓ}. :func:`ratio_from_logit` takes it as ``log_prior = log(m/n)`` (0 for the balanced
loss used here; with minibatches of sizes b_s, b_t drawn per step it is log(b_s/b_t)).

The same loss on noised pairs (x_t from both domains at a shared random t) trains the noisy
classifier c'(x_t, t) ≈ p_t/(p_t + q_t), whose ratio q_t/p_t the cycle regulariser regresses on.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_real, check_tensor
from ..forward import q_sample
from ..schedules import NoiseSchedule

__all__ = ["call_classifier", "check_domains", "domain_classifier_loss", "ratio_from_logit", "split_domain"]

Classifier = Callable[..., Tensor]   # classifier(x (B, D)[, t (B,)][, cond]) -> source logits (B,)


def ratio_from_logit(logit: Tensor, log_prior: float = 0.0, max_ratio: float | None = None) -> tuple[Tensor, Tensor]:
    r"""q/p = (m/n)·(1 − c)/c = exp(log_prior − ℓ) from source logits ℓ = log c/(1 − c).

    logit: (B,). log_prior: log(m/n) for a classifier trained on pooled data (module docstring), 0 for
    the balanced loss. max_ratio: ratios above it are clipped to it (None: no clipping).
    Returns (ratio (B,), clipped (B,) bool) — report ``clipped.float().mean()``, never hide it.
    A NaN logit is an error (a diverged classifier), and so is an infinite ratio without ``max_ratio``.
    """
    check_tensor(logit, "logit", floating=True)
    log_prior = check_real(log_prior, "log_prior", hint=" (log(m/n) for a classifier trained on pooled data)")
    if max_ratio is not None:
        max_ratio = check_real(max_ratio, "max_ratio", low=0, low_open=True)
    bad = torch.isnan(logit)
    if bad.any():
        raise ValueError(f"the domain classifier returned NaN logits for {int(bad.sum())} of {logit.numel()} inputs, "
                         "so the density ratio (1 - c)/c is undefined there: retrain it (lower lr, check the data "
                         "for NaN/inf)")
    log_r = log_prior - logit.double()                          # log q/p = log(m/n) − ℓ
    if max_ratio is None:
        if torch.isinf(log_r).any() and (log_r > 0).any():
            raise ValueError("the density ratio is infinite for some inputs (the classifier is certain they are "
                             "target): pass max_ratio= to clip it (the clipped share is returned)")
        return log_r.exp().to(logit.dtype), torch.zeros_like(logit, dtype=torch.bool)
    clipped = log_r > math.log(max_ratio)
    return log_r.clamp(max=math.log(max_ratio)).exp().to(logit.dtype), clipped


def split_domain(entry: Any, name: str) -> tuple[Tensor, Tensor | None]:
    """A domain's batch entry: x (B, D) or (x, labels (B,)) -> (x, labels or None)."""
    if isinstance(entry, Tensor):
        return entry, None
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and all(isinstance(e, Tensor) for e in entry):
        return entry[0], entry[1]
    raise ValueError(f"batch[{name!r}] must be x (B, D) or (x, labels (B,)), got {type(entry).__name__}")


def call_classifier(classifier: Classifier, x: Tensor, t: Tensor | None = None, cond: Any = None) -> Tensor:
    """classifier(x[, t][, cond]) checked to return one logit per example: (B,)."""
    if cond is None:
        logit = classifier(x) if t is None else classifier(x, t)
    else:
        logit = classifier(x, t, cond)                    # t is None for a time-independent classifier
    if not isinstance(logit, Tensor) or tuple(logit.shape) != (x.shape[0],):
        got = tuple(logit.shape) if isinstance(logit, Tensor) else type(logit).__name__
        raise ValueError(f"a domain classifier must return one source logit per example, shape (B,)=({x.shape[0]},), "
                         f"got {got}")
    return logit


def domain_classifier_loss(schedule: NoiseSchedule | None = None) -> Callable[[nn.Module, Mapping[str, Any],
                                                                               torch.Generator], tuple]:
    r"""The balanced logistic loss of seed 001 as a ``loss_fn`` for :func:`minidiff.train`:
    mean over the source batch of −log c + mean over the target batch of −log(1 − c).

    A batch is ``{"source": x or (x, y), "target": x or (x, y)}`` (:func:`minidiff.train.zip_batches`).
    With a ``schedule`` both are noised first, x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε with t ~ U{0..T−1} per
    example, and the classifier is called as c(x_t, t) — the noisy c'(x_t, t) of the cycle loss.
    Records the balanced accuracy as ``"accuracy"``.
    """
    if schedule is not None and not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule or None (time-independent classifier), "
                        f"got {type(schedule).__name__}")

    def loss_fn(model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> tuple[Tensor, dict]:
        if not isinstance(batch, Mapping) or set(batch) != {"source", "target"}:
            raise ValueError("a domain-classifier batch is {'source': ..., 'target': ...}: train on "
                             "zip_batches(source=random_batches(...), target=random_batches(...))")
        logits = {}
        for name in ("source", "target"):
            x, y = split_domain(batch[name], name)
            t = None
            if schedule is not None:
                t = torch.randint(0, schedule.T, (x.shape[0],), generator=generator).to(x.device)
                x = q_sample(schedule, x, t, generator=generator)
            logits[name] = call_classifier(model, x, t, y)
        src, tgt = logits["source"], logits["target"]
        loss = (F.binary_cross_entropy_with_logits(src, torch.ones_like(src))           # −(1/m) Σ log c
                + F.binary_cross_entropy_with_logits(tgt, torch.zeros_like(tgt)))       # −(1/n) Σ log(1 − c)
        accuracy = 0.5 * ((src > 0).float().mean() + (tgt < 0).float().mean())
        return loss, {"accuracy": accuracy}

    return loss_fn


def check_domains(x_source: Any, x_target: Any, y_source: Any = None, y_target: Any = None,
                  min_target: int = 2) -> None:
    """Source and target data fit together: float tensors (m, D) and (n, D) of the same D — or signals
    (m, *shape), (n, *shape) of the same shape (chapter 9) — finite, n >= ``min_target`` (a classifier
    needs examples of both domains), labels (m,), (n,) for both or neither."""
    min_target = check_int(min_target, "min_target", 1)
    for name, x in (("x_source", x_source), ("x_target", x_target)):
        check_tensor(x, name, floating=True, nonempty=True)
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (N, D) or (N, *shape), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf; clean the data first")
    if x_source.shape[1:] != x_target.shape[1:]:
        raise ValueError(f"source and target must have the same dimension: x_source is (m, {tuple(x_source.shape[1:])}), "
                         f"x_target is (n, {tuple(x_target.shape[1:])})")
    if x_target.shape[0] < min_target:
        raise ValueError(f"too few target samples for the domain classifier: got {x_target.shape[0]}, need at least "
                         f"{min_target}")
    if x_source.shape[0] < 2:
        raise ValueError(f"too few source samples for the domain classifier: got {x_source.shape[0]}, need at least 2")
    if (y_source is None) != (y_target is None):
        raise ValueError("give labels for both domains (conditional TGDP) or for neither")
    for name, y, x in (("y_source", y_source, x_source), ("y_target", y_target, x_target)):
        if y is None:
            continue
        check_tensor(y, name)
        if y.is_floating_point() or y.dtype == torch.bool or tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"{name} must be integer labels of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")

r"""Step 2 of TGDP: training the guidance network h_ψ — three losses (seed 001, Alg. 3 and 4; chapter 8).

For (x_0, x_t) pairs, x_t = √ᾱ_t x_0 + σ_t ε, σ_t = √(1 − ᾱ_t), t ~ U{0..T−1}:

* **guidance** (source pairs, Alg. 3):  L_g = E_p ‖h_ψ(x_t, t) − r(x_0)‖²,  r = (1 − c(x_0))/c(x_0) ≈ q/p.
  Lemma (seed 001): the minimiser of a squared loss is the conditional mean, so
  h_ψ* = E_{p(x_0|x_t)}[q(x_0)/p(x_0)] = q_t/p_t (:mod:`minidiff.tgdp.guided`). It needs the squared error
  on h, not on log h (that would learn E[log r | x_t], the log of a geometric mean — biased low).
* **cycle** (target pairs, Alg. 4 line 7):  L_c = E_q ‖h_ψ(x_t, t) − r_t(x_t, t)‖²,  r_t = (1 − c')/c' ≈ q_t/p_t
  from the noisy classifier. h* = q_t/p_t is a function of x_t, so it minimises L_c too, with loss 0 for an
  exact c'. (Alg. 4 writes c'(x'_0, t); the ratio it needs is that of x'_t, which is what c' is trained on.)
* **consistency** (target pairs, Alg. 4 line 8): s_p(x_t, t) + ∇ log h_ψ should be the target score, so
  denoising score matching with λ(t) = σ_t²:
  λ ‖s_p + ∇log h_ψ − ∇ log q(x_t|x_0)‖² = ‖ε_p − σ_t ∇ log h_ψ − ε‖², since s_p = −ε_p/σ_t and
  ∇ log q(x_t | x_0) = −ε/σ_t. That is L_simple of the guided eps-model on target data: its minimiser
  over ε-functions is ε_q*, which ε_p* − σ_t ∇ log h* is.

Total (Alg. 4 line 9): L_g + η_1 L_c + η_2 L_consistency.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_real
from ..eps import EpsModel, call_eps
from ..forward import q_sample
from ..schedules import NoiseSchedule
from .guided import GuidanceFn, grad_log_h
from .ratio import Classifier, call_classifier, ratio_from_logit, split_domain

__all__ = ["consistency_loss", "cycle_loss", "guidance_loss", "tgdp_loss"]


def _h(h: GuidanceFn, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
    out = h(x_t, t) if cond is None else h(x_t, t, cond)
    if not isinstance(out, Tensor) or tuple(out.shape) != (x_t.shape[0],):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"h(x_t, t) must return one value per example, shape ({x_t.shape[0]},), got {got}")
    return out


def _sigma(schedule: NoiseSchedule, t: Tensor, x: Tensor) -> Tensor:
    """σ_t = √(1 − ᾱ_t) shaped (B, 1, ...) like x."""
    return (1 - schedule.gather(schedule.alpha_bar, t, x)).sqrt()


def guidance_loss(h: GuidanceFn, classifier: Classifier, schedule: NoiseSchedule, x0: Tensor, t: Tensor,
                  noise: Tensor, cond: Any = None, *, log_prior: float = 0.0,
                  max_ratio: float | None = None) -> tuple[Tensor, Tensor]:
    """L_g on source pairs: mean ‖h(x_t, t) − r(x_0)‖² with r = exp(log_prior − c's logit) (Alg. 3, line 4).

    x0, noise: (B, D) source data and its noise; t: (B,) steps. Returns (loss, share of clipped ratios)."""
    with torch.no_grad():                             # the classifier is trained before h and stays fixed
        r, clipped = ratio_from_logit(call_classifier(classifier, x0, None, cond), log_prior, max_ratio)
    x_t = q_sample(schedule, x0, t, noise)
    return (_h(h, x_t, t, cond) - r).pow(2).mean(), clipped.float().mean()


def cycle_loss(h: GuidanceFn, noisy_classifier: Classifier, schedule: NoiseSchedule, x0: Tensor, t: Tensor,
               noise: Tensor, cond: Any = None, *, log_prior: float = 0.0,
               max_ratio: float | None = None) -> tuple[Tensor, Tensor]:
    """L_c on target pairs: mean ‖h(x_t, t) − r_t(x_t, t)‖², r_t = exp(log_prior − c'(x_t, t)) (Alg. 4, line 7).

    Returns (loss, share of clipped ratios)."""
    x_t = q_sample(schedule, x0, t, noise)
    with torch.no_grad():
        r_t, clipped = ratio_from_logit(call_classifier(noisy_classifier, x_t, t, cond), log_prior, max_ratio)
    return (_h(h, x_t, t, cond) - r_t).pow(2).mean(), clipped.float().mean()


def consistency_loss(h: GuidanceFn, source_eps: EpsModel, schedule: NoiseSchedule, x0: Tensor, t: Tensor,
                     noise: Tensor, cond: Any = None) -> Tensor:
    """L_consistency on target pairs: mean ‖ε_p(x_t, t) − σ_t ∇log h(x_t, t) − ε‖² (Alg. 4, line 8 with
    λ(t) = σ_t²; module docstring). Differentiable in h's parameters (double backward)."""
    x_t = q_sample(schedule, x0, t, noise)
    with torch.no_grad():                             # the source model is frozen
        eps_p = call_eps(source_eps, x_t, t, cond)
    eps_q = eps_p - _sigma(schedule, t, x_t) * grad_log_h(h, x_t, t, cond, create_graph=True)
    return (eps_q - noise).pow(2).mean()


def _draw(schedule: NoiseSchedule, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """t ~ U{0..T−1} (B,) and ε ~ N(0, I) like x0, from the CPU generator, on x0's device."""
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator).to(x0.device)
    return t, torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)


def tgdp_loss(schedule: NoiseSchedule, classifier: Classifier, *, noisy_classifier: Classifier | None = None,
              source_eps: EpsModel | None = None, eta_cycle: float = 0.0, eta_consistency: float = 0.0,
              log_prior: float = 0.0, max_ratio: float | None = 100.0) -> Callable[[nn.Module, Mapping[str, Any],
                                                                                     torch.Generator], tuple]:
    r"""L_g + η_1 L_c + η_2 L_consistency as a ``loss_fn`` for :func:`minidiff.train` (Alg. 4; Alg. 3 if η = 0).

    A batch is ``{"source": x or (x, y)}`` plus ``"target"`` when η_1 or η_2 > 0
    (:func:`minidiff.train.zip_batches`). The cycle and consistency terms share one draw of (t, ε) for
    the target batch (Alg. 4, line 6). Records ``guidance``, ``cycle``, ``consistency`` (when used) and
    ``clipped``, the share of regression targets cut at ``max_ratio``.

    Args:
        classifier: c(x_0[, None, y]) -> source logits (B,), e.g. a trained :class:`DomainClassifier`.
        noisy_classifier: c'(x_t, t[, y]) for the cycle term. source_eps: the source eps-model for the
            consistency term. eta_cycle, eta_consistency: η_1, η_2 >= 0.
        log_prior, max_ratio: see :func:`~minidiff.tgdp.ratio_from_logit`.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if not callable(classifier):
        raise TypeError(f"classifier must be callable as classifier(x0) -> logits (B,), got {type(classifier).__name__}")
    eta_cycle = check_real(eta_cycle, "eta_cycle", low=0, hint=" (η_1, the weight of the cycle loss)")
    eta_consistency = check_real(eta_consistency, "eta_consistency", low=0,
                                 hint=" (η_2, the weight of the consistency loss)")
    if eta_cycle > 0 and not callable(noisy_classifier):
        raise ValueError("eta_cycle > 0 needs noisy_classifier=c'(x_t, t), a domain classifier trained on noised "
                         "samples (domain_classifier_loss(schedule))")
    if eta_consistency > 0 and not callable(source_eps):
        raise ValueError("eta_consistency > 0 needs source_eps=, the eps-model trained on the source")
    if eta_consistency > 0:
        schedule.check_model(source_eps)
    log_prior = check_real(log_prior, "log_prior")
    if max_ratio is not None:
        max_ratio = check_real(max_ratio, "max_ratio", low=0, low_open=True, hint=" (None: no clipping)")

    def loss_fn(model: nn.Module, batch: Mapping[str, Any], generator: torch.Generator) -> tuple[Tensor, dict]:
        if not isinstance(batch, Mapping) or "source" not in batch:
            raise ValueError("a TGDP batch is {'source': ...[, 'target': ...]}: use zip_batches(source=..., target=...)")
        x0, y = split_domain(batch["source"], "source")
        t, noise = _draw(schedule, x0, generator)
        loss, clipped = guidance_loss(model, classifier, schedule, x0, t, noise, y, log_prior=log_prior,
                                      max_ratio=max_ratio)
        terms: dict[str, Any] = {"guidance": loss.detach()}
        if eta_cycle > 0 or eta_consistency > 0:
            if "target" not in batch:
                raise ValueError("the cycle and consistency terms need target data: batch['target'] is missing")
            xq, yq = split_domain(batch["target"], "target")
            tq, noise_q = _draw(schedule, xq, generator)
            if eta_cycle > 0:
                cyc, clipped_q = cycle_loss(model, noisy_classifier, schedule, xq, tq, noise_q, yq,
                                            log_prior=log_prior, max_ratio=max_ratio)
                loss = loss + eta_cycle * cyc
                clipped = (clipped * x0.shape[0] + clipped_q * xq.shape[0]) / (x0.shape[0] + xq.shape[0])
                terms["cycle"] = cyc.detach()
            if eta_consistency > 0:
                con = consistency_loss(model, source_eps, schedule, xq, tq, noise_q, yq)
                loss = loss + eta_consistency * con
                terms["consistency"] = con.detach()
        terms["clipped"] = clipped
        return loss, terms

    return loss_fn

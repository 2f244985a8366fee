"""TGDP end to end, and the two baselines it is measured against (chapter 8).

TGDP on top of a trained source eps-model ε_p, in three calls:

    clf = fit_domain_classifier(x_source, x_target)                          # step 1: q/p = (1 − c)/c
    h = fit_guidance_net(schedule, clf, x_source)                            # step 2: h_ψ ≈ E_{p(x0|xt)}[q/p]
    eps_q = DensityRatioGuidance(eps_p, h, schedule)                         # sample the target

``net=`` trains a network you built instead of the default MLP (e.g. the 1-D convolutional
:class:`~minidiff.tgdp.ecg.SignalDomainClassifier` / ``SignalGuidanceNet`` for signals (m, C, L), chapter 9);
with ``x_target=``, ``noisy_classifier=`` (a ``fit_domain_classifier(..., schedule=schedule)``) and
``eta_cycle=`` / ``source_eps=`` + ``eta_consistency=`` for the regularisers of Alg. 4. The baselines
(:func:`fit_baseline`) use the source model's own architecture (rebuilt from its recorded config) and a
given step budget: ``"vanilla"`` trains it from scratch on the n target samples, ``"fine-tune"`` continues
training a copy of the source model on them.

Networks are initialised from ``seed`` inside :func:`torch.random.fork_rng`, so the global RNG is untouched.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import build_model, model_config
from ..checks import check_choice, check_int, check_real
from ..eps import EpsModel
from ..schedules import NoiseSchedule
from ..train import diffusion_loss, random_batches, train, zip_batches
from .losses import tgdp_loss
from .nets import DomainClassifier, GuidanceNet
from .ratio import Classifier, check_domains, domain_classifier_loss

__all__ = ["BASELINES", "fit_baseline", "fit_domain_classifier", "fit_guidance_net"]

BASELINES = ("vanilla", "fine-tune")


def _seeded(seed: int, build: Any) -> Any:
    """``build()`` with torch's global RNG seeded to ``seed`` and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _domain(x: Tensor, y: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
    return x if y is None else (x, y)


def _dim(x: Tensor) -> int:
    """D of points (N, D); signals (N, C, L) need a network built for them (``net=``)."""
    if x.ndim != 2:
        raise ValueError(f"the default MLP reads points (N, D), got {tuple(x.shape)}: build a network for this shape "
                         "(e.g. minidiff.tgdp.ecg.SignalDomainClassifier / SignalGuidanceNet) and pass net=")
    return x.shape[1]


def _given(net: Any) -> nn.Module:
    """A network passed as ``net=``: trained in place and returned."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module (the network to train), got {type(net).__name__}")
    return net


def _run(model: nn.Module, loss_fn: Any, data: Any, history: list | None, **kwargs: Any) -> nn.Module:
    """Train to the end; append the step records to ``history`` if given."""
    if history is not None and not isinstance(history, list):
        raise TypeError(f"history must be a list (the step records are appended to it) or None, got "
                        f"{type(history).__name__}")
    for record in train(model, loss_fn, data, **kwargs):
        if history is not None:
            history.append(record)
    return model.eval()


def fit_domain_classifier(x_source: Tensor, x_target: Tensor, *, y_source: Tensor | None = None,
                          y_target: Tensor | None = None, num_classes: int | None = None,
                          schedule: NoiseSchedule | None = None, steps: int = 1000, batch_size: int = 256,
                          lr: float = 1e-3, weight_decay: float = 1e-4, width: int = 64, depth: int = 2,
                          seed: int = 0, device: str | torch.device | None = None, progress: bool = True,
                          history: list | None = None, net: nn.Module | None = None) -> DomainClassifier:
    """Train c_ω(x_0[, y]) — or, with ``schedule``, the noisy c'_ω(x_t, t[, y]) — with the balanced logistic loss.

    x_source: (m, D), x_target: (n, D), n >= 2; labels (m,), (n,) in [0, num_classes) for the conditional
    version. Each step sees ``batch_size`` source and ``batch_size`` target rows (drawn with replacement),
    so the domains weigh equally whatever m/n is (log_prior = 0). Returns the classifier in eval mode.
    """
    check_domains(x_source, x_target, y_source, y_target)
    if y_source is not None and num_classes is None:
        raise ValueError("labelled data needs num_classes= (the labels' range [0, K))")
    seed = check_int(seed, "seed", 0)
    steps_T = None if schedule is None else schedule.T
    clf = _given(net) if net is not None else _seeded(
        seed, lambda: DomainClassifier(_dim(x_source), width, depth, steps_T, num_classes=num_classes))
    gen = torch.Generator().manual_seed(seed)
    data = zip_batches(source=random_batches(_domain(x_source, y_source), batch_size, gen),
                       target=random_batches(_domain(x_target, y_target), batch_size, gen))
    desc = "noisy domain classifier" if schedule is not None else "domain classifier"
    return _run(clf, domain_classifier_loss(schedule), data, history, steps=steps, lr=lr, weight_decay=weight_decay,
                seed=seed, device=device, progress=progress, desc=desc)


def fit_guidance_net(schedule: NoiseSchedule, classifier: Classifier, x_source: Tensor, *,
                     x_target: Tensor | None = None, y_source: Tensor | None = None, y_target: Tensor | None = None,
                     num_classes: int | None = None, source_eps: EpsModel | None = None,
                     noisy_classifier: Classifier | None = None, eta_cycle: float = 0.0, eta_consistency: float = 0.0,
                     steps: int = 2000, batch_size: int = 256, target_batch_size: int | None = None, lr: float = 1e-3,
                     width: int = 128, depth: int = 3, log_prior: float = 0.0, max_ratio: float | None = 100.0,
                     seed: int = 0, device: str | torch.device | None = None, progress: bool = True,
                     history: list | None = None, net: nn.Module | None = None) -> GuidanceNet:
    """Train h_ψ with :func:`~minidiff.tgdp.tgdp_loss` (Alg. 3; Alg. 4 with η_1 or η_2 > 0, which need ``x_target``).

    Labels (``y_source``, ``y_target``, ``num_classes``) give the conditional h_ψ(x_t, t, y). Each step sees
    ``batch_size`` source rows and ``target_batch_size`` (default ``batch_size``) target rows. Returns h_ψ
    in eval mode; the records (with the loss terms and the clipped share) go to ``history``.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    eta_cycle = check_real(eta_cycle, "eta_cycle", low=0)
    eta_consistency = check_real(eta_consistency, "eta_consistency", low=0)
    uses_target = eta_cycle > 0 or eta_consistency > 0
    if uses_target and x_target is None:
        raise ValueError("the cycle and consistency terms train on target pairs: pass x_target=")
    if x_target is None:
        check_domains(x_source, x_source, y_source, y_source)          # the source alone (Alg. 3)
    else:
        check_domains(x_source, x_target, y_source, y_target)
    loss_fn = tgdp_loss(schedule, classifier, noisy_classifier=noisy_classifier, source_eps=source_eps,
                        eta_cycle=eta_cycle, eta_consistency=eta_consistency, log_prior=log_prior, max_ratio=max_ratio)
    if y_source is not None and num_classes is None:
        raise ValueError("labelled data needs num_classes= (the labels' range [0, K))")
    seed = check_int(seed, "seed", 0)
    h = _given(net) if net is not None else _seeded(
        seed, lambda: GuidanceNet(_dim(x_source), width, depth, schedule.T, num_classes=num_classes))
    gen = torch.Generator().manual_seed(seed)
    streams = {"source": random_batches(_domain(x_source, y_source), batch_size, gen)}
    if uses_target:
        tb = batch_size if target_batch_size is None else target_batch_size
        streams["target"] = random_batches(_domain(x_target, y_target), tb, gen)
    return _run(h, loss_fn, zip_batches(**streams), history, steps=steps, lr=lr, seed=seed, device=device,
                progress=progress, desc="guidance network")


def fit_baseline(kind: str, source_model: nn.Module, schedule: NoiseSchedule, x_target: Tensor, *,
                 y_target: Tensor | None = None, steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
                 seed: int = 0, device: str | torch.device | None = None, progress: bool = True,
                 history: list | None = None) -> nn.Module:
    """A baseline eps-model for the target, trained with L_simple on the n target samples for ``steps`` steps.

    kind: ``"vanilla"`` — a fresh network of the source model's architecture (``model_config``), seeded
    by ``seed``; ``"fine-tune"`` — a copy of the source model (all parameters trainable), trained further.
    The source model itself is not changed. Returns the model in eval mode.
    """
    kind = check_choice(kind, "kind", BASELINES)
    if not isinstance(source_model, nn.Module):
        raise TypeError(f"source_model must be an nn.Module (a minidiff net), got {type(source_model).__name__}")
    check_domains(x_target, x_target, y_target, y_target, min_target=1)
    seed = check_int(seed, "seed", 0)
    if kind == "vanilla":
        model = _seeded(seed, lambda: build_model(model_config(source_model)))
    else:
        model = copy.deepcopy(source_model).requires_grad_(True)
    return _run(model, diffusion_loss(schedule), _domain(x_target, y_target), history, steps=steps,
                batch_size=batch_size, lr=lr, seed=seed, device=device, progress=progress, desc=kind)


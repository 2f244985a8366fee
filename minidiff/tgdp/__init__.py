r"""Chapter 8 — TGDP: transfer a diffusion model to a data-poor target by density-ratio guidance.

Ouyang, Xie, Zha, Cheng (NeurIPS 2024, arXiv 2405.16876; seed 001). Source p (plenty of data, a trained
eps-model ε_p), target q (n samples), the same forward process. Then (:mod:`.guided`)

.. math:: \nabla\log q_t(x_t) = \nabla\log p_t(x_t) + \nabla\log \mathbb E_{p(x_0\mid x_t)}\Big[\frac{q(x_0)}{p(x_0)}\Big],
   \qquad \varepsilon_q = \varepsilon_p - \sigma_t\,\nabla\log h,\quad \sigma_t=\sqrt{1-\bar\alpha_t},

and the expectation h* = q_t/p_t is learnt by a small guidance network h_ψ:

1. :mod:`.ratio` — a domain classifier c(x_0) gives q/p = (1 − c)/c (balanced logistic loss; mind the prior);
2. :mod:`.losses` — h_ψ regresses that ratio on source pairs (L_guidance), optionally regularised on target
   pairs by the cycle loss (the noisy classifier's q_t/p_t) and the consistency loss (denoising score
   matching of the guided model);
3. :mod:`.guided` — :class:`DensityRatioGuidance`, an eps-model wrapper (classifier guidance's sibling).

:mod:`.oracle` has the exact h* for Gaussian mixtures, :mod:`.nets` the two networks, :mod:`.recipe` the
training calls and the baselines (vanilla, fine-tune), :mod:`.metrics` the 2-D sample scores.
"""
from .ecg import SignalDomainClassifier, SignalEncoder, SignalGuidanceNet
from .guided import DensityRatioGuidance, grad_log_h, log_h_of
from .losses import consistency_loss, cycle_loss, guidance_loss, tgdp_loss
from .metrics import kde_nll, mean_density, scott_bandwidth
from .nets import DomainClassifier, GuidanceNet, log_softplus
from .oracle import MixtureDensityRatio
from .ratio import check_domains, domain_classifier_loss, ratio_from_logit
from .recipe import BASELINES, fit_baseline, fit_domain_classifier, fit_guidance_net

__all__ = [
    "BASELINES",
    "DensityRatioGuidance",
    "DomainClassifier",
    "GuidanceNet",
    "MixtureDensityRatio",
    "SignalDomainClassifier",
    "SignalEncoder",
    "SignalGuidanceNet",
    "check_domains",
    "consistency_loss",
    "cycle_loss",
    "domain_classifier_loss",
    "fit_baseline",
    "fit_domain_classifier",
    "fit_guidance_net",
    "grad_log_h",
    "guidance_loss",
    "kde_nll",
    "log_h_of",
    "log_softplus",
    "mean_density",
    "ratio_from_logit",
    "scott_bandwidth",
    "tgdp_loss",
]

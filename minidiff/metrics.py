"""Honest numbers for samples (chapters 2–4): likelihoods, MMD, and digit-classifier metrics.

* 2-D data with a known density: the average exact log-likelihood of samples under the true
  mixture (:meth:`GaussianMixture.log_prob`) and the kernel two-sample distance MMD².
* Digits: a small CNN classifier, trained once on the training split and cached, judges samples:
  how confidently they read as digits, how evenly the classes are covered, and the Fréchet
  distance between its penultimate features of samples and of held-out digits (FID in miniature,
  Heusel et al. 2017, eq. 6).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import random
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import load_or_train
from .checkpoint import record_config
from .checks import check_int, check_real, check_tensor
from .data.digits import digits
from .train import fit

__all__ = ["mmd", "frechet_distance", "MIXTURE_MMD_BANDWIDTHS", "mixture_metrics", "DigitClassifier", "digit_classifier", "digit_metrics", "classifier_accuracy",
           "precision_recall"]


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] | float | None = None) -> float:
    """Unbiased MMD² between samples x: (N, D) and y: (M, D) with a sum of RBF kernels
    (Gretton et al. 2012, eq. 3). Default bandwidths: the median pairwise distance × (0.5, 1, 2).
    0 in expectation iff the distributions are equal; can be slightly negative by chance.
    bandwidths: one or more finite numbers > 0."""
    _check_feature_pair(x, y, "x", "y", min_n=2)
    x, y = x.double(), y.double()
    z = torch.cat([x.to(y.device), y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidths is None:
        if not (d2 > 0).any():
            raise ValueError("every point of x and y is the same, so there is no median distance to set the "
                             "bandwidths from; pass bandwidths=(...) explicitly")
        med = d2[d2 > 0].median().sqrt().item()
        bandwidths = (0.5 * med, med, 2 * med)
    bandwidths = _check_bandwidths(bandwidths)
    k = sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1)) - 2 * kxy.mean())


MIXTURE_MMD_BANDWIDTHS = (0.1, 0.2, 0.4)   # RBF widths at the scale of one mode of the course's 2-D mixtures (std 0.15)


def mixture_metrics(mixture, points: Tensor, reference: Tensor,
                    bandwidths: Sequence[float] | float = MIXTURE_MMD_BANDWIDTHS, far: float = 3.0) -> dict[str, float]:
    """How well 2-D samples match a known Gaussian mixture (chapters 2–4): points, reference: (N, D).

    Returns ``loglik`` (mean exact log p of the samples under ``mixture``), ``median`` (its median: robust to
    a few stray samples), ``mmd`` (MMD² to ``reference``, fresh data, with ``bandwidths``) and ``off`` (% of
    samples farther than ``far`` component standard deviations from every component mean; the largest
    component std of an isotropic mixture is used)."""
    check_tensor(points, "points", floating=True)
    far = check_real(far, "far", 0.0, low_open=True, hint=" (in component standard deviations)")
    pts = points.double()
    std = mixture.covs.diagonal(dim1=-2, dim2=-1).sqrt().max().item()
    off = torch.cdist(pts, mixture.means.to(pts.device)).min(1).values > far * std
    logp = mixture.log_prob(pts)
    return {"loglik": logp.mean().item(), "median": logp.median().item(),
            "mmd": mmd(points, reference, bandwidths=bandwidths), "off": 100 * off.double().mean().item()}


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}) between Gaussians fitted to
    features (N, F) and (M, F), N, M >= 2 (a covariance needs two points). The trace term uses a
    symmetric eigen-decomposition (stable)."""
    _check_feature_pair(feats_a, feats_b, "feats_a", "feats_b", min_n=2)
    a, b = feats_a.double().cpu().numpy(), feats_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


@record_config
class DigitClassifier(nn.Module):
    """A small CNN for digits of any size (resized to 8×8): x: (B, 1, H, W) -> logits (B, 10).

    ``features(x)`` returns the 64-d penultimate activations used for the Fréchet distance.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 4, 64), nn.SiLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"x must be grey-scale images (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-2:] != (8, 8):
            x = F.adaptive_avg_pool2d(x, 8)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _ce_loss(model: nn.Module, batch: tuple[Tensor, Tensor], generator: torch.Generator) -> Tensor:
    x, y = batch
    # light augmentation (±1 px shifts) makes the judge less brittle to sampler artefacts
    shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
    return F.cross_entropy(model(torch.roll(x, shifts=shift, dims=(2, 3))), y)


CLASSIFIER_CONFIG = {"arch": "DigitClassifier", "width": 32, "steps": 1500, "batch": 128, "lr": 2e-3, "seed": 0, "split": "train"}


def digit_classifier(use_cache: bool = True) -> DigitClassifier:
    """The course's digit classifier (99.2 % held-out accuracy), trained once (1,500 steps, ≈ 35 s of one CPU
    core; 700 steps would reach only 98.3 %) and cached on disk. It is a *metric*: never use it for guidance.

    Deterministic (the same weights from an empty cache every time) without touching the global
    RNGs: the initialisation draws from torch's RNG inside a fork that is restored afterwards.
    """
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False, got {type(use_cache).__name__}")
    cfg = CLASSIFIER_CONFIG

    def train_fn(m: nn.Module) -> None:
        fit(m, _ce_loss, digits("train"), steps=cfg["steps"], batch_size=cfg["batch"], lr=cfg["lr"],
            seed=cfg["seed"], desc="digit classifier")

    with _global_rng_untouched():
        torch.manual_seed(cfg["seed"])        # nn.Linear/Conv2d initialise from the global RNG
        model = DigitClassifier(cfg["width"])
        model = load_or_train("digit_classifier", cfg, model, train_fn, use_cache=use_cache)
    return model.requires_grad_(False)


@contextlib.contextmanager
def _global_rng_untouched() -> Iterator[None]:
    """Run a block and then restore the global RNG states of torch (CPU), NumPy and ``random``."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` (B, 1, H, W) the classifier labels as ``labels`` (B,) integer classes."""
    check_tensor(images, "images", floating=True, min_ndim=1, nonempty=True)
    check_tensor(labels, "labels")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must hold integer classes, got dtype {labels.dtype}; use labels.long()")
    if tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"labels must have shape (B,)=({images.shape[0]},) to match images "
                         f"{tuple(images.shape)}, got {tuple(labels.shape)}")
    return float((classifier(images).argmax(1) == labels.to(images.device)).float().mean())


@torch.no_grad()
def digit_metrics(samples: Tensor, classifier: DigitClassifier, reference: Tensor) -> dict[str, float]:
    """Judge digit samples (B, 1, H, W) in [-1, 1] against held-out reference digits.

    Returns ``confidence`` (mean max class probability: do samples read as *some* digit?),
    ``class_entropy`` in nats of the average predicted class distribution (log 10 ≈ 2.30 when every
    class is equally covered), and ``frechet`` (Fréchet distance of classifier features to the
    reference set; lower is better).
    """
    for name, images in (("samples", samples), ("reference", reference)):
        check_tensor(images, name, floating=True)
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] < 2:
            raise ValueError(f"{name} must be at least 2 grey-scale images (B, 1, H, W), got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError(f"{name} contain NaN or inf; a diverged sampler? Check the samples first")
    samples = samples.clamp(-1, 1)
    probs = classifier(samples).softmax(1)
    marginal = probs.mean(0)
    entropy = float(-(marginal * marginal.clamp_min(1e-12).log()).sum())
    fd = frechet_distance(classifier.features(samples), classifier.features(reference))
    return {"confidence": float(probs.max(1).values.mean()), "class_entropy": entropy, "frechet": fd}


MAX_CLASS_ENTROPY = math.log(10)


def precision_recall(real_feats: Tensor, fake_feats: Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1–2): k-NN manifold estimates.

    Each set's manifold is the union of balls around its points, each ball's radius the distance
    to that point's k-th nearest neighbour in its own set. **precision** = share of fake samples
    inside the real manifold (fidelity); **recall** = share of real samples inside the fake
    manifold (diversity). real_feats: (N, F), fake_feats: (M, F), e.g. digit-classifier features;
    k < min(N, M). Returns ``{"precision", "recall"}`` in [0, 1].
    """
    _check_feature_pair(real_feats, fake_feats, "real_feats", "fake_feats", min_n=2)
    k = check_int(k, "k (nearest neighbour defining each ball)", 1, min(len(real_feats), len(fake_feats)) - 1)
    real, fake = real_feats.double(), fake_feats.double()

    def radii(x: Tensor) -> Tensor:
        # k-th smallest distance excluding the point itself (the 0 on the diagonal is the 1st)
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values

    def coverage(points: Tensor, centres: Tensor, r: Tensor) -> float:
        return float((torch.cdist(points, centres) <= r[None, :]).any(dim=1).double().mean())

    return {"precision": coverage(fake, real, radii(real)), "recall": coverage(real, fake, radii(fake))}


def _check_feature_pair(a: Tensor, b: Tensor, name_a: str, name_b: str, min_n: int) -> None:
    """Two finite feature sets (N, F) and (M, F) with the same F and at least ``min_n`` rows each."""
    for name, v in ((name_a, a), (name_b, b)):
        check_tensor(v, name)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features {name_a} and {name_b} must be (N, F) and (M, F) with the same F, "
                         f"got {tuple(a.shape)}, {tuple(b.shape)}")
    for name, v in ((name_a, a), (name_b, b)):
        if len(v) < min_n:
            raise ValueError(f"{name} needs at least {min_n} samples (rows), got {len(v)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} contains NaN or inf; check the samples or features that produced it")


def _check_bandwidths(bandwidths: Sequence[float] | float) -> tuple[float, ...]:
    if isinstance(bandwidths, numbers.Real) and not isinstance(bandwidths, bool):
        bandwidths = (bandwidths,)
    if isinstance(bandwidths, (str, bytes)) or not isinstance(bandwidths, Sequence) or len(bandwidths) == 0:
        raise TypeError(f"bandwidths must be a number or a non-empty sequence of numbers > 0, got {bandwidths!r}")
    return tuple(check_real(h, f"bandwidths[{i}]", 0, low_open=True) for i, h in enumerate(bandwidths))

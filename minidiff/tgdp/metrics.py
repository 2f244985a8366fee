r"""How good are samples of the target? Two numbers for 2-D experiments (chapter 8).

* :func:`mean_density` — the seed's "average likelihood": the mean of the **true** target pdf q over
  generated samples. Easy to game: samples collapsed onto q's highest mode beat true samples. Its value
  for true target samples, E_q[q(x)] = ∫ q², is printed beside it as the oracle.
* :func:`kde_nll` — the average negative log-likelihood of held-out **true** target samples under a
  Gaussian KDE fitted on the generated ones. A missing mode makes it large (nothing explains the
  test points there), so it punishes mode collapse; it is lower-bounded by the entropy of q plus the
  KDE's smoothing error, which its value for true samples shows.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_real, check_tensor
from ..data.toys import GaussianMixture

__all__ = ["kde_nll", "mean_density", "scott_bandwidth"]


def _points(x: Tensor, name: str, dim: int | None = None) -> Tensor:
    check_tensor(x, name, floating=True, nonempty=True)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{name} must have shape (N, {dim if dim is not None else 'D'}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf (a diverged sampler?); cannot score it")
    return x.double()


def mean_density(gmm: GaussianMixture, x: Tensor) -> float:
    """(1/N) Σ_i q(x_i) for samples x: (N, D) under the mixture q (its pdf, not its log)."""
    if not isinstance(gmm, GaussianMixture):
        raise TypeError(f"gmm must be a minidiff.data.GaussianMixture, got {type(gmm).__name__}")
    return float(gmm.log_prob(_points(x, "x", gmm.dim)).exp().mean())


def scott_bandwidth(samples: Tensor) -> float:
    """Scott's rule h = N^{−1/(D+4)} · (mean per-axis std) for a Gaussian KDE on samples: (N, D), N >= 2."""
    x = _points(samples, "samples")
    if x.shape[0] < 2:
        raise ValueError("a bandwidth from the data needs at least 2 samples; pass bandwidth= explicitly")
    n, d = x.shape
    return float(x.std(0).mean()) * n ** (-1.0 / (d + 4))


def kde_nll(samples: Tensor, test: Tensor, bandwidth: float | None = None) -> float:
    r"""−(1/M) Σ_j log p̂(y_j), p̂(y) = (1/N) Σ_i N(y; x_i, h² I): nats per point.

    samples: (N, D) generated points (the KDE); test: (M, D) held-out true target points.
    bandwidth: h > 0; default :func:`scott_bandwidth` of the samples (a collapsed sample set gets a small
    h and so a very large NLL for the points it misses).
    """
    x, y = _points(samples, "samples"), _points(test, "test")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples and test must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    h = scott_bandwidth(samples) if bandwidth is None else check_real(bandwidth, "bandwidth", low=0, low_open=True)
    if h <= 0:
        raise ValueError("the samples are all identical, so Scott's bandwidth is 0; pass bandwidth= explicitly")
    n, d = x.shape
    d2 = torch.cdist(y, x).pow(2)                                                        # (M, N)
    log_p = torch.logsumexp(-d2 / (2 * h * h), dim=1) - math.log(n) - 0.5 * d * math.log(2 * math.pi * h * h)
    return float(-log_p.mean())

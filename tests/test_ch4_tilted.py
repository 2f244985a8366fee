"""minidiff.exact.tilted_weights: importance weights of the tilted density p(x) p(y|x)^s (chapter 4)."""
from __future__ import annotations

import math

import pytest
import torch

from minidiff.data import GaussianMixture
from minidiff.exact import tilted_weights

GMM = GaussianMixture.isotropic([[-1.2, 0.0], [1.2, 0.0], [0.0, 1.6]], [0.55, 0.55, 0.7], [0.4, 0.35, 0.25])


def quadrature_mean(s: float, label: int = 0) -> torch.Tensor:
    """E_{π_s}[x] by a direct sum over a fine grid, π_s ∝ p(x) p(y|x)^s: no sampling at all."""
    u = torch.linspace(-6, 6, 481, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    log_pi = GMM.log_prob(grid) + s * GMM.posterior(grid)[:, label].log()
    return (torch.softmax(log_pi, 0)[:, None] * grid).sum(0)


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    return GMM.sample(200_000, torch.Generator().manual_seed(0)).double()


def test_weights_are_normalised_powers_of_the_posterior(pool):
    x = pool[:500]
    w = tilted_weights(GMM, x, 1, 2.5)
    assert w.dtype == torch.float64 and w.shape == (500,)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    direct = GMM.posterior(x)[:, 1] ** 2.5
    torch.testing.assert_close(w, direct / direct.sum(), rtol=1e-10, atol=1e-14)


def test_scale_zero_is_uniform_and_scale_one_is_the_class(pool):
    torch.testing.assert_close(tilted_weights(GMM, pool[:10], 2, 0.0), torch.full((10,), 0.1, dtype=torch.float64))
    # s = 1: π_1 = p(x) p(y|x) / p(y) = p(x | y), the component itself: its mean is μ_y
    mean = (tilted_weights(GMM, pool, 0, 1.0)[:, None] * pool).sum(0)
    torch.testing.assert_close(mean, GMM.means[0], atol=0.01, rtol=0)


@pytest.mark.parametrize("s", [2.0, 4.0, 10.0])
def test_weighted_mean_matches_quadrature(pool, s):
    mean = (tilted_weights(GMM, pool, 0, s)[:, None] * pool).sum(0)
    torch.testing.assert_close(mean, quadrature_mean(s), atol=0.01, rtol=0)


def test_large_scale_is_stable(pool):
    w = tilted_weights(GMM, pool[:1000], 0, 1e4)     # p(y|x)^s underflows in linear space; log space does not
    assert torch.isfinite(w).all() and math.isclose(float(w.sum()), 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"label": 3}, ValueError, "label"),
    ({"label": -1}, ValueError, "label"),
    ({"label": 0.5}, TypeError, "label"),
    ({"scale": -1.0}, ValueError, "scale"),
    ({"scale": float("nan")}, ValueError, "scale"),
    ({"scale": True}, TypeError, "scale"),
    ({"x": torch.zeros(4, 3)}, ValueError, r"\(B, 2\)"),
    ({"x": torch.zeros(0, 2)}, ValueError, "at least one"),
    ({"gmm": "not a mixture"}, ValueError, "GaussianMixture"),
])
def test_bad_input(kwargs, err, match):
    args = {"gmm": GMM, "x": torch.zeros(4, 2), "label": 0, "scale": 2.0, **kwargs}
    with pytest.raises(err, match=match):
        tilted_weights(**args)

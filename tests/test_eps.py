"""The eps-model contract and the one home of the ε ↔ x̂_0 ↔ score conversions."""
import pytest
import torch

from minidiff import call_eps, eps_to_score, eps_to_x0, score_to_eps, x0_to_eps
from minidiff.data import GaussianMixture


def test_x0_eps_roundtrip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    ab = torch.rand(5, 1, generator=g) * 0.98 + 0.01
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    assert torch.allclose(eps_to_x0(x_t, eps, ab), x0, atol=1e-5)
    assert torch.allclose(x0_to_eps(x_t, x0, ab), eps, atol=1e-4)


def test_score_conversion_is_tweedie_for_gaussian_data():
    # x_0 ~ N(0, 1): p_t = N(0, 1) for every ᾱ (variance-preserving), so the score is −x and
    # the optimal ε is √(1−ᾱ)·x.
    ab = 0.3
    x = torch.linspace(-2, 2, 9)[:, None]
    eps_star = (1 - ab) ** 0.5 * x
    assert torch.allclose(eps_to_score(eps_star, (1 - ab) ** 0.5), -x)
    assert torch.allclose(score_to_eps(-x, (1 - ab) ** 0.5), eps_star)
    gmm = GaussianMixture.isotropic([[0.0]], 1.0)
    assert torch.allclose(gmm.score(x, ab), -x, atol=1e-6)


def test_call_eps_passes_cond_only_when_given_and_checks_shape():
    calls = []
    eps = call_eps(lambda x, t: calls.append("uncond") or torch.zeros_like(x), torch.ones(2, 3), torch.zeros(2))
    assert calls == ["uncond"] and eps.shape == (2, 3)
    call_eps(lambda x, t, c: calls.append(c) or x, torch.ones(2, 3), torch.zeros(2), cond="y")
    assert calls[-1] == "y"
    with pytest.raises(ValueError, match="shaped like x_t"):
        call_eps(lambda x, t: x[:, :2], torch.ones(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="shaped like x_t"):
        call_eps(lambda x, t: None, torch.ones(2, 3), torch.zeros(2))

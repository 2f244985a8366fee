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


NAN, INF = float("nan"), float("inf")


def test_conversions_reject_alpha_bar_outside_their_range():
    x, e = torch.zeros(2, 3), torch.zeros(2, 3)
    for ab in (0.0, -0.1, 1.5, NAN, INF, torch.tensor([[0.5], [0.0]])):
        with pytest.raises(ValueError, match=r"alpha_bar must be finite and in \(0, 1\]"):
            eps_to_x0(x, e, ab)
    for ab in (1.0, -0.1, 1.5, NAN, torch.tensor([[0.5], [1.0]])):
        with pytest.raises(ValueError, match=r"alpha_bar must be finite and in \[0, 1\)"):
            x0_to_eps(x, e, ab)
    assert torch.equal(eps_to_x0(x + 2, e + 5, 1.0), x + 2)           # ᾱ = 1: no noise, x̂_0 = x_t
    assert torch.equal(x0_to_eps(x + 2, e + 5, 0.0), x + 2)           # ᾱ = 0: pure noise, ε = x_t
    with pytest.raises(TypeError, match="bool"):
        eps_to_x0(x, e, True)


def test_conversions_reject_shapes_that_would_broadcast_wrongly():
    """(B,) against (B, D) would broadcast along the data axis when B == D: a silent mix-up."""
    x, e = torch.zeros(3, 3), torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"alpha_bar must be a number or shaped .* \(B, 1\)"):
        eps_to_x0(x, e, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="std must be a number or shaped"):
        eps_to_score(e, torch.ones(3))
    with pytest.raises(ValueError, match="eps must have the shape of x_t"):
        eps_to_x0(x, torch.zeros(3, 1), 0.5)
    with pytest.raises(ValueError, match="x0 must have the shape of x_t"):
        x0_to_eps(x, torch.zeros(1, 3), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        eps_to_x0(torch.zeros(3, 3, dtype=torch.long), e, 0.5)
    assert eps_to_x0(x, e, torch.full((3, 1), 0.5)).shape == (3, 3)


def test_score_conversions_reject_non_positive_std():
    e = torch.ones(2, 2)
    for std in (0.0, -1.0, NAN, INF, torch.tensor([[1.0], [0.0]])):
        with pytest.raises(ValueError, match=r"std must be finite and in \(0, inf\)"):
            eps_to_score(e, std)
        with pytest.raises(ValueError, match=r"std must be finite and in \(0, inf\)"):
            score_to_eps(e, std)


def test_call_eps_rejects_a_non_callable():
    with pytest.raises(TypeError, match="eps_model must be callable"):
        call_eps(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2))

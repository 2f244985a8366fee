"""Offline data: seeded toys, exact Gaussian-mixture densities and scores, digits."""
import math

import pytest
import torch

from minidiff import NoiseSchedule
from minidiff.data import DIGITS_BIN_WIDTH, GaussianMixture, digits, toy_data


@pytest.mark.parametrize("name", ["moons", "rings", "swiss_roll", "gmm_ring"])
def test_toys_are_seeded_and_shaped(name):
    a = toy_data(name, 500, torch.Generator().manual_seed(1))
    b = toy_data(name, 500, torch.Generator().manual_seed(1))
    assert a.shape == (500, 2) and torch.equal(a, b)
    assert 0.3 < a.std().item() < 3.0


def test_toy_errors():
    with pytest.raises((TypeError, ValueError), match="unknown toy"):
        toy_data("spiral", 10)
    with pytest.raises((TypeError, ValueError), match="an int >= 1"):
        toy_data("moons", 0)


def test_gmm_log_prob_matches_sklearn_style_reference(generator):
    gmm = GaussianMixture(means=[[0.0, 0.0], [3.0, 1.0]], covs=[[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 2.0]]], weights=[0.3, 0.7])
    x = torch.randn(10, 2, generator=generator)
    ref = torch.logsumexp(torch.stack([
        math.log(w) + torch.distributions.MultivariateNormal(torch.tensor(m), torch.tensor(c)).log_prob(x)
        for w, m, c in [(0.3, [0.0, 0.0], [[1.0, 0.3], [0.3, 0.5]]), (0.7, [3.0, 1.0], [[0.2, 0.0], [0.0, 2.0]])]]), 0)
    assert torch.allclose(gmm.log_prob(x).float(), ref, atol=1e-5)
    assert torch.allclose(gmm.posterior(x).sum(1), torch.ones(10, dtype=torch.float64))


def test_gmm_samples_have_the_right_moments(generator):
    gmm = GaussianMixture.isotropic([[-2.0, 0.0], [2.0, 1.0]], std=[0.5, 1.0], weights=[0.25, 0.75])
    x, labels = gmm.sample(40_000, generator, return_labels=True)
    assert (labels == 1).float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert x[labels == 0].std(0).mean().item() == pytest.approx(0.5, abs=0.02)
    assert x.mean(0).tolist() == pytest.approx([1.0, 0.75], abs=0.03)


def test_noised_mixture_matches_simulation(generator):
    """p_t of a mixture is the mixture with m_k = √ᾱ μ_k, C_k = ᾱ Σ_k + (1−ᾱ) I."""
    gmm = GaussianMixture.ring(k=4, radius=2.0, std=0.1)
    ab = 0.4
    x0 = gmm.sample(50_000, generator).double()
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    # the average log-density of simulated x_t under the analytic p_t ≈ its negative entropy,
    # and is higher than under a wrong ᾱ
    right = gmm.noised_log_prob(xt, ab).mean()
    assert right > gmm.noised_log_prob(xt, 0.6).mean() and right > gmm.noised_log_prob(xt, 0.25).mean()


def test_score_matches_autograd(generator):
    gmm = GaussianMixture.ring()
    x = (2 * torch.randn(16, 2, generator=generator, dtype=torch.float64)).requires_grad_(True)
    ab = torch.rand(16, generator=generator, dtype=torch.float64)
    grad, = torch.autograd.grad(gmm.noised_log_prob(x, ab).sum(), x)
    assert torch.allclose(gmm.score(x.detach(), ab), grad, atol=1e-8)


def test_optimal_eps_model_is_tweedie(generator):
    s = NoiseSchedule.linear(1000)
    gmm = GaussianMixture.ring()
    eps_model = gmm.optimal_eps_model(s)
    x, t = torch.randn(8, 2, generator=generator), torch.randint(0, 1000, (8,), generator=generator)
    ab = s.alpha_bar[t]
    expected = -(1 - ab).sqrt()[:, None] * gmm.score(x, ab)
    assert torch.allclose(eps_model(x, t), expected.float(), atol=1e-6)
    with pytest.raises((TypeError, ValueError), match="unconditional"):
        eps_model(x, t, cond=torch.zeros(8))


def test_gmm_validation():
    with pytest.raises((TypeError, ValueError), match="sum to 1"):
        GaussianMixture.isotropic([[0.0], [1.0]], 1.0, weights=[0.5, 0.6])
    with pytest.raises((TypeError, ValueError), match="covs"):
        GaussianMixture(torch.zeros(2, 2), torch.eye(2)[None], torch.tensor([0.5, 0.5]))
    with pytest.raises((TypeError, ValueError), match=r"\(B, 2\)"):
        GaussianMixture.ring().log_prob(torch.zeros(3, 3))


def test_digits_offline_split_and_range():
    x_train, y_train = digits("train")
    x_test, y_test = digits("test")
    x_all, _ = digits("all")
    assert x_train.shape[1:] == (1, 8, 8) and len(x_train) + len(x_test) == len(x_all) == 1797
    assert x_all.min() == -1 and x_all.max() == 1
    levels = torch.unique(x_all)
    assert len(levels) == 17 and torch.allclose(levels.diff(), torch.full((16,), DIGITS_BIN_WIDTH))
    assert set(y_test.tolist()) == set(range(10))
    assert torch.equal(digits("test")[0], x_test)  # the same split every time
    up, _ = digits("test", size=16)
    assert up.shape[1:] == (1, 16, 16) and up.min() >= -1 and up.max() <= 1


def test_digits_errors():
    with pytest.raises((TypeError, ValueError), match="split"):
        digits("validation")
    with pytest.raises((TypeError, ValueError), match="size"):
        digits(size=4)


# ------------------------------------------------------------------------------ the one mixture reference
def test_class_posterior_and_class_score_closed_forms(generator):
    gmm = GaussianMixture(means=[[0.0, 0.0], [3.0, 1.0]], covs=[[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 2.0]]],
                          weights=[0.3, 0.7])
    x = (2 * torch.randn(16, 2, generator=generator, dtype=torch.float64)).requires_grad_(True)
    ab = torch.rand(16, generator=generator, dtype=torch.float64)
    post = gmm.class_log_posterior(x, ab)
    torch.testing.assert_close(post.exp().sum(1), torch.ones(16, dtype=torch.float64))
    # Bayes by hand: log w_k + log N(x; √ᾱ μ_k, ᾱ Σ_k + (1 − ᾱ) I) − log p_t(x)
    means, covs = gmm.noised(ab)
    joint = torch.stack([torch.distributions.MultivariateNormal(means[:, k], covs[:, k]).log_prob(x)
                         + math.log(gmm.weights[k]) for k in range(2)], 1)
    torch.testing.assert_close(post, joint - gmm.noised_log_prob(x, ab)[:, None], rtol=1e-10, atol=1e-10)
    # class score = autograd of the component's log-density; the mixture score = Σ_k p(k|x) class score
    labels = torch.tensor([0, 1] * 8)
    grad, = torch.autograd.grad(joint[torch.arange(16), labels].sum(), x)
    torch.testing.assert_close(gmm.class_score(x.detach(), ab, labels), grad, rtol=1e-9, atol=1e-9)
    mixed = sum(post.exp()[:, k:k + 1] * gmm.class_score(x.detach(), ab, torch.full((16,), k)) for k in range(2))
    torch.testing.assert_close(gmm.score(x.detach(), ab), mixed.detach(), rtol=1e-9, atol=1e-9)
    # marginal(m, s) is the law of m x0 + s z; at m = √ᾱ, s = √(1−ᾱ) it is noised(ᾱ)
    p = gmm.marginal(0.6, 0.8)
    m, c = gmm.noised(torch.tensor([0.36], dtype=torch.float64))
    torch.testing.assert_close(p.means, m[0])
    torch.testing.assert_close(p.covs, c[0])
    with pytest.raises((TypeError, ValueError), match=r"labels must be in \[0, 2\)"):
        gmm.class_score(x.detach(), ab, torch.full((16,), 2))
    with pytest.raises((TypeError, ValueError), match="labels must be integer class labels, got dtype torch.float32"):
        gmm.class_score(x.detach(), ab, torch.zeros(16))
    with pytest.raises((TypeError, ValueError), match=r"alpha_bar must be in \[0, 1\]"):
        gmm.score(x.detach(), torch.full((16,), 1.5))
    with pytest.raises((TypeError, ValueError), match=r"alpha_bar must be in \[0, 1\]"):
        gmm.noised_log_prob(x.detach(), float("nan"))
    with pytest.raises((TypeError, ValueError), match=r"alpha_bar must be a scalar or have shape \(B,\)=\(16,\)"):
        gmm.score(x.detach(), torch.full((3,), 0.5))
    with pytest.raises((TypeError, ValueError), match="point mass"):
        gmm.marginal(0.0, 0.0)
    with pytest.raises((TypeError, ValueError), match="s must be >= 0"):
        gmm.marginal(1.0, -0.1)


def test_gmm_rejects_bad_parameters():
    eye = torch.eye(2)[None].repeat(2, 1, 1)
    with pytest.raises((TypeError, ValueError), match="means must be finite"):
        GaussianMixture([[0.0, float("nan")], [1.0, 1.0]], eye, [0.5, 0.5])
    with pytest.raises((TypeError, ValueError), match="covs must be finite"):
        GaussianMixture(torch.zeros(2, 2), eye * float("inf"), [0.5, 0.5])
    with pytest.raises((TypeError, ValueError), match="weights must hold real numbers, got a bool"):
        GaussianMixture(torch.zeros(1, 2), eye[:1], torch.tensor([True]))
    with pytest.raises((TypeError, ValueError), match="non-negative and sum to 1"):
        GaussianMixture(torch.zeros(2, 2), eye, [1.5, -0.5])
    with pytest.raises((TypeError, ValueError), match=r"covs\[1\] is not positive definite"):
        GaussianMixture(torch.zeros(2, 2), torch.stack([torch.eye(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]])]), [0.5, 0.5])
    with pytest.raises((TypeError, ValueError), match="covs must be symmetric"):
        GaussianMixture(torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]), [1.0])
    with pytest.raises((TypeError, ValueError), match=r"means must have shape \(K, D\)"):
        GaussianMixture(torch.zeros(2), eye, [0.5, 0.5])
    with pytest.raises((TypeError, ValueError), match="means must be a tensor or nested list"):
        GaussianMixture("means", eye, [0.5, 0.5])
    for std in (0.0, -1.0, float("nan")):
        with pytest.raises((TypeError, ValueError), match="std"):
            GaussianMixture.isotropic([[0.0], [1.0]], std)
    with pytest.raises((TypeError, ValueError), match=r"std must be a number or one per component \(2,\)"):
        GaussianMixture.isotropic([[0.0], [1.0]], [1.0, 1.0, 1.0])
    for k in (0, 2.5, True):
        with pytest.raises((TypeError, ValueError), match="k must be an int >= 1"):
            GaussianMixture.ring(k=k)
    for radius in (0.0, float("inf")):
        with pytest.raises((TypeError, ValueError), match="radius"):
            GaussianMixture.ring(radius=radius)
    with pytest.raises((TypeError, ValueError), match="std must be > 0"):
        GaussianMixture.ring(std=0.0)
    for n in (0, 2.0, True):
        with pytest.raises((TypeError, ValueError), match="n must be an int >= 1"):
            GaussianMixture.ring().sample(n)
    with pytest.raises((TypeError, ValueError), match=r"x must have shape \(B, 2\)"):
        GaussianMixture.ring().score(torch.zeros(3), 0.5)
    with pytest.raises((TypeError, ValueError), match="schedule must be a NoiseSchedule"):
        GaussianMixture.ring().optimal_eps_model("linear")


def test_toy_data_rejects_bad_arguments():
    for fn in ("moons", "rings", "swiss_roll"):
        with pytest.raises((TypeError, ValueError), match="n must be an int >= 1"):
            toy_data(fn, 0)
    from minidiff.data.toys import rings, swiss_roll, two_moons
    for fn in (two_moons, rings, swiss_roll):
        for noise in (-0.1, float("nan"), True):
            with pytest.raises((TypeError, ValueError), match="noise"):
                fn(10, noise=noise)
    with pytest.raises((TypeError, ValueError), match="radii must be a non-empty sequence of positive radii"):
        rings(10, radii=(1.0, -1.0))
    with pytest.raises((TypeError, ValueError), match="unknown toy data set"):
        toy_data(["moons"], 10)

"""minidiff.analytic: the exact optimal DDPM for Gaussian data (chapter 1).

The closed forms are checked against independent routes: the Gaussian-mixture optimal eps-model
(score + Tweedie), minidiff.forward's model_mean / model_variance, Monte-Carlo runs of the DDPM
sampler, minidiff's Monte-Carlo elbo_terms, and the raw path log-ratio the ELBO decomposes.
"""

from __future__ import annotations

import math

import pytest
import torch

from minidiff import NoiseSchedule, elbo_terms, gaussian_log_likelihood, model_mean, model_variance, q_step
from minidiff.analytic import (ANALYTIC_VARIANCE_KINDS, gaussian_data_optimal_eps, gaussian_elbo_terms,
                               gaussian_model_nll, gaussian_noised_marginal, reverse_marginal_gaussian,
                               reverse_step_coefficients)
from minidiff.data import GaussianMixture
from minidiff.samplers import ddpm_loop

MEAN, VAR = 1.0, 0.25


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear(1000)


@pytest.fixture(scope="module")
def short():
    """100 steps with the linear schedule's β range scaled up, so ᾱ_T is still tiny."""
    return NoiseSchedule.linear(100, 1e-3, 0.2)


def assert_within(estimate, truth, std_err, k=4.0):
    z = ((torch.as_tensor(estimate) - torch.as_tensor(truth)) / torch.as_tensor(std_err)).abs().max().item()
    assert z < k, f"Monte-Carlo estimate {z:.1f} standard errors from the closed form"


# ---------------------------------------------------------------------------- optimal ε


def test_optimal_eps_matches_one_component_mixture(schedule, generator):
    eps = gaussian_data_optimal_eps(schedule, MEAN, VAR)
    reference = GaussianMixture.isotropic([[MEAN]], math.sqrt(VAR)).optimal_eps_model(schedule)
    x = 3 * torch.randn(400, 1, generator=generator, dtype=torch.float64)
    t = torch.randint(0, schedule.T, (400,), generator=generator)
    torch.testing.assert_close(eps(x, t), reference(x, t), rtol=1e-10, atol=1e-12)


def test_optimal_eps_diagonal_2d_matches_mixture(schedule, generator):
    mean, var = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 2.0])
    eps = gaussian_data_optimal_eps(schedule, mean, var)
    reference = GaussianMixture(mean[None], torch.diag(var)[None], torch.ones(1)).optimal_eps_model(schedule)
    x = 2 * torch.randn(300, 2, generator=generator, dtype=torch.float64)
    t = torch.randint(0, schedule.T, (300,), generator=generator)
    torch.testing.assert_close(eps(x, t), reference(x, t), rtol=1e-10, atol=1e-12)


def test_optimal_eps_is_conditional_mean_of_noise(schedule, generator):
    """Least squares of ε on x_t (the minimiser of L_simple at one t) recovers ε*'s line."""
    eps_model = gaussian_data_optimal_eps(schedule, MEAN, VAR)
    n = 100_000
    for t in (0, 300, 999):
        x0 = MEAN + math.sqrt(VAR) * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, 1, generator=generator, dtype=torch.float64)
        ab = schedule.alpha_bar[t]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        X = torch.cat([x_t, torch.ones_like(x_t)], 1)
        w = torch.linalg.lstsq(X, eps).solution[:, 0]
        se = ((eps[:, 0] - X @ w).pow(2).mean() * torch.linalg.inv(X.T @ X).diagonal()).sqrt()
        assert_within(w, torch.stack([eps_model.slope[t], eps_model.intercept[t]]), se)


def test_optimal_eps_keeps_contract_and_broadcasts(schedule):
    eps = gaussian_data_optimal_eps(schedule, 0.2, 0.5)           # scalar data: any per-example shape
    assert eps.num_timesteps == schedule.T
    for shape in ((4, 3), (4, 1, 8, 8)):
        x = torch.randn(shape)                                     # float32 in, float32 out
        out = eps(x, torch.tensor([0, 10, 500, 999]))
        assert out.shape == x.shape and out.dtype == torch.float32
        ab = schedule.alpha_bar[500]
        expected = (1 - ab).sqrt() * (x[2].double() - ab.sqrt() * 0.2) / (ab * 0.5 + 1 - ab)
        torch.testing.assert_close(out[2], expected.float())
    per_pixel = gaussian_data_optimal_eps(schedule, torch.zeros(1, 8, 8), torch.ones(1, 8, 8))
    assert per_pixel(torch.randn(2, 1, 8, 8), torch.tensor([3, 4])).shape == (2, 1, 8, 8)


def test_noised_marginal(schedule):
    means, variances = gaussian_noised_marginal(schedule, MEAN, VAR)
    torch.testing.assert_close(means, schedule.alpha_bar.sqrt() * MEAN)
    torch.testing.assert_close(variances, schedule.alpha_bar * VAR + 1 - schedule.alpha_bar)


# ---------------------------------------------------------------------------- reverse steps


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_reverse_coefficients_match_model_mean_and_variance(schedule, variance):
    c, d, sigma2 = reverse_step_coefficients(schedule, MEAN, VAR, variance)
    eps = gaussian_data_optimal_eps(schedule, MEAN, VAR)
    t = torch.arange(schedule.T)
    for value in (0.0, 1.0, -2.5):
        x = torch.full((schedule.T, 1), value, dtype=torch.float64)
        torch.testing.assert_close(model_mean(schedule, x, t, eps(x, t))[:, 0], c * value + d)
    torch.testing.assert_close(sigma2, model_variance(schedule, t, torch.zeros(schedule.T, 1), variance)[:, 0].double())


def test_exact_variance_is_true_reverse_variance_between_the_fixed_ones(schedule, generator):
    _, _, exact = reverse_step_coefficients(schedule, MEAN, VAR, "exact")
    k = slice(1, None)
    assert (exact[k] >= schedule.posterior_variance[k]).all() and (exact[k] <= schedule.betas[k]).all()
    # Var(x_{t-1} | x_t) by regression on forward samples at one step
    n, t = 200_000, 5
    x0 = MEAN + math.sqrt(VAR) * torch.randn(n, 1, generator=generator, dtype=torch.float64)
    ab_prev = schedule.alpha_bar[t - 1]
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * torch.randn(n, 1, generator=generator, dtype=torch.float64)
    x_t = q_step(schedule, x_prev, t, generator=generator)
    c, d, _ = reverse_step_coefficients(schedule, MEAN, VAR, "exact")
    X = torch.cat([x_t, torch.ones_like(x_t)], 1)
    w = torch.linalg.lstsq(X, x_prev).solution[:, 0]
    res_var = (x_prev[:, 0] - X @ w).pow(2).mean()
    se = (res_var * torch.linalg.inv(X.T @ X).diagonal()).sqrt()
    assert_within(w, torch.stack([c[t], d[t]]), se)
    assert_within(res_var, exact[t], exact[t] * math.sqrt(2 / n))


# ---------------------------------------------------------------------------- model marginal


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_reverse_marginal_matches_ddpm_loop(short, variance):
    """ddpm_loop returns the decoder *mean* at the last step: compare with decoder_noise=False."""
    eps = gaussian_data_optimal_eps(short, MEAN, VAR)
    n = 40_000
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(n, 1, generator=g, dtype=torch.float64)
    for state in ddpm_loop(eps, short, x_T, generator=g, variance=variance, progress=False):
        x = state["x"]
    M, V = reverse_marginal_gaussian(short, MEAN, VAR, variance, decoder_noise=False)
    assert_within(x.mean(), M, (V / n).sqrt())
    assert_within(x.var(), V, V * math.sqrt(2 / (n - 1)))
    # with the decoder's noise added, the variance grows by exactly σ² of index 0
    M_full, V_full = reverse_marginal_gaussian(short, MEAN, VAR, variance)
    torch.testing.assert_close(M_full, M)
    torch.testing.assert_close(V_full - V, model_variance(short, 0, torch.zeros(1, 1), variance)[0, 0].double())


def test_reverse_marginal_path_and_exact_variance(schedule):
    M, V = reverse_marginal_gaussian(schedule, MEAN, VAR, "exact", return_path=True)
    assert M.shape == V.shape == (schedule.T + 1,)
    assert M[-1] == 0 and V[-1] == 1
    # with the true reverse variance the model's marginals are the forward ones (up to the prior mismatch)
    means, variances = gaussian_noised_marginal(schedule, MEAN, VAR)
    torch.testing.assert_close(M[1:], means, atol=1e-2, rtol=0)
    torch.testing.assert_close(V[:-1], torch.cat([torch.tensor([VAR], dtype=torch.float64), variances[:-1]]),
                               atol=1e-4, rtol=0)
    # standard normal data is stationary under the forward process: the model is exactly N(0, 1)
    M0, V0 = reverse_marginal_gaussian(schedule, 0.0, 1.0, "exact")
    assert abs(M0.item()) < 1e-12 and abs(V0.item() - 1.0) < 1e-12


def test_reverse_marginal_per_coordinate(schedule):
    mean, var = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.1])
    M, V = reverse_marginal_gaussian(schedule, mean, var, "fixed_large")
    for i in range(2):
        Mi, Vi = reverse_marginal_gaussian(schedule, float(mean[i]), float(var[i]), "fixed_large")
        torch.testing.assert_close((M[i], V[i]), (Mi, Vi))


def test_model_nll_is_gaussian_log_density(schedule, generator):
    mean, var = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 2.0])
    x0 = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    M, V = reverse_marginal_gaussian(schedule, mean, var)
    torch.testing.assert_close(gaussian_model_nll(schedule, mean, var, x0), -gaussian_log_likelihood(x0, M, V).sum(1))


# ---------------------------------------------------------------------------- ELBO


@pytest.mark.parametrize("variance", ANALYTIC_VARIANCE_KINDS)
def test_elbo_bounds_exact_nll_at_every_point(schedule, variance, generator):
    x0 = MEAN + 2 * torch.randn(300, 1, generator=generator, dtype=torch.float64)
    elbo = gaussian_elbo_terms(schedule, MEAN, VAR, x0, variance)["total"]
    nll = gaussian_model_nll(schedule, MEAN, VAR, x0, variance)
    gap = elbo - nll
    assert (gap >= 0).all()
    if variance == "exact":                 # reverse steps = q(x_{t-1} | x_t): only the prior mismatch is left
        assert gap.max() < 1e-3
    else:
        assert gap.min() > 0.05


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_exact_terms_match_monte_carlo_elbo_terms(short, variance):
    eps = gaussian_data_optimal_eps(short, MEAN, VAR)
    g = torch.Generator().manual_seed(2)
    x0 = (MEAN + math.sqrt(VAR) * torch.randn(2_000, 1, generator=g, dtype=torch.float64))
    exact = gaussian_elbo_terms(short, MEAN, VAR, x0, variance)
    mc = elbo_terms(eps, short, x0, decoder="gaussian", variance=variance, generator=g, chunk=short.T)
    assert {k: v.shape for k, v in exact.items()} == {k: v.shape for k, v in mc.items()}
    torch.testing.assert_close(exact["prior"], mc["prior"])           # no randomness in L_T
    for key in ("total", "decoder"):
        diff = mc[key] - exact[key]
        assert_within(diff.mean(), 0.0, diff.std() / math.sqrt(len(diff)))
    diff = (mc["diffusion"] - exact["diffusion"]).mean(0)              # every step separately
    se = (mc["diffusion"] - exact["diffusion"]).std(0) / math.sqrt(len(x0))
    assert_within(diff, torch.zeros_like(diff), se, k=5.0)


def test_exact_elbo_equals_raw_path_log_ratio(generator):
    """The decomposition L_T + Σ L_{t-1} + L_0 = E_q log q(x_{1:T}|x_0)/p_θ(x_{0:T}), on a short chain."""
    s = NoiseSchedule.cosine(8)
    eps = gaussian_data_optimal_eps(s, MEAN, VAR)
    n = 100_000
    x0 = torch.tensor([[0.3]], dtype=torch.float64)
    x = x0.expand(n, 1)
    log_ratio = torch.zeros(n, dtype=torch.float64)
    for t in range(s.T):
        x_next = q_step(s, x, t, generator=generator)
        log_ratio += gaussian_log_likelihood(x_next, s.alphas[t].sqrt() * x, s.betas[t])[:, 0]
        tt = torch.full((n,), t)
        mean = model_mean(s, x_next, tt, eps(x_next, tt))
        log_ratio -= gaussian_log_likelihood(x, mean, model_variance(s, tt, x_next))[:, 0]
        x = x_next
    log_ratio -= gaussian_log_likelihood(x, torch.zeros(()), torch.ones(()))[:, 0]
    exact = gaussian_elbo_terms(s, MEAN, VAR, x0)["total"]
    assert_within(log_ratio.mean(), exact[0], log_ratio.std() / math.sqrt(n))


def test_elbo_terms_shapes_and_event_sum(schedule):
    mean, var = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 2.0])
    x0 = torch.randn(7, 2, dtype=torch.float64)
    both = gaussian_elbo_terms(schedule, mean, var, x0)
    assert both["diffusion"].shape == (7, schedule.T - 1) and both["total"].shape == (7,)
    first = gaussian_elbo_terms(schedule, mean[:1], var[:1], x0[:, :1])
    second = gaussian_elbo_terms(schedule, mean[1:], var[1:], x0[:, 1:])
    for key in both:
        torch.testing.assert_close(both[key], first[key] + second[key])
    # a scalar mean/var broadcasts over images
    img = gaussian_elbo_terms(schedule, 0.0, 1.0, torch.zeros(3, 1, 4, 4))
    assert img["total"].shape == (3,)


# ---------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"var": 0.0}, "var is the data variance"),
        ({"var": -1.0}, "var is the data variance"),
        ({"var": [1.0, -0.5]}, "var is the data variance"),
        ({"var": float("nan")}, "var is the data variance"),
        ({"mean": float("inf")}, "mean must be finite"),
        ({"mean": [0.0, 1.0, 2.0], "var": [1.0, 2.0]}, "must broadcast"),
        ({"schedule": "linear"}, "NoiseSchedule"),
    ],
    ids=["var-zero", "var-negative", "var-one-negative", "var-nan", "mean-inf", "shapes", "schedule"],
)
def test_bad_data_raise(schedule, kwargs, message):
    args = {"schedule": schedule, "mean": 0.0, "var": 1.0} | kwargs
    for fn in (gaussian_data_optimal_eps, reverse_step_coefficients, reverse_marginal_gaussian,
               gaussian_noised_marginal):
        with pytest.raises(ValueError, match=message):
            fn(args["schedule"], args["mean"], args["var"])


def test_bad_variance_kind_raises(schedule):
    with pytest.raises(ValueError, match="variance must be one of"):
        reverse_marginal_gaussian(schedule, 0.0, 1.0, "learned")
    with pytest.raises(ValueError, match="variance must be one of"):
        gaussian_elbo_terms(schedule, 0.0, 1.0, torch.zeros(2, 1), variance="small")


def test_bad_x_raises(schedule):
    eps = gaussian_data_optimal_eps(schedule, torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="does not match"):
        eps(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="batched"):
        eps(torch.zeros(()), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        eps(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), cond=torch.zeros(4))
    with pytest.raises(ValueError, match=r"t must be in \[0, T\)"):
        eps(torch.zeros(4, 2), torch.full((4,), schedule.T))
    with pytest.raises(ValueError, match="does not match"):
        gaussian_model_nll(schedule, torch.zeros(2), torch.ones(2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="does not match"):
        gaussian_elbo_terms(schedule, torch.zeros(2), torch.ones(2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="must be a tensor"):
        gaussian_model_nll(schedule, 0.0, 1.0, [[0.0]])


def test_bool_and_non_numeric_data_raise(schedule):
    with pytest.raises(ValueError, match="mean must hold real numbers, got a bool"):
        gaussian_data_optimal_eps(schedule, True, 1.0)
    with pytest.raises(ValueError, match="var must hold real numbers, got a bool"):
        gaussian_data_optimal_eps(schedule, 0.0, torch.tensor([True]))
    with pytest.raises(ValueError, match="mean and var must be numbers or tensors"):
        gaussian_data_optimal_eps(schedule, "zero", 1.0)

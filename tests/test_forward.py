"""Chapter 1 formulas, each checked numerically (DDPM eqs. 2, 4, 5–7, 11–14)."""
import math

import pytest
import torch

from minidiff import NoiseSchedule, forward as F
from minidiff.data import GaussianMixture


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule.linear(1000)


def test_iterated_steps_match_closed_form(sched, generator):
    """Merging Gaussians: t steps of q(x_t|x_{t-1}) give N(√ᾱ_t x_0, (1 − ᾱ_t) I) (eq. 4)."""
    n, t_end = 40_000, 300
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    x = x0.clone()
    for t in range(t_end + 1):
        x = F.q_step(sched, x, t, generator=generator)
    ab = float(sched.alpha_bar[t_end])
    mean_se, var_se = math.sqrt((1 - ab) / n), (1 - ab) * math.sqrt(2 / n)
    assert abs(x.mean().item() - math.sqrt(ab) * 1.5) < 5 * mean_se
    assert abs(x.var().item() - (1 - ab)) < 5 * var_se
    direct = F.q_sample(sched, x0, t_end, generator=generator)
    assert abs(direct.mean().item() - x.mean().item()) < 7 * mean_se


def test_q_sample_with_given_noise_is_exact(sched):
    x0, eps = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.tensor([0, 10, 500, 999])
    ab = sched.alpha_bar[t].float()[:, None]
    assert torch.allclose(F.q_sample(sched, x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-6)


def test_posterior_eps_form_equals_x0_form(sched, generator):
    """μ̃_t(x_t, x_0) = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t when x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (eq. 11)."""
    x0, eps = torch.randn(8, 3, generator=generator, dtype=torch.float64), torch.randn(8, 3, generator=generator, dtype=torch.float64)
    t = torch.randint(1, 1000, (8,), generator=generator)
    x_t = F.q_sample(sched, x0, t, eps)
    mean, var = F.posterior_mean_var(sched, x0, x_t, t)
    assert torch.allclose(F.model_mean(sched, x_t, t, eps), mean, atol=1e-10)
    assert torch.allclose(var.flatten(), sched.posterior_variance[t])


def test_posterior_matches_monte_carlo(sched, generator):
    """Regress x_{t-1} on x_t from forward samples: slope, intercept, residual variance = eqs. 6–7."""
    n, t = 200_000, 50
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    x_prev = F.q_sample(sched, x0, t - 1, generator=generator)
    x_t = F.q_step(sched, x_prev, t, generator=generator)
    X = torch.cat([x_t, torch.ones_like(x_t)], 1)
    coef = torch.linalg.lstsq(X, x_prev).solution.flatten()
    resid_var = (x_prev - X @ coef[:, None]).var().item()
    # analytic: μ̃ = a x_t + b x_0
    mean0, var = F.posterior_mean_var(sched, x0[:1], torch.zeros(1, 1, dtype=torch.float64), torch.tensor([t]))
    mean1, _ = F.posterior_mean_var(sched, x0[:1], torch.ones(1, 1, dtype=torch.float64), torch.tensor([t]))
    slope, intercept = (mean1 - mean0).item(), mean0.item()
    assert coef[0].item() == pytest.approx(slope, abs=0.01)
    assert coef[1].item() == pytest.approx(intercept, abs=0.01)
    assert resid_var == pytest.approx(var.item(), rel=0.02)


def test_gaussian_kl_matches_torch():
    m1, m2 = torch.randn(5), torch.randn(5)
    v1, v2 = torch.rand(5) + 0.1, torch.rand(5) + 0.1
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()), torch.distributions.Normal(m2, v2.sqrt()))
    assert torch.allclose(F.gaussian_kl(m1, v1, m2, v2), ref, atol=1e-6)
    assert torch.allclose(F.gaussian_log_likelihood(m1, m2, v2), torch.distributions.Normal(m2, v2.sqrt()).log_prob(m1), atol=1e-6)


@pytest.mark.parametrize("bin_width, levels", [(2 / 16, 17), (2 / 255, 256)])
def test_discretized_likelihood_is_a_distribution(bin_width, levels):
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    for mean, var in [(0.3, 0.01), (-0.95, 0.5), (1.2, 1e-4)]:
        logp = F.discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.tensor(var, dtype=torch.float64), bin_width)
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_likelihood_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        F.discretized_gaussian_log_likelihood(torch.tensor([1.5]), torch.zeros(1), torch.ones(()))
    with pytest.raises(ValueError, match="bin_width"):
        F.discretized_gaussian_log_likelihood(torch.zeros(1), torch.zeros(1), torch.ones(()), bin_width=0)


def test_kl_term_is_weighted_eps_error(sched, generator):
    """L_{t-1} = λ_t ‖ε − ε_θ‖² exactly when σ_t² = β̃_t (eq. 12): the weights L_simple drops."""
    x0 = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    eps = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    eps_theta = eps + 0.3 * torch.randn(6, 4, generator=generator, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 100, 500, 999])
    x_t = F.q_sample(sched, x0, t, eps)
    mean_q, var_q = F.posterior_mean_var(sched, x0, x_t, t)
    kl = F.gaussian_kl(mean_q, var_q, F.model_mean(sched, x_t, t, eps_theta), F.model_variance(sched, t, x_t)).sum(1)
    weighted = (F.l_t_weight(sched, t, x_t).flatten() * (eps - eps_theta).pow(2).sum(1))
    assert torch.allclose(kl, weighted, rtol=1e-8)
    assert F.l_t_weight(sched, 1, x_t)[0] > 50 * F.l_t_weight(sched, 999, x_t)[0]  # ≈ 59× larger at small t


def test_model_variance_kinds(sched):
    x = torch.zeros(3, 1)
    t = torch.tensor([0, 1, 999])
    small, large = F.model_variance(sched, t, x, "fixed_small").flatten(), F.model_variance(sched, t, x, "fixed_large").flatten()
    assert small[0] == small[1] == pytest.approx(float(sched.posterior_variance[1]))  # clipped first entry
    assert large[2] == pytest.approx(float(sched.betas[999]))
    with pytest.raises(ValueError, match="variance kind"):
        F.model_variance(sched, t, x, "learned")


def test_l_simple_is_zero_for_the_oracle(sched, generator):
    x0 = torch.randn(16, 2, generator=generator)
    t = torch.randint(0, 1000, (16,), generator=generator)
    noise = torch.randn(16, 2, generator=generator)
    ab = sched.alpha_bar.float()

    def oracle(x_t, t_):  # knows x0, so recovers ε exactly
        a = ab[t_][:, None]
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    assert F.l_simple(oracle, sched, x0, t, noise) < 1e-8
    assert F.l_simple(lambda x, t_: torch.zeros_like(x), sched, x0, t, noise) == pytest.approx(noise.pow(2).mean().item())


def test_elbo_terms_for_the_optimal_model_of_a_mixture(generator):
    """E[ELBO] ≥ H(data) (cross-entropy ≥ entropy); the prior term is the closed-form KL."""
    sched = NoiseSchedule.linear(200, beta_end=0.1)
    gmm = GaussianMixture.ring()
    x0 = gmm.sample(256, generator).double()
    terms = F.elbo_terms(gmm.optimal_eps_model(sched), sched, x0, decoder="gaussian", generator=generator)
    assert terms["diffusion"].shape == (256, 199) and terms["total"].shape == (256,)
    assert torch.allclose(terms["total"], terms["prior"] + terms["diffusion"].sum(1) + terms["decoder"])
    assert (terms["diffusion"] >= 0).all() and (terms["prior"] >= 0).all()
    ab = float(sched.alpha_bar[-1])
    prior = 0.5 * ((ab * x0.double() ** 2).sum(1) + 2 * ((1 - ab) - 1 - math.log(1 - ab)))
    assert torch.allclose(terms["prior"].double(), prior, rtol=1e-4)
    assert terms["total"].mean() > -gmm.log_prob(x0).mean()


def test_elbo_terms_errors(sched):
    x0 = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="decoder"):
        F.elbo_terms(lambda x, t: x, sched, x0, decoder="laplace")

    class WrongT(torch.nn.Module):
        num_timesteps = 10

        def forward(self, x, t):
            return x

    with pytest.raises(ValueError, match="T=10"):
        F.elbo_terms(WrongT(), sched, x0)
    with pytest.raises(ValueError, match="T=10"):
        F.l_simple(WrongT(), sched, x0)


def test_bits_per_dim():
    assert F.bits_per_dim(torch.tensor([64 * math.log(2)]), 64).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_dims"):
        F.bits_per_dim(torch.ones(1), 0)


def test_shape_mismatches_raise(sched):
    with pytest.raises(ValueError, match="shapes must match"):
        F.posterior_mean_var(sched, torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="noise"):
        F.q_sample(sched, torch.zeros(2, 3), 5, noise=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\[0, T\)"):
        F.q_sample(sched, torch.zeros(2, 3), 1000)


# --------------------------------------------------------------------------- bad inputs
NAN, INF = float("nan"), float("inf")


class OffsetOracle(torch.nn.Module):
    """ε_θ = the true ε (recovered from x_0 = cond["context"]) + label/10 in every dimension, so that
    L_{t-1} = λ_t · D · (label/10)² exactly (DDPM eq. 12), whatever noise was drawn."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x, t, cond):
        x0 = cond["context"][:, 0].to(x.dtype)                               # (B, 1, D) -> (B, D)
        ab = self.schedule.gather(self.schedule.alpha_bar, t, x)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt() + cond["label"].to(x.dtype)[:, None] / 10


def expected_kl(schedule, labels, dims):
    """λ_t D (label/10)² for t = 1..T−1 -> (B, T−1)."""
    t = torch.arange(1, schedule.T)
    lam = F.l_t_weight(schedule, t, torch.zeros(len(t), 1, dtype=torch.float64)).flatten()
    return lam[None, :] * dims * (labels.double()[:, None] / 10) ** 2


@pytest.mark.parametrize("chunk", [None, 1, 3, 19, 100])
def test_elbo_with_a_mapping_condition_is_exact_for_every_chunk(generator, chunk):
    """cond is repeated per timestep by minidiff.cond.repeat: each (x_0, t) pair must meet its own
    label and context, and every chunk size must evaluate every timestep exactly once."""
    short = NoiseSchedule.linear(20, beta_end=0.2)
    x0 = torch.rand(3, 2, generator=generator, dtype=torch.float64) * 2 - 1
    cond = {"label": torch.tensor([0, 5, 9]), "context": x0[:, None, :].clone()}
    terms = F.elbo_terms(OffsetOracle(short), short, x0.double(), cond=cond, generator=generator, chunk=chunk)
    assert torch.allclose(terms["diffusion"], expected_kl(short, cond["label"], 2), rtol=1e-6, atol=1e-10)
    assert (terms["diffusion"][0] < 1e-10).all() and (terms["diffusion"][2] > 0.1).all()


@pytest.mark.parametrize("chunk, error", [(-1, ValueError), (0, ValueError), (1.5, TypeError), (True, TypeError),
                                          ("4", TypeError)])
def test_elbo_rejects_bad_chunk(sched, chunk, error):
    with pytest.raises(error, match="chunk"):
        F.elbo_terms(lambda x, t: x, sched, torch.zeros(2, 2), chunk=chunk)


def test_elbo_and_l_simple_reject_bad_arguments(sched):
    x0, model = torch.zeros(2, 2), (lambda x, t: x)
    bad = [
        (dict(variance="learned"), ValueError, "variance"),
        (dict(decoder=None), ValueError, "decoder"),
        (dict(bin_width=0.0), ValueError, "bin_width"),
        (dict(bin_width=-0.1), ValueError, "bin_width"),
        (dict(bin_width=NAN), ValueError, "bin_width"),
        (dict(bin_width=True), TypeError, "bin_width"),
        (dict(generator=0), TypeError, "generator"),
        (dict(cond=torch.zeros(3)), ValueError, "batch size 3"),
        (dict(cond=[1, 2]), TypeError, "cond"),
    ]
    for kwargs, error, match in bad:
        with pytest.raises(error, match=match):
            F.elbo_terms(model, sched, x0, **kwargs)
    with pytest.raises(ValueError, match="empty batch"):
        F.elbo_terms(model, sched, torch.zeros(0, 2))
    with pytest.raises(TypeError, match="floating-point"):
        F.elbo_terms(model, sched, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="eps_model must be callable"):
        F.elbo_terms("model", sched, x0)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        F.elbo_terms(model, sched.betas, x0)
    with pytest.raises(ValueError, match="empty batch"):
        F.l_simple(model, sched, torch.zeros(0, 2))               # the mean of nothing would be NaN
    with pytest.raises(TypeError, match="generator"):
        F.l_simple(model, sched, x0, generator=1)
    with pytest.raises(ValueError, match="batch size 5"):
        F.l_simple(model, sched, x0, cond=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        F.l_simple(model, sched, x0, t=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, T\)"):
        F.l_simple(model, sched, x0, t=torch.tensor([0, 1000]))


def test_q_sample_and_q_step_reject_bad_arguments(sched):
    x0 = torch.zeros(2, 3)
    for fn in (F.q_sample, F.q_step):
        with pytest.raises(TypeError, match="floating-point"):
            fn(sched, torch.zeros(2, 3, dtype=torch.long), 1)
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            fn(sched, [[0.0, 1.0]], 1)
        with pytest.raises(TypeError, match="noise must be a torch.Tensor"):
            fn(sched, x0, 1, noise=0.5)
        with pytest.raises(TypeError, match="generator"):
            fn(sched, x0, 1, generator=42)
        with pytest.raises(TypeError, match="NoiseSchedule"):
            fn(None, x0, 1)
        for t, error in [(-1, ValueError), (1000, ValueError), (1.0, TypeError), (True, TypeError),
                         (torch.tensor([1, 2, 3]), ValueError)]:
            with pytest.raises(error, match="t "):
                fn(sched, x0, t)
    # an empty batch is a valid (empty) answer, not an error
    assert F.q_sample(sched, torch.zeros(0, 3), 5).shape == (0, 3)


def test_variance_arguments_must_be_positive():
    m = torch.zeros(3)
    for var in (0.0, -1.0, NAN, INF, torch.tensor([1.0, -0.5, 1.0])):
        with pytest.raises(ValueError, match="var1"):
            F.gaussian_kl(m, var, m, 1.0)
        with pytest.raises(ValueError, match="var2"):
            F.gaussian_kl(m, 1.0, m, var)
        with pytest.raises(ValueError, match="var "):
            F.gaussian_log_likelihood(m, m, var)
        with pytest.raises(ValueError, match="var "):
            F.discretized_gaussian_log_likelihood(m, m, var)
    with pytest.raises(TypeError, match="bool"):
        F.gaussian_kl(m, True, m, 1.0)
    for width, error in [(NAN, ValueError), (INF, ValueError), (2.5, ValueError), (-1.0, ValueError),
                         (True, TypeError), ("2/255", TypeError)]:
        with pytest.raises(error, match="bin_width"):
            F.discretized_gaussian_log_likelihood(m, m, torch.ones(()), bin_width=width)


def test_model_variance_and_weights_reject_bad_arguments(sched):
    x = torch.zeros(2, 1)
    for kind in ("learned", None, 3, "FIXED_SMALL"):
        with pytest.raises(ValueError, match="variance kind"):
            F.model_variance(sched, 1, x, kind)
        with pytest.raises(ValueError, match="variance kind"):
            F.l_t_weight(sched, 1, x, kind)
    with pytest.raises(ValueError, match="shapes must match"):
        F.model_mean(sched, torch.zeros(2, 3), 1, torch.zeros(2, 1))


@pytest.mark.parametrize("num_dims, error", [(0, ValueError), (-64, ValueError), (64.0, TypeError),
                                             (True, TypeError), (NAN, TypeError)])
def test_bits_per_dim_rejects_bad_num_dims(num_dims, error):
    with pytest.raises(error, match="num_dims"):
        F.bits_per_dim(torch.ones(1), num_dims)
    with pytest.raises(TypeError, match="nats"):
        F.bits_per_dim("1.0", 64)


def test_posterior_and_model_mean_reject_non_tensors(sched):
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        F.posterior_mean_var(sched, [[0.0] * 3] * 2, x, 1)
    with pytest.raises(TypeError, match="eps must be a floating-point tensor"):
        F.model_mean(sched, x, 1, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a tensor"):
        F.model_variance(sched, 1, [0.0, 1.0])
    with pytest.raises(ValueError, match="eps must have the shape of x_t"):
        F.predicted_x0(sched, x, 1, torch.zeros(2, 1))


def test_l_simple_passes_other_condition_objects_through(sched):
    """A condition that is neither a tensor nor a mapping (cascade's LowResCondition) is the model's business."""
    seen = []

    class Box:
        pass

    box = Box()
    F.l_simple(lambda x, t, c: seen.append(c) or torch.zeros_like(x), sched, torch.zeros(2, 3), cond=box)
    assert seen == [box]


def test_given_noise_follows_x_dtype():
    # float64 noise used to upcast a float32 x_t (and everything computed from it) without a word
    schedule = NoiseSchedule.linear(100)
    x0 = torch.randn(4, 2)
    noise = torch.randn(4, 2, dtype=torch.float64)
    x_t = F.q_sample(schedule, x0, torch.full((4,), 50), noise=noise)
    assert x_t.dtype == torch.float32
    a = schedule.alpha_bar[50].item()
    torch.testing.assert_close(x_t, (a ** 0.5 * x0.double() + (1 - a) ** 0.5 * noise).float())

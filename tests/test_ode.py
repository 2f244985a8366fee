"""minidiff.ode: one PF-ODE step, ODE sampling (fixed and adaptive), and exact likelihoods checked
against closed forms (Gaussian data, where the flow is linear) and the analytic mixture density."""
from __future__ import annotations

import math

import pytest
import torch

from minidiff.data import GaussianMixture
from minidiff.ode import (divergence, dequantized_nll, ode_log_likelihood, ode_loop, ode_step,
                          pf_ode_velocity)
from minidiff.sde import CountCalls, MixtureEps, SubVPSDE, VESDE, VPSDE, noised_mixture, sample_sde


class GaussianEps:
    """Exact eps-model for data N(0, var·I) under an SDE: p_t = N(0, v_t I), v_t = m² var + s², score = −x/v_t."""

    def __init__(self, sde, var):
        self.sde, self.var = sde, var

    def v(self, t):
        m, s = self.sde.marginal_coeffs(t)
        return m**2 * self.var + s**2

    def __call__(self, x, t, cond=None):
        s = self.sde.std(t).to(x).reshape(-1, *[1] * (x.ndim - 1))
        return s * x / self.v(t).to(x).reshape(-1, *[1] * (x.ndim - 1))   # ε = −s·score


def gaussian_logp(x, var):
    return torch.distributions.Normal(0.0, math.sqrt(var)).log_prob(x.double()).reshape(x.shape[0], -1).sum(1)


# ------------------------------------------------------------------------------------ one step
def test_one_pf_ode_step_by_hand():
    sde = VPSDE()
    ring = GaussianMixture.ring()
    eps = MixtureEps(ring, sde)
    velocity = pf_ode_velocity(eps, sde)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, t_next = 0.5, 0.45
    tb = torch.full((16,), t, dtype=torch.float64)
    beta = float(sde.beta(t))
    score = -eps(x, tb) / sde.std(tb)[:, None]
    v = -0.5 * beta * x - 0.5 * beta * score                          # eq. 13: f − ½ g² ∇log p
    torch.testing.assert_close(velocity(x, t), v)
    torch.testing.assert_close(ode_step(velocity, x, t, t_next, "euler"), x + (t_next - t) * v)
    x_e = x + (t_next - t) * v
    heun = x + 0.5 * (t_next - t) * (v + velocity(x_e, t_next))
    torch.testing.assert_close(ode_step(velocity, x, t, t_next, "heun"), heun)


def test_step_orders_on_a_linear_ode():
    """dx/dt = a x: Heun is exp(ah) to O(h³), RK4 to O(h⁵)."""
    a, h = -1.3, 0.1
    x = torch.ones(1, 1, dtype=torch.float64)
    velocity = lambda x, t: a * x
    exact = math.exp(a * h)
    assert abs(ode_step(velocity, x, 0.0, h, "heun").item() - exact) < 1e-3
    assert abs(ode_step(velocity, x, 0.0, h, "heun").item() - (1 + a * h + (a * h) ** 2 / 2)) < 1e-12
    assert abs(ode_step(velocity, x, 0.0, h, "rk4").item() - exact) < 1e-6
    with pytest.raises((TypeError, ValueError), match="fixed-step method"):
        ode_step(velocity, x, 0.0, h, "rk45")


# ------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.01, 10.0)], ids=["vp", "subvp", "ve"])
def test_pf_ode_transports_gaussian_exactly(sde):
    """For N(0, var) data the PF-ODE is linear and x(t) ∝ √v_t: the sample is x_1·√(v_{t_eps}/v_1)."""
    var = 0.3
    model = GaussianEps(sde, var)
    x_T = sde.prior_sample((64, 2), torch.Generator().manual_seed(1)).double()
    t_eps = 1e-3
    target = x_T * (model.v(t_eps) / model.v(1.0)).sqrt()
    for method, steps, tol in (("rk45", 10, 1e-4), ("rk4", 50, 1e-4), ("heun", 200, 2e-3)):
        counter = CountCalls(model)
        states = list(ode_loop(counter, sde, x_T, steps, method, t_eps=t_eps, rtol=1e-7, atol=1e-7, progress=False))
        torch.testing.assert_close(states[-1]["x"], target, rtol=tol, atol=tol)
        assert states[-1]["nfe"] == counter.calls
        if method != "rk45":
            assert counter.calls == steps * {"rk4": 4, "heun": 2}[method]
        assert len(states) == steps and abs(states[-1]["t"] - t_eps) < 1e-12


def test_ode_is_deterministic_and_samples_the_ring():
    ring = GaussianMixture.ring()
    sde = VPSDE()
    fresh = ring.sample(400, torch.Generator().manual_seed(2))
    for method, steps in (("ode_heun", 50), ("ode_rk45", 10)):
        runs = [sample_sde(MixtureEps(ring, sde), sde, (400, 2), method, steps, generator=torch.Generator().manual_seed(3),
                           progress=False) for _ in range(2)]
        assert torch.equal(runs[0], runs[1])
        assert abs(ring.log_prob(runs[0]).mean() - ring.log_prob(fresh).mean()) < 0.25


# ------------------------------------------------------------------------------------ likelihood
def test_identity_model_gives_the_standard_normal_logp():
    """Data N(0, I) under VP: p_t = N(0, I) at every t, the PF-ODE velocity is 0, log p = closed form."""
    sde = VPSDE()
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(4))
    model = GaussianEps(sde, 1.0)
    assert pf_ode_velocity(model, sde)(x.double(), 0.5).abs().max() < 1e-12
    for method in ("exact", "hutchinson"):
        logp = ode_log_likelihood(model, sde, x, method, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(logp, gaussian_logp(x, 1.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 20.0)], ids=["vp", "ve"])
def test_gaussian_likelihood_closed_form(sde):
    """Data N(0, 0.2 I): the flow is linear, x(t_eps) = x(1)·√(v_{t_eps}/v_1), so the model density is the prior
    N(0, σ_p²) pushed forward: N(0, σ_p² v_{t_eps}/v_1) — log p_{t_eps} up to the prior's mismatch with p_1."""
    var, t_eps = 0.2, 1e-3
    model = GaussianEps(sde, var)
    x = math.sqrt(var) * torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    ref = gaussian_logp(x, sde.prior_std**2 * float(model.v(t_eps) / model.v(1.0)))
    for method, solver, steps, tol in (("exact", "rk45", None, 1e-3), ("hutchinson", "rk45", None, 1e-3),
                                       ("exact", "rk4", 100, 1e-3)):
        kwargs = {"steps": steps} if steps else {}
        logp, nfe = ode_log_likelihood(model, sde, x, method, solver=solver, t_eps=t_eps, rtol=1e-6, atol=1e-6,
                                       generator=torch.Generator().manual_seed(0), return_nfe=True, **kwargs)
        # isotropic linear flow: Hutchinson with Rademacher probes is exact (zᵀ a I z = a D)
        torch.testing.assert_close(logp, ref, rtol=0, atol=tol)
        assert nfe > 0


def test_mixture_likelihood_matches_the_true_density():
    ring = GaussianMixture.ring()
    x = ring.sample(40, torch.Generator().manual_seed(6))
    for sde in (VPSDE(), SubVPSDE()):
        logp = ode_log_likelihood(MixtureEps(ring, sde), sde, x, "exact", t_eps=1e-3, rtol=1e-6, atol=1e-6)
        target = noised_mixture(ring, sde, 1e-3).log_prob(x)
        assert (logp - target).abs().max() < 0.01, sde


def test_hutchinson_is_unbiased_on_the_mixture():
    ring = GaussianMixture.ring()
    sde = VPSDE()
    x = ring.sample(200, torch.Generator().manual_seed(7))
    exact = ode_log_likelihood(MixtureEps(ring, sde), sde, x, "exact")
    est = ode_log_likelihood(MixtureEps(ring, sde), sde, x, "hutchinson", n_probes=2, generator=torch.Generator().manual_seed(8))
    diff = est - exact
    assert diff.std() > 0.01                                           # it is an estimate ...
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(diff))     # ... without bias


def test_divergence_exact_vs_hutchinson_on_a_linear_map():
    A = torch.tensor([[1.0, 2.0, 0.0], [0.5, -3.0, 1.0], [0.0, 0.0, 0.25]], dtype=torch.float64)
    velocity = lambda x, t: x @ A.T
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    v, div = divergence(velocity, x, 0.5, "exact")
    torch.testing.assert_close(div, torch.full((5,), float(A.trace()), dtype=torch.float64))
    probes = (torch.randint(0, 2, (4000, 5, 3), generator=torch.Generator().manual_seed(10)) * 2 - 1).double()
    _, est = divergence(velocity, x, 0.5, "hutchinson", probes)
    torch.testing.assert_close(est, div, rtol=0, atol=0.15)


def test_dequantized_nll_is_the_shifted_density():
    sde, var = VPSDE(), 1.0
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(11))
    nll = dequantized_nll(GaussianEps(sde, var), sde, x, 0.25, generator=torch.Generator().manual_seed(12))
    u = (torch.rand(x.shape, generator=torch.Generator().manual_seed(12)) - 0.5) * 0.25
    torch.testing.assert_close(nll, -gaussian_logp(x + u, var) - 4 * math.log(0.25), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ errors
def test_ode_errors():
    ring = GaussianMixture.ring()
    sde = VPSDE()
    eps = MixtureEps(ring, sde)
    x = torch.zeros(4, 2)
    with pytest.raises((TypeError, ValueError), match="ODE method must be one of"):
        list(ode_loop(eps, sde, x, 5, "midpoint"))
    with pytest.raises((TypeError, ValueError), match="method must be one of"):
        ode_log_likelihood(eps, sde, x, "skilling")
    with pytest.raises((TypeError, ValueError), match="ODE method must be one of"):
        ode_log_likelihood(eps, sde, x, solver="dopri8")
    with pytest.raises((TypeError, ValueError), match="x must be batched"):
        ode_log_likelihood(eps, sde, torch.zeros(2))
    with pytest.raises((TypeError, ValueError), match="t_eps must be in"):
        ode_log_likelihood(eps, sde, x, t_eps=1.0)
    with pytest.raises((TypeError, ValueError), match="n_probes"):
        ode_log_likelihood(eps, sde, x, "hutchinson", n_probes=0)
    with pytest.raises((TypeError, ValueError), match="hutchinson needs probes"):
        divergence(lambda x, t: x, x, 0.5, "hutchinson", torch.zeros(1, 3, 2))
    with pytest.raises((TypeError, ValueError), match=r"x must have shape \(B, 2\)"):
        ode_log_likelihood(eps, sde, torch.zeros(4, 3))
    with pytest.raises((TypeError, ValueError), match="bin_width"):
        dequantized_nll(eps, sde, x, 0.0)


def test_ode_numeric_arguments_are_validated():
    ring = GaussianMixture.ring()
    sde = VPSDE()
    eps = MixtureEps(ring, sde)
    x = torch.zeros(4, 2)
    nan, inf = float("nan"), float("inf")
    # steps=0 used to return the prior's log p without integrating
    for steps in (0, -1, 2.5, True):
        with pytest.raises((TypeError, ValueError), match="steps must be an int >= 1"):
            ode_log_likelihood(eps, sde, x, solver="rk4", steps=steps)
        with pytest.raises((TypeError, ValueError), match="steps must be an int >= 1"):
            list(ode_loop(eps, sde, x, steps, "heun"))
    for name in ("rtol", "atol"):
        for value in (0.0, -1e-5, nan, inf, True):
            with pytest.raises((TypeError, ValueError), match=f"{name} must be"):
                ode_log_likelihood(eps, sde, x, **{name: value})
            with pytest.raises((TypeError, ValueError), match=f"{name} must be"):
                list(ode_loop(eps, sde, x, 2, "rk45", **{name: value}))
    for t_eps in (nan, -0.1, True):
        with pytest.raises((TypeError, ValueError), match="t_eps must be"):
            ode_log_likelihood(eps, sde, x, t_eps=t_eps)
    for n_probes in (1.5, True, -1):
        with pytest.raises((TypeError, ValueError), match="n_probes must be an int >= 1"):
            ode_log_likelihood(eps, sde, x, "hutchinson", n_probes=n_probes)
    with pytest.raises((TypeError, ValueError), match="x must be finite"):
        ode_log_likelihood(eps, sde, torch.full((4, 2), nan))
    for bin_width in (nan, inf, -0.1, True):
        with pytest.raises((TypeError, ValueError), match="bin_width must be"):
            dequantized_nll(eps, sde, x, bin_width)
    for n_samples in (0, 1.5, True):
        with pytest.raises((TypeError, ValueError), match="n_samples must be an int >= 1"):
            dequantized_nll(eps, sde, x, 0.1, n_samples=n_samples)

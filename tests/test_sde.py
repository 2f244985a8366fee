"""minidiff.sde: forward SDEs and their marginals, the DDPM bridge, the exact mixture score, DSM loss,
and the stochastic samplers (one Euler–Maruyama / Langevin step checked by hand)."""
from __future__ import annotations

import math

import pytest
import torch

from minidiff import NoiseSchedule, eps_to_score, fit, score_to_eps
from minidiff.data import GaussianMixture
from minidiff.nets import MLPDenoiser
from minidiff.sde import (SDES, ContinuousTime, CountCalls, MixtureEps, SubVPSDE, VESDE, VPSDE, check_time, dsm_loss,
                          em_loop, em_step, langevin_step, make_sde, noised_mixture, pc_loop, reverse_diffusion_step,
                          sample_sde, score_fn)

ALL_SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)]
IDS = ["vp", "subvp", "ve"]


@pytest.fixture
def ring():
    return GaussianMixture.ring(k=8, radius=2.0, std=0.15)


# ------------------------------------------------------------------------------------ marginals
@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_marginal_variance_solves_its_ode(sde):
    """For dx = a(t) x dt + g dw the kernel's variance obeys d(s²)/dt = 2a s² + g², s(0) = 0; the mean m' = a m, m(0) = 1."""
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    h = 1e-5
    m, s = sde.marginal_coeffs(t)
    m_p, s_p = sde.marginal_coeffs(t + h)
    m_m, s_m = sde.marginal_coeffs(t - h)
    a = sde.drift(torch.ones(len(t), 1, dtype=torch.float64), t)[:, 0]           # f(x, t) = a(t) x
    g2 = sde.diffusion(t) ** 2
    torch.testing.assert_close((s_p**2 - s_m**2) / (2 * h), 2 * a * s**2 + g2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close((m_p - m_m) / (2 * h), a * m, rtol=1e-6, atol=1e-8)
    m0, s0 = sde.marginal_coeffs(0.0)
    assert float(m0) == 1.0 and float(s0) == 0.0


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_marginal_matches_euler_maruyama_simulation(sde):
    gen = torch.Generator().manual_seed(0)
    n, steps = 20_000, 1000
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(n, 2)
    x, dt = x0.clone(), 1.0 / steps
    checks = {100: 0.1, 500: 0.5, 1000: 1.0}
    for k in range(steps):
        t = torch.full((n,), k * dt, dtype=torch.float64)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t)[:, None] * math.sqrt(dt) * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        if k + 1 in checks:
            mean, std = sde.marginal(x0, checks[k + 1])
            scale = float(std[0])
            # sampling error: mean ~ std/sqrt(n) = 0.7 % of std; std ~ 0.5 %; plus O(dt) discretisation
            torch.testing.assert_close(x.mean(0), mean[0], rtol=0, atol=0.03 * scale + 1e-3)
            torch.testing.assert_close(x.std(0), std[0].expand(2), rtol=0.03, atol=1e-3)


def test_closed_forms_of_each_sde():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    vp, sub, ve = VPSDE(), SubVPSDE(), VESDE(0.01, 50.0)
    B = 0.1 * t + 0.5 * t**2 * 19.9
    torch.testing.assert_close(vp.marginal_coeffs(t)[1] ** 2, 1 - torch.exp(-B))       # VP: s² = 1 − e^{−B}
    torch.testing.assert_close(sub.marginal_coeffs(t)[1], 1 - torch.exp(-B))            # sub-VP: s = 1 − e^{−B}
    assert (sub.marginal_coeffs(t[1:])[1] < vp.marginal_coeffs(t[1:])[1]).all()
    sigma = 0.01 * 5000**t
    torch.testing.assert_close(ve.marginal_coeffs(t)[1] ** 2, sigma**2 - 0.01**2)      # VE: s² = σ(t)² − σ_min²
    assert ve.prior_std == 50.0 and vp.prior_std == 1.0


def test_prior_logp_and_sample():
    for sde in (VPSDE(), VESDE(0.01, 3.0)):
        z = sde.prior_sample((5, 1, 2, 2), torch.Generator().manual_seed(0))
        ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).sum((1, 2, 3))
        torch.testing.assert_close(sde.prior_logp(z), ref)
    big = VESDE(0.01, 3.0).prior_sample((20_000, 1), torch.Generator().manual_seed(1))
    assert abs(big.std().item() - 3.0) < 0.06


def test_vp_discretize_is_the_ddpm_step():
    sde, x = VPSDE(), torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f, G = sde.discretize(x, 0.5, 1e-3)
    beta = -math.expm1(-float(sde.beta(0.5)) * 1e-3)                 # = β(t) dt + O(dt²)
    assert abs(beta / (float(sde.beta(0.5)) * 1e-3) - 1) < 0.01        # relative O(β dt)
    torch.testing.assert_close(x + f, math.sqrt(1 - beta) * x)
    torch.testing.assert_close(G, torch.full((4, 1), math.sqrt(beta), dtype=torch.float64))


# ------------------------------------------------------------------------------------ the DDPM bridge
def test_vp_from_linear_schedule_matches_ddpm_marginals():
    schedule = NoiseSchedule.linear(1000)
    sde = VPSDE.from_schedule(schedule)
    assert math.isclose(sde.beta_min, 0.1) and math.isclose(sde.beta_max, 20.0)
    T = schedule.T
    t = (torch.arange(T, dtype=torch.float64) + 1) / T                 # index i <-> paper step i+1 <-> t = (i+1)/T
    s_cont = sde.std(t)
    s_disc = (1 - schedule.alpha_bar).sqrt()
    # an approximation (β_i vs e^{-β_i} and a Riemann sum): 1.4e-3 absolute, 4.9 % relative at i = 0, < 2.5 % for i >= 10
    assert (s_cont - s_disc).abs().max() < 1.4e-3
    assert ((s_cont / s_disc - 1).abs()[10:]).max() < 0.025
    # Song's label convention t·(T−1) would be 10x worse at small t (t = 0 has std 0, index 0 has 0.01)
    s_song = sde.std(torch.arange(T, dtype=torch.float64) / (T - 1))
    assert (s_song - s_disc).abs().max() > 5e-3
    with pytest.raises((TypeError, ValueError), match="linear schedule"):
        VPSDE.from_schedule(NoiseSchedule.cosine(1000))


def test_continuous_time_adapter_indices():
    seen = {}

    def net(x, t, cond=None):
        seen["t"] = t
        return torch.zeros_like(x)

    net.num_timesteps = 1000
    x = torch.zeros(3, 2)
    ContinuousTime(net)(x, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(seen["t"], torch.tensor([0.0, 499.5, 999.0]))
    ContinuousTime.from_ddpm(net)(x, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(seen["t"], torch.tensor([0.0, 499.0, 999.0]))
    with pytest.raises((TypeError, ValueError), match=r"t must be in \[0, 1\], got min 0, max 1.2"):
        ContinuousTime(net)(x, torch.tensor([0.0, 0.5, 1.2]))
    # a real net takes the adapter's fractional indices and trains through it (it is an nn.Module)
    model = ContinuousTime(MLPDenoiser(dim=2, width=16, depth=1))
    assert model(x, torch.rand(3)).shape == x.shape and len(list(model.parameters())) > 0


# ------------------------------------------------------------------------------------ exact score, eps <-> score
@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_mixture_eps_is_the_analytic_score(sde, t, ring):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    p_t = noised_mixture(ring, sde, t)
    xg = x.clone().requires_grad_(True)
    true_score = torch.autograd.grad(p_t.log_prob(xg).sum(), xg)[0]
    tb = torch.full((64,), t, dtype=torch.float64)
    eps = MixtureEps(ring, sde)(x, tb)
    std = sde.std(tb)[:, None]
    torch.testing.assert_close(eps_to_score(eps, std), true_score, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(score_fn(MixtureEps(ring, sde), sde)(x, tb), true_score, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(score_to_eps(true_score, std), eps, rtol=1e-8, atol=1e-8)


def test_noised_mixture_is_data_at_t0_and_vp_matches_toys(ring):
    p0 = noised_mixture(ring, VPSDE(), 0.0)
    torch.testing.assert_close(p0.covs, ring.covs)
    x = ring.sample(16, torch.Generator().manual_seed(3))
    sde = VPSDE()
    m, _ = sde.marginal_coeffs(0.4)
    torch.testing.assert_close(noised_mixture(ring, sde, 0.4).log_prob(x), ring.noised_log_prob(x, float(m) ** 2))


# ------------------------------------------------------------------------------------ DSM loss
def test_dsm_loss_in_eps_form(ring):
    sde = VPSDE()
    x0 = ring.sample(256, torch.Generator().manual_seed(4))
    model = MLPDenoiser(dim=2, width=16, depth=1)
    cont = ContinuousTime(model)
    for weighting in ("sigma2", "likelihood"):
        got = dsm_loss(sde, weighting, t_eps=1e-3)(cont, x0, torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(5)                          # redo by hand with the same draws
        t = 1e-3 + (1 - 1e-3) * torch.rand(256, generator=gen)
        z = torch.randn(x0.shape, generator=gen)
        m, s = sde.marginal_coeffs(t)
        x_t = m.float()[:, None] * x0 + s.float()[:, None] * z
        err = (z - cont(x_t, t)).pow(2).mean(1)
        if weighting == "likelihood":
            err = err * (sde.diffusion(t) ** 2 / s**2).float()
        torch.testing.assert_close(got, err.mean())
    # the exact eps* has a lower loss than an untrained net, and fit() trains through the adapter
    exact = dsm_loss(sde)(MixtureEps(ring, sde), x0, torch.Generator().manual_seed(6))
    losses = fit(cont, dsm_loss(sde), x0, steps=30, batch_size=64, lr=3e-3, seed=0, progress=False)
    assert exact < losses[0] and torch.isfinite(torch.tensor(losses)).all()
    with pytest.raises((TypeError, ValueError), match="weighting must be one of"):
        dsm_loss(sde, "uniform")
    with pytest.raises((TypeError, ValueError), match="t_eps"):
        dsm_loss(sde, t_eps=0.0)


# ------------------------------------------------------------------------------------ one step of each sampler
def test_one_euler_maruyama_step_by_hand():
    sde = VPSDE()
    gen = torch.Generator().manual_seed(7)
    x, score, z = (torch.randn(8, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    t, dt = 0.6, 0.01
    beta = float(sde.beta(t))
    x_new, x_mean = em_step(sde, x, t, dt, score, noise=z)
    # reverse SDE: dx = [-½βx − β ∇log p] dt + √β dw̄, stepped backwards by dt
    torch.testing.assert_close(x_mean, x + (0.5 * beta * x + beta * score) * dt)
    torch.testing.assert_close(x_new, x_mean + math.sqrt(beta * dt) * z)
    ve = VESDE(0.01, 5.0)
    g = float(ve.diffusion(t))
    x_new, x_mean = em_step(ve, x, t, dt, score, noise=z)
    torch.testing.assert_close(x_new, x + g**2 * score * dt + g * math.sqrt(dt) * z)
    with pytest.raises((TypeError, ValueError), match="dt must be > 0"):
        em_step(sde, x, t, -dt, score)


def test_reverse_diffusion_and_langevin_steps_by_hand():
    sde = VPSDE()
    gen = torch.Generator().manual_seed(8)
    x, score, z = (torch.randn(8, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    beta = -math.expm1(-float(sde.beta(0.5)) * 0.01)
    x_new, x_mean = reverse_diffusion_step(sde, x, 0.5, 0.01, score, noise=z)
    torch.testing.assert_close(x_mean, (2 - math.sqrt(1 - beta)) * x + beta * score)
    torch.testing.assert_close(x_new, x_mean + math.sqrt(beta) * z)
    x_new, x_mean = langevin_step(x, score, snr=0.1, alpha=0.9, noise=z)
    eps = 2 * 0.9 * (0.1 * z.norm(dim=1).mean() / score.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(x_mean, x + eps * score)
    torch.testing.assert_close(x_new, x_mean + (2 * eps).sqrt() * z)


def test_samplers_count_model_calls_and_yield_states(ring):
    sde = VPSDE()
    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(9))
    for kwargs, per_step in (({"corrector": "none"}, 1), ({}, 2), ({"n_corrector": 2}, 3),
                             ({"predictor": "reverse_diffusion"}, 2), ({"predictor": "none"}, 1)):
        model = CountCalls(MixtureEps(ring, sde))
        states = list(pc_loop(model, sde, x_T, 5, generator=torch.Generator().manual_seed(0), **kwargs))
        assert model.calls == 5 * per_step == states[-1]["nfe"], kwargs
        assert [round(s["t"], 6) for s in states] == [0.8002, 0.6004, 0.4006, 0.2008, 0.001]
        assert set(states[0]) == {"t", "x", "x_mean", "nfe"}
        torch.testing.assert_close(states[-1]["x"], states[-1]["x_mean"])   # no noise on the last step


def test_reverse_sde_samples_the_ring(ring):
    for sde in ALL_SDES:
        x = sample_sde(MixtureEps(ring, sde), sde, (500, 2), "euler_maruyama", 300,
                       generator=torch.Generator().manual_seed(10), progress=False)
        fresh = ring.sample(500, torch.Generator().manual_seed(11))
        assert abs(ring.log_prob(x).mean() - ring.log_prob(fresh).mean()) < 0.2, sde
    x = sample_sde(MixtureEps(ring, VPSDE()), VPSDE(), (500, 2), "pc", 200,
                   generator=torch.Generator().manual_seed(10), progress=False)
    assert abs(ring.log_prob(x).mean() - ring.log_prob(fresh).mean()) < 0.2


def test_generator_makes_runs_reproducible(ring):
    sde = VPSDE()
    run = lambda seed: sample_sde(MixtureEps(ring, sde), sde, (8, 2), "pc", 10, generator=torch.Generator().manual_seed(seed), progress=False)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    x, traj = sample_sde(MixtureEps(ring, sde), sde, (8, 2), "euler_maruyama", 10, generator=torch.Generator().manual_seed(1),
                         return_trajectory=True, progress=False)
    assert len(traj) == 11 and torch.equal(traj[-1], x)


# ------------------------------------------------------------------------------------ errors that teach
def test_time_errors():
    with pytest.raises((TypeError, ValueError), match=r"t must be in \[0, 1\], got min 0, max 1.2"):
        check_time(torch.tensor([0.0, 1.2]))
    with pytest.raises((TypeError, ValueError), match="got min -0.1"):
        VPSDE().marginal(torch.zeros(1, 2), -0.1)
    with pytest.raises((TypeError, ValueError), match="in"):
        check_time(torch.tensor([float("nan")]))
    with pytest.raises((TypeError, ValueError), match=r"\(B,\)"):
        check_time(torch.zeros(2, 2))
    with pytest.raises((TypeError, ValueError), match="3 entries but the batch has 2"):
        VPSDE().marginal(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises((TypeError, ValueError), match=r"t must be in \[0, 1\]"):
        VESDE().diffusion(2.0)


def test_name_and_shape_errors(ring):
    assert isinstance(make_sde("subvp"), SubVPSDE) and sorted(SDES) == ["subvp", "ve", "vp"]
    with pytest.raises((TypeError, ValueError), match="unknown SDE 'vpp'; choose from"):
        make_sde("vpp")
    sde = VPSDE()
    eps = MixtureEps(ring, sde)
    with pytest.raises((TypeError, ValueError), match="method must be one of"):
        sample_sde(eps, sde, (4, 2), "ancestral")
    with pytest.raises((TypeError, ValueError), match="predictor must be one of"):
        list(pc_loop(eps, sde, torch.zeros(4, 2), 2, predictor="heun"))
    with pytest.raises((TypeError, ValueError), match="corrector must be one of"):
        list(pc_loop(eps, sde, torch.zeros(4, 2), 2, corrector="hmc"))
    with pytest.raises((TypeError, ValueError), match="cannot both be 'none'"):
        list(pc_loop(eps, sde, torch.zeros(4, 2), 2, predictor="none", corrector="none"))
    with pytest.raises((TypeError, ValueError), match="steps must be an int >= 1"):
        list(em_loop(eps, sde, torch.zeros(4, 2), 0))
    with pytest.raises((TypeError, ValueError), match=r"x_T has shape \(4, 2\) but shape=\(5, 2\)"):
        sample_sde(eps, sde, (5, 2), x_T=torch.zeros(4, 2))
    with pytest.raises((TypeError, ValueError), match="x_T must be batched"):
        list(em_loop(eps, sde, torch.zeros(2), 2))
    with pytest.raises((TypeError, ValueError), match="score must have the shape of x"):
        sde.reverse_drift(torch.zeros(4, 2), 0.5, torch.zeros(4, 3))
    with pytest.raises((TypeError, ValueError), match=r"x must have shape \(B, 2\)"):
        eps(torch.zeros(4, 3), torch.full((4,), 0.5))
    with pytest.raises((TypeError, ValueError), match="shaped like x_t"):
        list(em_loop(lambda x, t: x[:, :1], sde, torch.zeros(4, 2), 2))
    with pytest.raises((TypeError, ValueError), match="noise must have the shape"):
        em_step(sde, torch.zeros(4, 2), 0.5, 0.1, torch.zeros(4, 2), noise=torch.zeros(4, 3))
    with pytest.raises((TypeError, ValueError), match="beta_min"):
        VPSDE(beta_min=0.0)
    with pytest.raises((TypeError, ValueError), match="sigma_min < sigma_max"):
        VESDE(1.0, 0.5)


def test_numeric_arguments_are_validated(ring):
    nan, inf = float("nan"), float("inf")
    for kwargs, match in (({"beta_min": nan}, "beta_min"), ({"beta_min": True}, "beta_min must be a real number"),
                          ({"beta_max": inf}, "beta_max"), ({"beta_min": 30.0}, "beta_min <= beta_max"),
                          ({"beta_max": -1.0}, "beta_max must be > 0")):
        with pytest.raises((TypeError, ValueError), match=match):
            VPSDE(**kwargs)
    for kwargs, match in (({"sigma_min": 0.0}, "sigma_min must be > 0"), ({"sigma_max": inf}, "sigma_max"),
                          ({"sigma_min": nan}, "sigma_min"), ({"sigma_max": False}, "sigma_max must be a real number")):
        with pytest.raises((TypeError, ValueError), match=match):
            VESDE(**kwargs)
    with pytest.raises((TypeError, ValueError), match="unknown SDE"):
        make_sde(["vp"])
    sde, x = VPSDE(), torch.zeros(4, 2)
    eps = MixtureEps(ring, sde)
    for dt in (0.0, nan, inf, True):
        with pytest.raises((TypeError, ValueError), match="dt must be"):
            em_step(sde, x, 0.5, dt, x)
        with pytest.raises((TypeError, ValueError), match="dt must be"):
            sde.discretize(x, 0.5, dt)
    for snr in (0.0, -0.1, nan, True):
        with pytest.raises((TypeError, ValueError), match="snr must be"):
            list(pc_loop(eps, sde, x, 2, snr=snr))
        with pytest.raises((TypeError, ValueError), match="snr must be"):
            langevin_step(x, x + 1, snr)
    with pytest.raises((TypeError, ValueError), match="alpha must be > 0"):
        langevin_step(x, x + 1, 0.1, alpha=0.0)
    with pytest.raises((TypeError, ValueError), match="score must have the shape of x"):
        langevin_step(x, torch.zeros(4, 3), 0.1)
    for n in (-1, 1.5, True):
        with pytest.raises((TypeError, ValueError), match="n_corrector must be an int >= 0"):
            list(pc_loop(eps, sde, x, 2, n_corrector=n))
    for steps in (0, 2.0, True):
        with pytest.raises((TypeError, ValueError), match="steps must be an int >= 1"):
            sample_sde(eps, sde, (4, 2), "pc", steps)
    for t_eps in (-0.1, 1.0, nan):
        with pytest.raises((TypeError, ValueError), match="t_eps must be"):
            sample_sde(eps, sde, (4, 2), "euler_maruyama", 2, t_eps=t_eps)
    for shape in ((4,), (4, 0), (4, 2.0), "4x2"):
        with pytest.raises((TypeError, ValueError), match="shape must be a batched shape"):
            sample_sde(eps, sde, shape)
    for t_eps in (0.0, 1.0, nan, True):
        with pytest.raises((TypeError, ValueError), match="t_eps"):
            dsm_loss(sde, t_eps=t_eps)
    with pytest.raises((TypeError, ValueError), match="sde must be an SDE"):
        dsm_loss(NoiseSchedule.linear(10))
    with pytest.raises((TypeError, ValueError), match="must be a real number"):
        check_time("0.5")

"""minidiff.flow: the linear path, its conversions, the flow-matching loss and its floor, the exact mixture velocity,
flow sampling, and the velocity model sampled and scored by minidiff's unchanged ODE solvers."""
from __future__ import annotations

import math

import pytest
import torch

from minidiff import MLPDenoiser, NoiseSchedule, fit
from minidiff.clock import ContinuousTime, CountCalls
from minidiff.data import GaussianMixture
from minidiff.exact import MixtureEps
from minidiff.flow import (
    EpsVelocity,
    FlowPath,
    MixtureVelocity,
    VelocityEps,
    eps_to_velocity,
    flow_loop,
    flow_matching_loss,
    flow_sample,
    linear_path,
    mixture_posterior_means,
    sample_flow_times,
    score_to_velocity,
    velocity_target,
    velocity_to_eps,
    velocity_to_score,
    velocity_to_x0,
    x0_to_velocity,
)
from minidiff.metrics import MIXTURE_MMD_BANDWIDTHS as BANDWIDTHS
from minidiff.metrics import mmd
from minidiff.ode import ode_log_likelihood, ode_loop
from minidiff.sde import VESDE, VPSDE, SubVPSDE, sample_sde

RING = GaussianMixture.ring()


class GaussianVelocity:
    """Exact velocity of N(μ, σ² I) data on the linear path (jointly Gaussian u = ε − x_0 and x_t):
    v* = E[u] + Cov(u, x_t)/Var(x_t) (x − E[x_t]) = −μ + (t − (1−t)σ²)/((1−t)²σ² + t²) · (x − (1−t)μ)."""

    clock = "continuous"

    def __init__(self, mu, var):
        self.mu, self.var = torch.as_tensor(mu, dtype=torch.float64), var

    def __call__(self, x, t, cond=None):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        gain = (t - (1 - t) * self.var) / ((1 - t) ** 2 * self.var + t**2)
        return (-self.mu + gain * (x.double() - (1 - t) * self.mu)).to(x.dtype)


def gaussian_floor(var, n=200_000):
    """min E‖v − u‖² per dimension = E_t Var(u | x_t) = E_t σ²/((1−t)²σ² + t²), t ~ U[0, 1] (midpoint rule)."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return float((var / ((1 - t) ** 2 * var + t**2)).mean())


# ------------------------------------------------------------------------------ conversions
def test_conversions_round_trip_and_closed_forms(generator):
    x0 = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    noise = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    t = torch.rand(64, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    x_t = linear_path(x0, noise, t)
    torch.testing.assert_close(x_t, (1 - t[:, None]) * x0 + t[:, None] * noise)
    v = velocity_target(x0, noise)
    torch.testing.assert_close(v, noise - x0)
    # the velocity of the line recovers both of its ends, and each end gives the velocity back
    torch.testing.assert_close(velocity_to_x0(x_t, v, t), x0)
    torch.testing.assert_close(velocity_to_eps(x_t, v, t), noise)
    torch.testing.assert_close(eps_to_velocity(x_t, noise, t), v)
    torch.testing.assert_close(x0_to_velocity(x_t, x0, t), v)
    # score of x_t | x_0 ~ N((1−t) x_0, t² I) at x_t: −(x_t − (1−t) x_0)/t² = −ε/t
    score = -(x_t - (1 - t[:, None]) * x0) / t[:, None] ** 2
    torch.testing.assert_close(velocity_to_score(x_t, v, t), score)
    torch.testing.assert_close(score_to_velocity(x_t, score, t), v)
    # a float t broadcasts; t = 1 and t = 0 are fine where nothing is divided by them
    torch.testing.assert_close(velocity_to_eps(x0, v, 1.0), x0)
    torch.testing.assert_close(velocity_to_x0(x0, v, 0.0), x0)


def test_conversion_bad_inputs():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        velocity_to_eps(x, x, 1.5)
    with pytest.raises(ValueError, match="t must be finite"):
        velocity_to_x0(x, x, float("nan"))
    with pytest.raises(ValueError, match="must be < 1.*zero terminal SNR"):
        eps_to_velocity(x, x, torch.tensor([0.5, 0.5, 0.5, 1.0]))
    with pytest.raises(ValueError, match="must be > 0"):
        x0_to_velocity(x, x, 0.0)
    with pytest.raises(ValueError, match="must be > 0"):
        velocity_to_score(x, x, 0.0)
    with pytest.raises(ValueError, match=r"v must have the shape of x_t \(4, 2\)"):
        velocity_to_eps(x, torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match="t has 3 entries but the batch has 4"):
        velocity_to_x0(x, x, torch.full((3,), 0.5))
    with pytest.raises(TypeError, match="floating-point"):
        velocity_to_x0(torch.zeros(4, 2, dtype=torch.long), x, 0.5)


# ------------------------------------------------------------------------------ the exact velocity
def test_mixture_velocity_of_one_gaussian_matches_closed_form(generator):
    mu, std = torch.tensor([0.7, -1.2]), 0.6
    gmm = GaussianMixture.isotropic(mu[None], std)
    exact, closed = MixtureVelocity(gmm), GaussianVelocity(mu, std**2)
    x = 2 * torch.randn(32, 2, generator=generator, dtype=torch.float64)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        t_b = torch.full((32,), t, dtype=torch.float64)
        torch.testing.assert_close(exact(x, t), closed(x, t_b), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(exact(x, 1.0), x - mu.double())     # at pure noise: x − E[x_0]
    torch.testing.assert_close(exact(x, 0.0), -x)                  # at the data: E[ε | x_0 = x] − x = −x


def test_posterior_mean_matches_quadrature_on_a_1d_mixture():
    """E[x_0 | x_t] by numerical integration of p(x_0) N(x_t; (1−t) x_0, t²) over a fine x_0 grid."""
    gmm = GaussianMixture.isotropic([[-1.5], [1.0]], [0.3, 0.5], weights=[0.3, 0.7])
    grid = torch.linspace(-6, 6, 20001, dtype=torch.float64)[:, None]
    prior = gmm.log_prob(grid)
    x_t = torch.tensor([[-2.0], [-0.4], [0.3], [1.7]], dtype=torch.float64)
    for t in (0.2, 0.6, 0.95):
        like = torch.distributions.Normal((1 - t) * grid[:, 0], t).log_prob(x_t)        # (4, G)
        w = torch.softmax(prior + like, dim=1)
        x0_q = (w * grid[:, 0]).sum(1, keepdim=True)
        x0, eps = mixture_posterior_means(gmm, FlowPath(1.0), x_t, t)
        torch.testing.assert_close(x0, x0_q, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close((1 - t) * x0 + t * eps, x_t)                          # E[x_t | x_t] = x_t


def test_posterior_eps_is_minidiffs_exact_eps_on_any_process(generator):
    """E[ε | x_t] from the per-component formula equals MixtureEps (Tweedie) on the flow path and on the VP-SDE."""
    x = 2 * torch.randn(50, 2, generator=generator, dtype=torch.float64)
    t = torch.rand(50, generator=generator, dtype=torch.float64)
    for process in (FlowPath(1.0), FlowPath(0.9), VPSDE()):
        _, eps = mixture_posterior_means(RING, process, x, t)
        torch.testing.assert_close(eps, MixtureEps(RING, process)(x, t), rtol=1e-9, atol=1e-9)
    # and VelocityEps of the exact velocity is the exact eps-model on the FlowPath's clock
    path = FlowPath()
    torch.testing.assert_close(VelocityEps(MixtureVelocity(RING), path)(x, t), MixtureEps(RING, path)(x, t),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.01, 50.0), FlowPath()], ids=["vp", "subvp", "ve", "flow"])
def test_the_exact_eps_model_of_every_sde_is_the_same_velocity(sde, generator):
    """Same SNR, same noise: EpsVelocity of the exact mixture eps-model on any SDE is the exact flow velocity
    (measured: ≤ 2e-12 on t ∈ [0, t_max])."""
    x = 2 * torch.randn(40, 2, generator=generator, dtype=torch.float64)
    as_flow = EpsVelocity(MixtureEps(RING, sde), sde)
    m1, s1 = (float(c) for c in sde.marginal_coeffs(1.0))
    assert as_flow.t_max == pytest.approx(s1 / (m1 + s1)) and 0.98 <= as_flow.t_max < 1
    t = torch.rand(40, generator=generator, dtype=torch.float64) * as_flow.t_max
    torch.testing.assert_close(as_flow(x, t), MixtureVelocity(RING)(x, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(as_flow(x, 0.0), -x, rtol=1e-9, atol=1e-9)
    m, s = sde.marginal_coeffs(as_flow.sde_time(t))
    torch.testing.assert_close(m / s, (1 - t) / t)                                   # the SNRs agree


def test_eps_velocity_bad_inputs():
    as_flow = EpsVelocity(MixtureEps(RING, VPSDE()), VPSDE())
    with pytest.raises(ValueError, match=r"t must be <= t_max=0.99\d+.*t_start=model.t_max"):
        as_flow(torch.zeros(2, 2), 0.999)
    with pytest.raises(ValueError, match="ContinuousTime"):
        EpsVelocity(MLPDenoiser(dim=2, width=8, depth=1), VPSDE())
    with pytest.raises(TypeError, match="sde must be an SDE"):
        EpsVelocity(MixtureEps(RING, VPSDE()), "vp")
    with pytest.raises(ValueError, match="bisection_steps must be an int >= 1"):
        EpsVelocity(MixtureEps(RING, VPSDE()), VPSDE(), bisection_steps=0)


# ------------------------------------------------------------------------------ the loss and its floor
def test_flow_matching_loss_at_the_exact_velocity_is_the_analytic_floor():
    var = 0.25
    noise = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = 0.5 + math.sqrt(var) * noise
    loss_fn = flow_matching_loss()
    floor = gaussian_floor(var)
    exact = loss_fn(GaussianVelocity([0.5, 0.5], var), data, torch.Generator().manual_seed(2)).item()
    assert exact == pytest.approx(floor, rel=0.02)
    # any other field pays its mean squared distance on top (same t, ε: same generator seed)
    worse = GaussianVelocity([0.5, 0.5], var)
    shifted = lambda x, t, cond=None: worse(x, t) + 0.3
    assert loss_fn(shifted, data, torch.Generator().manual_seed(2)).item() == pytest.approx(exact + 0.09, abs=0.01)


def test_flow_matching_loss_on_the_ring_is_least_at_the_exact_velocity():
    data = RING.sample(20_000, torch.Generator().manual_seed(3))
    loss_fn = flow_matching_loss()
    exact = MixtureVelocity(RING)
    base = loss_fn(exact, data, torch.Generator().manual_seed(4)).item()
    for scale in (0.9, 1.1):
        scaled = lambda x, t, cond=None, s=scale: s * exact(x, t)
        assert loss_fn(scaled, data, torch.Generator().manual_seed(4)).item() > base + 0.005


def test_flow_matching_loss_by_hand_and_logit_normal_times():
    model = lambda x, t, cond=None: x * t[:, None]
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    for sampling in ("uniform", "logit_normal"):
        g = torch.Generator().manual_seed(5)
        loss = flow_matching_loss(sampling)(model, x0, g)
        g = torch.Generator().manual_seed(5)
        t = sample_flow_times(8, g, sampling)
        noise = torch.randn(8, 2, generator=g)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
        torch.testing.assert_close(loss, (x_t * t[:, None] - (noise - x0)).pow(2).mean())
    t = sample_flow_times(100_000, torch.Generator().manual_seed(0), "logit_normal", logit_mean=1.0, logit_std=0.5)
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(1.0, abs=0.01) and logit.std().item() == pytest.approx(0.5, abs=0.01)


def test_flow_matching_loss_condition_dropout():
    seen = []

    def model(x, t, cond=None):
        seen.append(cond.clone())
        return torch.zeros_like(x)

    model.null_cond = 9
    labels = torch.arange(2000) % 3
    flow_matching_loss(p_uncond=0.25)(model, (torch.zeros(2000, 2), labels), torch.Generator().manual_seed(0))
    dropped = seen[0] == 9
    assert 0.2 < dropped.float().mean().item() < 0.3
    assert torch.equal(seen[0][~dropped], labels[~dropped])
    with pytest.raises(ValueError, match="needs a null condition"):
        flow_matching_loss(p_uncond=0.5)(lambda x, t, cond=None: x, (torch.zeros(4, 2), labels[:4]),
                                         torch.Generator())


def test_flow_matching_loss_bad_inputs():
    with pytest.raises(ValueError, match="time_sampling must be one of"):
        flow_matching_loss("beta")
    with pytest.raises(ValueError, match="logit_std must be > 0"):
        flow_matching_loss("logit_normal", logit_std=0.0)
    with pytest.raises(ValueError, match=r"p_uncond must be in \[0, 1\]"):
        flow_matching_loss(p_uncond=1.5)
    with pytest.raises(ValueError, match="ContinuousTime"):           # a discrete-time net would see t·0 indices
        flow_matching_loss()(MLPDenoiser(dim=2, width=8, depth=1), torch.zeros(4, 2), torch.Generator())


# ------------------------------------------------------------------------------ sampling
def test_exact_velocity_transports_noise_to_the_ring_and_heun_beats_euler():
    n = 400
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MixtureVelocity(RING)
    fine = flow_sample(exact, (n, 2), 50, "rk4", x_T=x_T, progress=False)     # the ODE's solution, to ~1e-4
    data = RING.sample(n, torch.Generator().manual_seed(1)).double()
    fresh = RING.sample(n, torch.Generator().manual_seed(2)).double()
    assert mmd(fine, data, BANDWIDTHS) < mmd(fresh, data, BANDWIDTHS) + 3e-3      # as close as fresh data is
    assert abs(RING.log_prob(fine).mean() - RING.log_prob(data).mean()) < 0.1
    many = flow_sample(exact, (n, 2), 100, "euler", x_T=x_T, progress=False)         # many Euler steps: the same
    assert (many - fine).norm(dim=1).mean() < 0.01 and mmd(many, data, BANDWIDTHS) < mmd(fresh, data, BANDWIDTHS) + 3e-3
    err = {}
    for method, steps in (("euler", 10), ("heun", 5), ("euler", 20), ("heun", 10)):
        counter = CountCalls(exact)
        out = flow_sample(counter, (n, 2), steps, method, x_T=x_T, progress=False)
        assert counter.calls == (1 if method == "euler" else 2) * steps
        err[method, counter.calls] = (out - fine).norm(dim=1).mean().item()
    # measured: NFE 10: Euler 0.056, Heun 0.026; NFE 20: Euler 0.029, Heun 0.008
    assert err["heun", 10] < 0.7 * err["euler", 10] and err["heun", 20] < 0.5 * err["euler", 20]
    assert err["euler", 20] < 0.7 * err["euler", 10] and err["heun", 20] < 0.5 * err["heun", 10]


def test_flow_loop_steps_by_hand_and_yields():
    model = lambda x, t, cond=None: x * (1 + t[:, None])                  # dx/dt = (1 + t) x
    x_T = torch.ones(3, 2, dtype=torch.float64)
    states = list(flow_loop(model, x_T, 2, "heun", progress=False))
    assert [s["t"] for s in states] == [0.5, 0.0] and [s["nfe"] for s in states] == [2, 4]
    h, x = -0.5, x_T
    for t in (1.0, 0.5):
        k1 = x * (1 + t)
        k2 = (x + h * k1) * (1 + t + h)
        x = x + h / 2 * (k1 + k2)
    torch.testing.assert_close(states[-1]["x"], x)
    x_euler, traj = flow_sample(model, (3, 2), 1, "euler", x_T=x_T, return_trajectory=True, progress=False)
    torch.testing.assert_close(x_euler, x_T - 2 * x_T)                     # one step: x̂_0 = x_1 − v(x_1, 1)
    assert len(traj) == 2 and traj[0] is x_T
    # a condition reaches the model, batched and unchanged
    cond_model = lambda x, t, cond=None: x * cond[:, None]
    labels = torch.tensor([0.0, 1.0, 2.0])
    out = flow_sample(cond_model, (3, 2), 1, "euler", x_T=x_T, cond=labels, progress=False)
    torch.testing.assert_close(out, x_T - x_T * labels[:, None])
    with pytest.raises(ValueError, match="batch size 2, expected 3"):
        flow_sample(cond_model, (3, 2), 1, x_T=x_T, cond=labels[:2], progress=False)
    # seeded start, same as drawing x_T from the generator
    a = flow_sample(model, (3, 2), 2, generator=torch.Generator().manual_seed(7), progress=False)
    b = flow_sample(model, (3, 2), 2, x_T=torch.randn(3, 2, generator=torch.Generator().manual_seed(7)), progress=False)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-3)])
def test_ode_solver_route_equals_flow_sample(dtype, tol):
    """VelocityEps + FlowPath through minidiff.ode.ode_loop (PF-ODE: f − ½g²∇log p) = flow_sample on the same grid."""
    torch.manual_seed(0)
    net = ContinuousTime(MLPDenoiser(dim=2, width=16, depth=1)).to(dtype)
    path = FlowPath(0.99)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
    for method, steps in (("euler", 8), ("heun", 5), ("rk4", 3)):
        ode = list(ode_loop(VelocityEps(net, path), path, x_T, steps, method, t_eps=1e-3, progress=False))[-1]["x"]
        direct = flow_sample(net, (64, 2), steps, method, x_T=x_T, t_start=path.t_max, t_end=path.t_max * 1e-3,
                             progress=False)
        torch.testing.assert_close(ode, direct, rtol=tol, atol=tol)


def test_velocity_model_sampled_and_scored_by_the_sde_and_ode_solvers():
    """The exact velocity as an eps-model: PF-ODE sampling on the FlowPath is as good as the exact VP eps-model's,
    and ode_log_likelihood through the flow gives the mixture's own log-density."""
    n = 300
    path, vp = FlowPath(), VPSDE()
    flow_eps, vp_eps = VelocityEps(MixtureVelocity(RING), path), MixtureEps(RING, vp)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = RING.sample(n, torch.Generator().manual_seed(1)).double()
    fresh_mmd = mmd(RING.sample(n, torch.Generator().manual_seed(2)).double(), data, BANDWIDTHS)
    for model, sde in ((flow_eps, path), (vp_eps, vp)):
        x = sample_sde(model, sde, (n, 2), "ode_heun", steps=25, x_T=x_T, progress=False)
        assert mmd(x, data, BANDWIDTHS) < fresh_mmd + 5e-3
        assert RING.log_prob(x).mean() > RING.log_prob(data).mean() - 0.2
    x = data[:6]
    logp = ode_log_likelihood(flow_eps, path, x, t_eps=1e-4, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logp, RING.log_prob(x), rtol=0, atol=2e-3)   # measured: < 6e-4 nats


def test_a_ddpm_model_sampled_by_the_rectified_flow_sampler():
    """Chapter 2's exact DDPM eps-model (discrete clock) -> ContinuousTime bridge -> EpsVelocity -> flow Euler."""
    linear = NoiseSchedule.linear(1000)
    as_flow = EpsVelocity(ContinuousTime.from_ddpm(RING.optimal_eps_model(linear)), VPSDE.from_schedule(linear))
    x_T = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = flow_sample(as_flow, (300, 2), 20, "euler", x_T=x_T, t_start=as_flow.t_max, progress=False)
    flow = flow_sample(MixtureVelocity(RING), (300, 2), 20, "euler", x_T=x_T, t_start=as_flow.t_max, progress=False)
    assert (x - flow).norm(dim=1).max() < 5e-3        # measured 6e-4: the bridge's ~1e-3 noise-level mismatch
    assert RING.log_prob(x).mean() > RING.log_prob(RING.sample(300, torch.Generator().manual_seed(1))).mean() - 0.2


def test_flow_path_is_an_sde_with_the_linear_marginals(generator):
    path = FlowPath(0.8)
    tau = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    m, s = path.marginal_coeffs(tau)
    torch.testing.assert_close(m, 1 - 0.8 * tau) and torch.testing.assert_close(s, 0.8 * tau)
    # Fokker–Planck for an affine SDE: d(s²)/dτ = 2 (f/x) s² + g², dm/dτ = (f/x) m (finite differences)
    h, x = 1e-6, torch.ones(4, 1, dtype=torch.float64)
    m2, s2 = path.marginal_coeffs(tau[:3] + h)
    fx = path.drift(x[:3], tau[:3])[:, 0]
    torch.testing.assert_close((s2**2 - s[:3] ** 2) / h, 2 * fx * s[:3] ** 2 + path.diffusion(tau[:3]) ** 2,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((m2 - m[:3]) / h, fx * m[:3], rtol=1e-4, atol=1e-5)
    # PF-ODE velocity of the path = t_max · v for any v (score from ε = x + (1 − t) v)
    xv, v = torch.randn(4, 2, generator=generator, dtype=torch.float64), torch.randn(4, 2, generator=generator,
                                                                                   dtype=torch.float64)
    tb = torch.full((4,), 0.5, dtype=torch.float64)
    score = velocity_to_score(xv, v, 0.4)
    torch.testing.assert_close(path.reverse_drift(xv, tb, score, probability_flow=True), 0.8 * v)


def test_flow_path_and_wrapper_bad_inputs():
    with pytest.raises(ValueError, match=r"t_max must be in \(0, 1\]"):
        FlowPath(0.0)
    with pytest.raises(ValueError, match="singular at t = 1"):
        FlowPath(1.0).drift(torch.zeros(2, 2), 1.0)
    with pytest.raises(ValueError, match="ContinuousTime"):
        VelocityEps(MLPDenoiser(dim=2, width=8, depth=1), FlowPath())
    with pytest.raises(TypeError, match="path must be a FlowPath"):
        VelocityEps(MixtureVelocity(RING), VPSDE())
    with pytest.raises(ValueError, match="unconditional"):
        MixtureVelocity(RING)(torch.zeros(2, 2), 0.5, cond=torch.zeros(2))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 2\)"):
        mixture_posterior_means(RING, FlowPath(), torch.zeros(2, 3), 0.5)


def test_flow_sample_bad_inputs():
    model = lambda x, t, cond=None: x
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        flow_sample(model, (4, 2), 0)
    with pytest.raises(TypeError, match="steps must be an int"):
        flow_sample(model, (4, 2), 2.5)
    with pytest.raises(ValueError, match="method must be one of"):
        flow_sample(model, (4, 2), 4, "rk45")
    with pytest.raises(ValueError, match="need t_end < t_start"):
        flow_sample(model, (4, 2), 4, t_start=0.2, t_end=0.5)
    with pytest.raises(ValueError, match=r"t_start must be in \[0, 1\]"):
        flow_sample(model, (4, 2), 4, t_start=1.5)
    with pytest.raises(ValueError, match="shape must be"):
        flow_sample(model, (4,), 4)
    with pytest.raises(ValueError, match="x_T has shape"):
        flow_sample(model, (4, 2), 4, x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="finite"):
        flow_sample(model, (1, 2), 4, x_T=torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="must return a tensor shaped like x_t"):
        flow_sample(lambda x, t, cond=None: x[:, :1], (4, 2), 4)
    with pytest.raises(ValueError, match="ContinuousTime"):
        flow_sample(MLPDenoiser(dim=2, width=8, depth=1), (4, 2), 4)


# ------------------------------------------------------------------------------ training
def test_a_tiny_flow_matching_run_beats_the_untrained_net():
    data = RING.sample(4000, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = ContinuousTime(MLPDenoiser(dim=2, width=64, depth=2))
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    reference = RING.sample(500, torch.Generator().manual_seed(2))

    def quality():
        x = flow_sample(net, (500, 2), 20, "euler", x_T=x_T, progress=False)
        return mmd(x, reference, BANDWIDTHS), RING.log_prob(x).mean().item()

    mmd0, logp0 = quality()
    losses = fit(net, flow_matching_loss(), data, steps=300, batch_size=256, lr=3e-3, seed=0, progress=False)
    mmd1, logp1 = quality()
    floor = flow_matching_loss()(MixtureVelocity(RING), data, torch.Generator().manual_seed(3)).item()
    # measured (300 steps): MMD² 0.19 -> 0.07, mean log-likelihood −22.6 -> −6, loss 3.3 -> 2.0 (floor 1.88)
    assert mmd1 < mmd0 / 2 and logp1 > logp0 + 10
    assert sum(losses[-30:]) / 30 < floor + 0.3 < losses[0]

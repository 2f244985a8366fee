"""Sampler steps vs diffusers' schedulers, loops, determinism and bad input."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from minidiff import NoiseSchedule, ddim_loop, ddim_step, ddim_timesteps, ddpm_loop, ddpm_step, sample
from minidiff.data import GaussianMixture
from minidiff.nets import MLPDenoiser


def _float64_tables(scheduler):
    """diffusers keeps β, α, ᾱ in float32; recompute them in float64 from the same betas."""
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, 0)
    return scheduler


def _ddpm_scheduler():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small", clip_sample=False)


def _inputs(generator, dtype=torch.float32):
    x = torch.randn(4, 1, 8, 8, generator=generator, dtype=dtype)
    eps = torch.randn(4, 1, 8, 8, generator=generator, dtype=dtype)
    return x, eps


@pytest.mark.parametrize("t", [999, 700, 300, 100, 50, 30])
def test_ddpm_step_matches_diffusers_float32(t, generator):
    """Agreement to 1e-5 in float32 for t ≥ 30; below, diffusers' own float32 rounding dominates
    (measured: 6e-5 at t = 10, 2e-4 at t = 1) — see the float64 test for those steps."""
    ref = _ddpm_scheduler()
    ours = NoiseSchedule.from_diffusers(ref)
    x, eps = _inputs(generator)
    expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    got = ddpm_step(ours, x, t, eps, generator=torch.Generator().manual_seed(7))
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_ddpm_step_matches_diffusers_float64_everywhere(t, generator):
    """Near t = 0, diffusers' float32 tables lose ~3 digits in β_t = 1 − ᾱ_t/ᾱ_{t−1}; with the
    same tables in float64 the two implementations agree to rounding."""
    ref = _float64_tables(_ddpm_scheduler())
    ours = NoiseSchedule.from_diffusers(ref)
    x, eps = _inputs(generator, torch.float64)
    expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    got = ddpm_step(ours, x, t, eps, generator=torch.Generator().manual_seed(7))
    assert (got - expected).abs().max() < 1e-10


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_steps_match_diffusers(set_alpha_to_one, eta, generator):
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=set_alpha_to_one, timestep_spacing="leading", steps_offset=0)
    ref.set_timesteps(50)
    ours = NoiseSchedule.from_diffusers(ref)
    ts = ddim_timesteps(1000, 50, "leading")
    assert ref.timesteps.tolist() == ts
    final = 1.0 if set_alpha_to_one else float(ours.alpha_bar[0])
    x, eps = _inputs(generator)
    for t, t_prev in [(ts[0], ts[1]), (ts[25], ts[26]), (ts[-1], -1)]:
        noise = torch.randn(x.shape, generator=generator)
        expected = ref.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        got = ddim_step(ours, x, t, t_prev, eps, eta=eta, noise=noise, final_alpha_bar=final)
        assert (got - expected).abs().max() < 1e-5, (t, t_prev)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 20, 50, 250])
def test_ddim_timesteps_match_diffusers(spacing, steps):
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert ddim_timesteps(1000, steps, spacing) == ref.timesteps.tolist()


@pytest.mark.parametrize("T", [1000, 999, 50, 7])
def test_trailing_timesteps_match_diffusers_for_every_step_count(T):
    """Exactly `steps` distinct indices in [0, T), equal to diffusers' — rounding ties included.

    For some (T, steps), e.g. (1000, 61), diffusers' float arange overshoots and it returns one
    extra timestep -1; we return the `steps` it meant.
    """
    for steps in range(1, T + 1):
        ours = ddim_timesteps(T, steps, "trailing")
        ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
        ref.set_timesteps(steps)
        expected = ref.timesteps.tolist()
        assert len(ours) == steps and ours[0] == T - 1 and ours[-1] >= 0, (T, steps)
        assert ours == expected[:steps] and expected[steps:] in ([], [-1]), (T, steps)


def test_full_ddim_trajectory_matches_diffusers(generator):
    """A whole 20-step DDIM run with the exact ε* of a mixture equals diffusers' loop."""
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="leading")
    ref.set_timesteps(20)
    ours = NoiseSchedule.from_diffusers(ref)
    model = GaussianMixture.ring().optimal_eps_model(ours)
    x_T = torch.randn(64, 2, generator=generator)
    x = x_T
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(64)), t, x).prev_sample
    got = sample(model, ours, (64, 2), method="ddim", steps=20, x_T=x_T)
    assert (got - x).abs().max() < 1e-4


@pytest.mark.parametrize("t", [999, 500, 30])
def test_clipped_steps_match_diffusers_clip_sample(t, generator):
    """clip_x0=1 equals diffusers' clip_sample=True (DDPM: posterior mean of the clipped x̂_0;
    DDIM: clipped x̂_0 with the model's ε as direction)."""
    x, eps = _inputs(generator)
    x, eps = 3 * x, 3 * eps                      # big enough that x̂_0 leaves [-1, 1]
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small",
                        clip_sample=True, clip_sample_range=1.0)
    ours = NoiseSchedule.from_diffusers(ref)
    expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    got = ddpm_step(ours, x, t, eps, generator=torch.Generator().manual_seed(7), clip_x0=1.0)
    assert (got - expected).abs().max() < 1e-5
    unclipped = ddpm_step(ours, x, t, eps, generator=torch.Generator().manual_seed(7))
    assert (got - unclipped).abs().max() > 1e-3, "the test inputs must actually be clipped"
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, clip_sample_range=1.0,
                        set_alpha_to_one=True, timestep_spacing="leading")
    ref.set_timesteps(50)
    t = int(ref.timesteps[(ref.timesteps - t).abs().argmin()])
    expected = ref.step(eps, t, x).prev_sample
    got = ddim_step(ours, x, t, max(t - 20, -1), eps, clip_x0=1.0)
    assert (got - expected).abs().max() < 1e-5


def test_clipped_loop_yields_clipped_x0(generator):
    s = NoiseSchedule.linear(50)
    model = lambda x, t: -3 * x                  # noqa: E731 — a deliberately bad eps-model
    x_T = torch.randn(8, 2, generator=generator)
    for loop in (ddpm_loop(model, s, x_T, clip_x0=1.0), ddim_loop(model, s, x_T, steps=5, clip_x0=1.0)):
        states = list(loop)
        assert all(st["x0"].abs().max() <= 1.0 for st in states)
        assert states[-1]["x"].abs().max() <= 1.0 + 1e-5   # the last step returns x̂_0 (up to float32)


def test_t_start_denoises_a_noised_input(generator):
    """Starting from x_{t_start} = q_sample(x_0, t_start) with the exact ε*: the loop visits t_start … 0."""
    s = NoiseSchedule.linear(100)
    model = GaussianMixture.ring().optimal_eps_model(s)
    x = torch.randn(8, 2, generator=generator)
    states = list(ddpm_loop(model, s, x, t_start=10, generator=generator))
    assert [st["t"] for st in states] == list(range(10, -1, -1))
    states = list(ddim_loop(model, s, x, steps=10, t_start=35))
    assert [st["t"] for st in states] == [35, 30, 20, 10, 0]
    full = [st["t"] for st in ddim_loop(model, s, x, steps=10)]
    assert full == [st["t"] for st in ddim_loop(model, s, x, steps=10, t_start=90)]
    with pytest.raises(ValueError, match="t_start"):
        next(ddpm_loop(model, s, x, t_start=100))
    with pytest.raises(ValueError, match="clip_x0"):
        ddpm_step(s, x, 5, x, clip_x0=0.0)


def test_ddim_with_eta_one_has_ddpm_variance():
    s = NoiseSchedule.linear(1000)
    x = torch.zeros(1, 1)
    z = torch.ones(1, 1)
    # x_t = 0 and ε = 0 give x̂_0 = 0, so the step returns exactly σ·z
    sigma = ddim_step(s, x, 500, 499, torch.zeros(1, 1), eta=1.0, noise=z).item()
    assert sigma == pytest.approx(float(s.posterior_variance[500]) ** 0.5, rel=1e-6)


def test_loops_yield_states_and_sample_is_their_end(generator):
    s = NoiseSchedule.linear(50)
    model = GaussianMixture.ring().optimal_eps_model(s)
    x_T = torch.randn(8, 2, generator=generator)
    states = list(ddpm_loop(model, s, x_T, generator=torch.Generator().manual_seed(1)))
    assert [st["t"] for st in states] == list(range(49, -1, -1))
    assert all(st["x"].shape == (8, 2) and st["x0"].shape == (8, 2) for st in states)
    end = sample(model, s, (8, 2), x_T=x_T, generator=torch.Generator().manual_seed(1))
    assert torch.equal(end, states[-1]["x"])
    states = list(ddim_loop(model, s, x_T, steps=5))
    assert len(states) == 5 and states[-1]["t"] == 0
    x, traj = sample(model, s, (8, 2), method="ddim", steps=5, x_T=x_T, return_trajectory=True)
    assert len(traj) == 6 and torch.equal(traj[0], x_T) and torch.equal(traj[-1], x)


def test_same_seed_same_samples():
    s = NoiseSchedule.linear(100)
    torch.manual_seed(0)
    model = MLPDenoiser(num_timesteps=100)
    a = sample(model, s, (16, 2), generator=torch.Generator().manual_seed(5))
    b = sample(model, s, (16, 2), generator=torch.Generator().manual_seed(5))
    c = sample(model, s, (16, 2), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    d1 = sample(model, s, (16, 2), method="ddim", steps=10, generator=torch.Generator().manual_seed(5))
    d2 = sample(model, s, (16, 2), method="ddim", steps=10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(d1, d2)


def test_samplers_build_no_autograd_graph():
    s = NoiseSchedule.linear(20)
    model = MLPDenoiser(num_timesteps=20)
    out = sample(model, s, (4, 2), method="ddim", steps=4)
    assert not out.requires_grad
    assert torch.is_grad_enabled(), "the no_grad of a generator must not leak into the caller"


def test_optimal_model_samples_the_mixture(generator):
    """With the exact ε*, DDIM-50 samples have a log-likelihood close to that of real data."""
    s = NoiseSchedule.linear(1000)
    gmm = GaussianMixture.ring()
    x = sample(gmm.optimal_eps_model(s), s, (2000, 2), method="ddim", steps=50, generator=generator)
    data = gmm.sample(2000, generator)
    assert gmm.log_prob(x).mean() > gmm.log_prob(data).mean() - 0.3


def test_sampler_errors():
    s = NoiseSchedule.linear(100)
    model = MLPDenoiser(num_timesteps=100)
    with pytest.raises(ValueError, match="method"):
        sample(model, s, (2, 2), method="euler")
    with pytest.raises(ValueError, match="DDPM takes all T=100"):
        sample(model, s, (2, 2), method="ddpm", steps=10)
    with pytest.raises(ValueError, match="T=1000.*T=100"):
        sample(MLPDenoiser(num_timesteps=1000), s, (2, 2))
    with pytest.raises(ValueError, match="x_T has shape"):
        sample(model, s, (2, 2), x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(100, 0)
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(100, 10, "uniform")
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(s, torch.zeros(1, 2), 10, 10, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="eta"):
        ddim_step(s, torch.zeros(1, 2), 10, 5, torch.zeros(1, 2), eta=-1)
    with pytest.raises(ValueError, match=r"\[0, T\)"):
        ddpm_step(s, torch.zeros(1, 2), 100, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="noise"):
        ddpm_step(s, torch.zeros(1, 2), 10, torch.zeros(1, 2), noise=torch.zeros(2, 2))

"""Sampler steps vs diffusers' schedulers, loops, determinism and bad input."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from minidiff import NoiseSchedule, ddim_loop, ddim_step, ddim_timesteps, ddpm_loop, ddpm_step, sample
from minidiff.data import GaussianMixture
from minidiff.guidance import ClassifierFreeGuidance
from minidiff.nets import MLPDenoiser
from minidiff.samplers import ddim_coefficients, ddpm_coefficients, infer_device_dtype


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


# ------------------------------------------------------------------ whole trajectories vs diffusers
T_SMALL = 50           # tiny T keeps the full loops fast; β from 1e-3 to 0.4 brings ᾱ_T to 5e-5


def _schedulers(variance_type="fixed_small", clip_sample=False, set_alpha_to_one=True, spacing="leading",
                dtype=torch.float32):
    """diffusers' DDPM and DDIM schedulers, configured explicitly; tables recomputed in ``dtype``."""
    common = dict(num_train_timesteps=T_SMALL, beta_start=1e-3, beta_end=0.4, beta_schedule="linear",
                  prediction_type="epsilon", clip_sample=clip_sample, clip_sample_range=1.0,
                  timestep_spacing=spacing, steps_offset=0)
    ddpm = DDPMScheduler(variance_type=variance_type, **common)
    ddim = DDIMScheduler(set_alpha_to_one=set_alpha_to_one, **common)
    if dtype == torch.float64:
        for s in (ddpm, ddim):
            _float64_tables(s)
        ddim.final_alpha_cumprod = ddim.alphas_cumprod[0] if not set_alpha_to_one else torch.tensor(1.0)
    return ddpm, ddim


@pytest.mark.parametrize("variance_type, clip, dtype, tol", [
    ("fixed_small", False, torch.float32, 1e-4), ("fixed_large", False, torch.float32, 1e-4),
    ("fixed_small", True, torch.float32, 1e-4), ("fixed_large", True, torch.float64, 1e-10)])
def test_full_ddpm_loop_matches_diffusers(variance_type, clip, dtype, tol):
    """All T steps from the same x_T; both draw one randn(x.shape) per step for t > 0 from equally seeded
    CPU generators, so the noise is the same and whole trajectories must agree."""
    ref, _ = _schedulers(variance_type, clip, dtype=dtype)
    ref.set_timesteps(T_SMALL)
    ours = NoiseSchedule.from_diffusers(ref)
    model = GaussianMixture.ring().optimal_eps_model(ours)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x, g = x_T, torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(64)), t, x, generator=g).prev_sample
    got = sample(model, ours, (64, 2), x_T=x_T, generator=torch.Generator().manual_seed(1), variance=variance_type,
                 clip_x0=1.0 if clip else None)
    assert got.dtype == dtype and x.abs().max() > 0.5
    assert (got - x).abs().max() < tol
    other = sample(model, ours, (64, 2), x_T=x_T, generator=torch.Generator().manual_seed(2), variance=variance_type,
                   clip_x0=1.0 if clip else None)
    assert (other - x).abs().max() > 0.1, "a different noise seed must change the samples"


@pytest.mark.parametrize("spacing, set_alpha_to_one, eta, clip", [
    ("leading", True, 0.0, False), ("trailing", False, 0.0, False), ("leading", False, 0.5, False),
    ("trailing", True, 1.0, True)])
def test_full_ddim_loop_matches_diffusers(spacing, set_alpha_to_one, eta, clip):
    """A whole 10-step DDIM run; with η > 0 diffusers gets our per-step noise through ``variance_noise``
    (the same randn(x.shape) draws from an equally seeded generator, one per step with σ > 0)."""
    _, ref = _schedulers(clip_sample=clip, set_alpha_to_one=set_alpha_to_one, spacing=spacing)
    ref.set_timesteps(10)
    ours = NoiseSchedule.from_diffusers(ref)
    final = 1.0 if set_alpha_to_one else float(ours.alpha_bar[0])
    model = GaussianMixture.ring().optimal_eps_model(ours)
    assert ref.timesteps.tolist() == ddim_timesteps(T_SMALL, 10, spacing)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    x, g = x_T, torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        noise = torch.randn(x.shape, generator=g) if eta > 0 else None
        x = ref.step(model(x, t.expand(64)), t, x, eta=eta, variance_noise=noise).prev_sample
    got = sample(model, ours, (64, 2), method="ddim", steps=10, eta=eta, x_T=x_T, spacing=spacing,
                 final_alpha_bar=final, clip_x0=1.0 if clip else None, generator=torch.Generator().manual_seed(1))
    assert (got - x).abs().max() < 1e-4


def test_linspace_ddim_differs_from_diffusers_by_design():
    """minidiff's "linspace" DDIM follows the paper: each visited index steps to the *next visited* index.
    diffusers' DDIMScheduler.step always steps to t − T // steps (here 44 -> 39 while it evaluates 38 next),
    so the two trajectories differ; diffusers' rule, written with ddim_step, reproduces diffusers."""
    _, ref = _schedulers(spacing="linspace")
    ref.set_timesteps(10)
    ours = NoiseSchedule.from_diffusers(ref)
    ts = ddim_timesteps(T_SMALL, 10, "linspace")
    assert ts == ref.timesteps.tolist() == [49, 44, 38, 33, 27, 22, 16, 11, 5, 0]
    model = GaussianMixture.ring().optimal_eps_model(ours)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    theirs, by_their_rule = x_T, x_T
    for t in ts:
        theirs = ref.step(model(theirs, torch.full((64,), t)), t, theirs).prev_sample
        eps = model(by_their_rule, torch.full((64,), t))
        by_their_rule = ddim_step(ours, by_their_rule, t, max(t - T_SMALL // 10, -1), eps)
    assert (by_their_rule - theirs).abs().max() < 1e-4
    got = sample(model, ours, (64, 2), method="ddim", steps=10, spacing="linspace", x_T=x_T)
    assert (got - theirs).abs().max() > 1e-2


# --------------------------------------------------------- loops = their steps, bit for bit
@pytest.mark.parametrize("clip", [None, 1.0])
def test_loops_equal_their_steps_exactly(clip):
    """The loops precompute coefficients; the public steps recompute them: same arithmetic, same bits."""
    s = NoiseSchedule.linear(T_SMALL, 1e-3, 0.4)
    model = GaussianMixture.ring().optimal_eps_model(s)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    g, x = torch.Generator().manual_seed(1), x_T
    states = list(ddpm_loop(model, s, x_T, generator=torch.Generator().manual_seed(1), variance="fixed_large",
                            clip_x0=clip))
    for t, state in zip(range(T_SMALL - 1, -1, -1), states):
        x = ddpm_step(s, x, t, model(x, torch.full((32,), t)), generator=g, variance="fixed_large", clip_x0=clip)
        assert torch.equal(state["x"], x), t
    ts = ddim_timesteps(T_SMALL, 10, "trailing")
    states = list(ddim_loop(model, s, x_T, steps=10, eta=0.7, spacing="trailing", final_alpha_bar=0.99,
                            generator=torch.Generator().manual_seed(1), clip_x0=clip))
    g, x = torch.Generator().manual_seed(1), x_T
    for t, t_prev, state in zip(ts, ts[1:] + [-1], states):
        x = ddim_step(s, x, t, t_prev, model(x, torch.full((32,), t)), eta=0.7, generator=g, final_alpha_bar=0.99,
                      clip_x0=clip)
        assert torch.equal(state["x"], x), t


def test_step_coefficients_are_the_papers():
    """DDPM: x_prev = coef_x0 x̂0 + coef_xt x_t is eq. 11 for the unclipped x̂0; DDIM σ(η=1) = √β̃_t."""
    s = NoiseSchedule.cosine(50)
    for t in (49, 20, 1, 0):
        c = ddpm_coefficients(s, t)
        ab, beta = float(s.alpha_bar[t]), float(s.betas[t])
        # x̂0 = (x − e·ε)/r substituted: x coefficient c_x0/r + c_xt = 1/√α, ε coefficient −c_x0·e/r = −β/(√α √(1−ᾱ))
        assert c.coef_x0 / c.root_alpha_bar + c.coef_other == pytest.approx(1 / math.sqrt(1 - beta), rel=1e-12)
        assert c.coef_x0 * c.eps_scale / c.root_alpha_bar == pytest.approx(beta / math.sqrt((1 - beta) * (1 - ab)), rel=1e-12)
        assert c.sigma == (pytest.approx(float(s.posterior_variance[t]) ** 0.5, rel=1e-12) if t else 0.0)
        assert ddpm_coefficients(s, t, "fixed_large").sigma == (pytest.approx(beta**0.5, rel=1e-12) if t else 0.0)
        if t:
            assert ddim_coefficients(s, t, t - 1, eta=1.0).sigma == pytest.approx(c.sigma, rel=1e-9)
    c = ddim_coefficients(s, 10, -1, final_alpha_bar=1.0)
    assert (c.coef_x0, c.coef_other, c.sigma) == (1.0, 0.0, 0.0)          # the last DDIM step returns x̂0


# --------------------------------------------------------------------- device, dtype, conditions
class _Bf16Eps(nn.Module):
    """A tiny eps-model with bf16 parameters; it insists on bf16 inputs like a real bf16 network."""

    num_timesteps = 50

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2).to(torch.bfloat16)

    def forward(self, x, t, cond=None):
        assert x.dtype == torch.bfloat16, x.dtype
        return 0.1 * self.lin(x)


def test_sample_infers_dtype_from_a_bf16_model():
    s, model = NoiseSchedule.linear(50), _Bf16Eps()
    for method in ("ddpm", "ddim"):
        got = sample(model, s, (8, 2), method=method, steps=5 if method == "ddim" else None,
                     generator=torch.Generator().manual_seed(3))
        assert got.dtype == torch.bfloat16 and torch.isfinite(got.float()).all()
        # x_T is drawn in float32 on the CPU generator, then cast: the same seed gives the same start
        g = torch.Generator().manual_seed(3)
        x_T = torch.randn(8, 2, generator=g).bfloat16()
        same = sample(model, s, (8, 2), method=method, steps=5 if method == "ddim" else None, x_T=x_T, generator=g)
        assert torch.equal(got, same)


def test_sample_keeps_x_T_dtype_and_follows_device_override():
    s = NoiseSchedule.linear(20)
    model = GaussianMixture.ring().optimal_eps_model(s)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sample(model, s, (8, 2), x_T=x_T, generator=torch.Generator().manual_seed(1)).dtype == torch.float64
    assert sample(model, s, (8, 2), generator=torch.Generator().manual_seed(1)).dtype == torch.float32
    assert sample(model, s, (8, 2), device="cpu", method="ddim", steps=4).device.type == "cpu"
    assert infer_device_dtype(lambda x, t: x) == (torch.device("cpu"), torch.float32)


class _MetaEps(nn.Module):
    """Parameters on the 'meta' device (shapes, no data): a stand-in for a GPU model on a CPU-only machine."""

    num_timesteps = 20

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, device="meta", dtype=torch.float16)

    def forward(self, x, t, cond=None):
        assert x.device.type == t.device.type == "meta" and x.dtype == torch.float16
        assert cond["label"].device.type == cond["context"].device.type == "meta"
        assert cond["label"].dtype == torch.long and cond["context"].dtype == torch.float16
        return self.lin(x) + cond["context"].mean(1)


def test_sample_infers_device_from_the_model_and_moves_mapping_cond():
    s, model = NoiseSchedule.linear(20), _MetaEps()
    cond = {"label": torch.arange(4), "context": torch.randn(4, 3, 2)}
    for method in ("ddpm", "ddim"):
        out = sample(model, s, (4, 2), method=method, steps=4 if method == "ddim" else None, cond=cond)
        assert out.device.type == "meta" and out.dtype == torch.float16 and out.shape == (4, 2)
    # a wrapper's model counts too (guidance wrappers hold the network as an attribute)
    assert infer_device_dtype(ClassifierFreeGuidance(model, 1.0, null_label=0))[0].type == "meta"


def test_mapping_cond_reaches_the_model_row_by_row(generator):
    """Each sample sees its own condition: the batch equals the samples drawn one row at a time."""
    s = NoiseSchedule.linear(20)

    def model(x, t, cond):
        return 0.5 * x + cond["context"].mean(1) * (cond["label"][:, None] + 1)

    cond = {"label": torch.tensor([0, 1, 2]), "context": torch.randn(3, 4, 2, generator=generator)}
    x_T = torch.randn(3, 2, generator=generator)
    batch = sample(model, s, (3, 2), method="ddim", steps=5, cond=cond, x_T=x_T)
    for i in range(3):
        row = sample(model, s, (1, 2), method="ddim", steps=5, x_T=x_T[i:i + 1],
                     cond={k: v[i:i + 1] for k, v in cond.items()})
        torch.testing.assert_close(batch[i:i + 1], row, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"cond\['label'\] has batch size 3, expected 2"):
        sample(model, s, (2, 2), cond=cond)


# --------------------------------------------------------------------------------- bad input
def test_bad_numbers_are_rejected():
    s, x = NoiseSchedule.linear(100), torch.zeros(2, 2)
    model = lambda x, t: 0.5 * x          # noqa: E731
    nan, inf = float("nan"), float("inf")
    cases = [
        (lambda: sample(model, s, (2, 2), method="ddim", steps=0), ValueError, r"steps must be in \[1, T\]"),
        (lambda: sample(model, s, (2, 2), method="ddim", steps=-3), ValueError, "steps must be in"),
        (lambda: sample(model, s, (2, 2), method="ddim", steps=101), ValueError, "steps must be in"),
        (lambda: sample(model, s, (2, 2), method="ddim", steps=2.5), TypeError, "steps must be an int"),
        (lambda: sample(model, s, (2, 2), method="ddim", steps=True), TypeError, "steps must be an int"),
        (lambda: sample(model, s, (2, 2), method="ddpm", steps=True), ValueError, "DDPM takes all T=100"),
        (lambda: sample(model, s, (2, 2), method="ddim", eta=inf), ValueError, "eta must be finite"),
        (lambda: sample(model, s, (2, 2), method="ddim", eta=nan), ValueError, "eta must be finite"),
        (lambda: sample(model, s, (2, 2), method="ddim", eta=True), TypeError, "eta must be a real"),
        (lambda: sample(model, s, (2, 2), method="ddpm", eta=0.5), ValueError, "eta=0.5 applies to method='ddim'"),
        (lambda: sample(model, s, (2, 2), t_start=True), TypeError, "t_start must be an int"),
        (lambda: sample(model, s, (2, 2), t_start=10.0), TypeError, "t_start must be an int"),
        (lambda: sample(model, s, (2, 2), method="ddim", t_start=-1), ValueError, r"t_start must be an index in \[0, T\)"),
        (lambda: sample(model, s, (2, 2), variance="learned"), ValueError, "variance must be one of"),
        (lambda: sample(model, s, (2, 2), method="ddim", spacing="uniform"), ValueError, "spacing must be one of"),
        (lambda: sample(model, s, (2, 2), method="ddim", final_alpha_bar=0.0), ValueError, "final_alpha_bar"),
        (lambda: sample(model, s, (2, 2), method="ddim", final_alpha_bar=1.5), ValueError, "final_alpha_bar"),
        (lambda: sample(model, s, (2, 2), method="ddim", final_alpha_bar=nan), ValueError, "final_alpha_bar"),
        (lambda: sample(model, s, (2, 2), clip_x0=nan), ValueError, "clip_x0 must be finite"),
        (lambda: sample(model, s, (2, 2), clip_x0=inf), ValueError, "clip_x0 must be finite"),
        (lambda: sample(model, s, (2, 2), method="ddim", clip_x0=-1.0), ValueError, "clip_x0"),
        (lambda: sample(model, s, (2, 2), clip_x0=True), TypeError, "clip_x0 must be a real"),
        (lambda: sample(model, s, (0, 2)), ValueError, "shape must be"),
        (lambda: sample(model, s, (2, -2)), ValueError, "shape must be"),
        (lambda: sample(model, s, (2,)), ValueError, "shape must be"),
        (lambda: sample(model, s, (2, 2.0)), ValueError, "shape must be"),
        (lambda: sample(model, s, (2, 2), x_T=torch.zeros(2, 3)), ValueError, r"x_T has shape \(2, 3\)"),
        (lambda: sample(model, s, (2, 2), x_T=torch.zeros(2, 2, dtype=torch.long)), ValueError, "floating"),
        (lambda: ddim_step(s, x, 10, 5.0, x), TypeError, "t_prev must be an int"),
        (lambda: ddim_step(s, x, 10, -2, x), ValueError, "t_prev must satisfy"),
        (lambda: ddim_step(s, x, 10.0, 5, x), TypeError, "t must be an int"),
        (lambda: ddpm_step(s, x, True, x), TypeError, "t must be an int"),
        (lambda: ddpm_step(s, x, -1, x), ValueError, r"t must be in \[0, T\)"),
        (lambda: ddim_step(s, x, 10, 5, x, eta=inf), ValueError, "eta must be finite"),
        (lambda: ddim_step(s, x, 10, 5, x, final_alpha_bar=-0.1), ValueError, "final_alpha_bar"),
        (lambda: ddpm_step(s, x, 10, torch.zeros(2, 3)), ValueError, r"eps must have the shape of x_t \(2, 2\)"),
        (lambda: ddpm_step(s, x, 10, x, clip_x0=-2.0), ValueError, "clip_x0"),
        (lambda: ddpm_step(s, x.long(), 10, x), TypeError, "x_t must be a floating tensor"),
        (lambda: ddim_timesteps(100, 10, steps_offset=0.5), TypeError, "steps_offset must be an int"),
        (lambda: ddim_timesteps(True, 1), TypeError, "T must be an int"),
        (lambda: ddim_timesteps(100, 10.0), TypeError, "steps must be an int"),
    ]
    for call, err, match in cases:
        with pytest.raises(err, match=match):
            call()


def test_loops_check_arguments_when_called():
    """A bad argument raises at the call, not at the first next() of the generator."""
    s, x = NoiseSchedule.linear(20), torch.zeros(2, 2)
    model = lambda x, t: x                 # noqa: E731
    with pytest.raises(ValueError, match="variance"):
        ddpm_loop(model, s, x, variance="fixed_tiny")
    with pytest.raises(ValueError, match="eta"):
        ddim_loop(model, s, x, steps=4, eta=float("nan"))
    with pytest.raises(ValueError, match="x_T must be a batched floating tensor"):
        ddpm_loop(model, s, torch.zeros(2))
    with pytest.raises(ValueError, match="t_start"):
        ddim_loop(model, s, x, steps=4, t_start=20)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_discrete_loops_refuse_a_continuous_clock_model(method):
    # ContinuousTime expects t in [0, 1]; fed indices 0..T-1 it would be clamped to t = 1 and sample garbage
    from minidiff.sde import ContinuousTime
    schedule = NoiseSchedule.linear(50)
    bridged = ContinuousTime.from_ddpm(MLPDenoiser(dim=2, width=16, depth=1, num_timesteps=50))
    with pytest.raises(ValueError, match="continuous clock.*sample_sde"):
        sample(bridged, schedule, (4, 2), method=method, steps=None if method == "ddpm" else 5)
    with pytest.raises(ValueError, match="continuous clock"):
        next(ddpm_loop(bridged, schedule, torch.randn(4, 2)))
    sample(bridged.net, schedule, (4, 2), method=method, steps=None if method == "ddpm" else 5)   # the discrete model inside it works

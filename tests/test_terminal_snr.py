"""Zero terminal SNR (Lin et al. 2024, Alg. 1): the rescaled schedule vs its closed form and vs diffusers,
the samplers' guard at ᾱ = 0 (and what diffusers does there), trailing spacing on it, and bad input."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

from minidiff import NoiseSchedule, ddim_loop, ddim_step, ddim_timesteps, ddpm_loop, ddpm_step, q_sample, sample
from minidiff.data import GaussianMixture

SCHEDULES = {
    "linear": (lambda: NoiseSchedule.linear(1000), {"beta_schedule": "linear"}),
    "scaled_linear": (lambda: NoiseSchedule.scaled_linear(1000),
                      {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
    "cosine": (lambda: NoiseSchedule.cosine(1000), {"beta_schedule": "squaredcos_cap_v2"}),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_matches_diffusers(name):
    make, config = SCHEDULES[name]
    ours = make().rescale_zero_terminal_snr()
    ref = DDPMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True, **config)
    # diffusers works in float32: ᾱ near 0 and 1 loses digits there, so compare ᾱ absolutely and β relatively
    torch.testing.assert_close(ours.alpha_bar.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.betas[:-1].float(), ref.betas[:-1], rtol=1e-3, atol=1e-6)
    assert ours.betas[-1] == 1 and ref.betas[-1] == 1
    # the function itself, fed our float64 betas, agrees to round-off
    torch.testing.assert_close(rescale_zero_terminal_snr(make().betas), ours.betas, rtol=1e-9, atol=1e-12)


def test_closed_form_of_algorithm_1():
    """√ᾱ' = (√ᾱ − √ᾱ_T)·√ᾱ_0/(√ᾱ_0 − √ᾱ_T): affine in √ᾱ, first kept, last 0, order kept."""
    base = NoiseSchedule.linear(1000)
    zero = base.rescale_zero_terminal_snr()
    root, first, last = base.alpha_bar.sqrt(), base.alpha_bar[0].sqrt(), base.alpha_bar[-1].sqrt()
    torch.testing.assert_close(zero.alpha_bar.sqrt(), (root - last) * first / (first - last), rtol=1e-10, atol=1e-15)
    assert zero.alpha_bar[0] == pytest.approx(base.alpha_bar[0].item(), rel=1e-14)
    assert zero.alpha_bar[-1] == 0 and zero.zero_terminal_snr and not base.zero_terminal_snr
    assert (zero.alpha_bar.diff() < 0).all() and (zero.betas > 0).all()
    # β'_t = 1 − ᾱ'_t/ᾱ'_{t−1} and the posterior variance stays finite (β̃_T = 1 − ᾱ_{T−2})
    torch.testing.assert_close(zero.betas[1:], 1 - zero.alpha_bar[1:] / zero.alpha_bar[:-1], rtol=1e-12, atol=0)
    assert torch.isfinite(zero.posterior_variance).all()
    assert zero.posterior_variance[-1] == pytest.approx(1 - zero.alpha_bar[-2].item(), rel=1e-12)
    assert zero.snr[-1] == 0 and zero.log_snr[-1] == -torch.inf
    assert zero.rescale_zero_terminal_snr() is zero              # idempotent
    assert zero.name == "linear+zero_snr" and zero.T == 1000
    # SD's schedule leaks signal at T (ᾱ_T ≈ 0.0047, Lin et al. Sec. 3.1); the rescaled one does not
    assert NoiseSchedule.scaled_linear(1000).alpha_bar[-1] == pytest.approx(0.0047, abs=1e-4)


def test_training_and_fractional_indices_at_zero_snr(generator):
    zero = NoiseSchedule.linear(100).rescale_zero_terminal_snr()
    x0, noise = torch.randn(5, 2, generator=generator), torch.randn(5, 2, generator=generator)
    torch.testing.assert_close(q_sample(zero, x0, 99, noise=noise), noise, rtol=0, atol=0)   # x_T is pure noise
    ab = zero.alpha_bar_at(torch.tensor([98.0, 98.5, 99.0], dtype=torch.float64), 3)
    assert torch.isfinite(ab).all() and ab[0].item() == pytest.approx(zero.alpha_bar[98].item(), rel=1e-12) and ab[2] == 0


def test_samplers_refuse_the_step_from_zero_snr():
    zero = NoiseSchedule.linear(100).rescale_zero_terminal_snr()
    x = torch.randn(4, 2)
    model = GaussianMixture.ring().optimal_eps_model(zero)
    for call in (lambda: ddpm_loop(model, zero, x), lambda: ddim_loop(model, zero, x, steps=10, spacing="trailing"),
                 lambda: ddpm_step(zero, x, 99, x), lambda: ddim_step(zero, x, 99, 89, x),
                 lambda: sample(model, zero, (4, 2), method="ddim", steps=10, spacing="trailing")):
        with pytest.raises(ValueError, match=r"alpha_bar\[99\] = 0 .*t_start=98"):
            call()                                   # at the call, not at the first next()


def test_zero_snr_sampling_from_t_start_reproduces_the_data():
    """With the exact ε* the guarded samplers start at T−2 (or skip T−1 with "leading") and give the ring."""
    gmm = GaussianMixture.ring()
    zero = NoiseSchedule.linear(1000).rescale_zero_terminal_snr()
    model = gmm.optimal_eps_model(zero)
    x_T = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    data = gmm.log_prob(gmm.sample(400, torch.Generator().manual_seed(1))).mean()
    runs = {
        "ddpm": sample(model, zero, x_T.shape, x_T=x_T, t_start=998, generator=torch.Generator().manual_seed(2)),
        "ddim trailing": sample(model, zero, x_T.shape, method="ddim", steps=50, spacing="trailing", x_T=x_T,
                                t_start=998),
        "ddim leading": sample(model, zero, x_T.shape, method="ddim", steps=50, x_T=x_T),
    }
    for name, x in runs.items():
        assert abs(gmm.log_prob(x).mean() - data) < 0.3, name      # sampling error of 400 points ~0.05


def test_trailing_steps_match_diffusers_on_zero_snr(generator):
    """DDIM "trailing" on the rescaled schedule equals diffusers' DDIMScheduler step for step, except at
    t = T−1, where diffusers divides by √ᾱ_T = 0 and returns non-finite values (minidiff raises instead)."""
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", rescale_betas_zero_snr=True,
                        timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False, steps_offset=0,
                        prediction_type="epsilon")
    ref.set_timesteps(10)
    ours = NoiseSchedule(ref.betas, zero_terminal_snr=True)
    assert ref.timesteps.tolist() == ddim_timesteps(1000, 10, "trailing")
    x, eps = torch.randn(4, 2, generator=generator), torch.randn(4, 2, generator=generator)
    ts = ref.timesteps.tolist()
    for t, t_prev in zip(ts[1:], ts[2:] + [-1]):
        expected = ref.step(eps, t, x, eta=0.0).prev_sample
        got = ddim_step(ours, x, t, t_prev, eps, final_alpha_bar=ours.alpha_bar[0].item())
        assert (got - expected).abs().max() < 1e-4, t
    first = ref.step(eps, ts[0], x, eta=0.0).prev_sample         # x̂_0 = (x − ε)/0
    assert not torch.isfinite(first).all()
    with pytest.raises(ValueError, match="t_start=998"):
        ddim_step(ours, x, ts[0], ts[1], eps)


def test_bad_input():
    with pytest.raises(ValueError, match="last beta exactly 1"):
        NoiseSchedule([0.1, 0.5], zero_terminal_snr=True)
    with pytest.raises(ValueError, match="T >= 2"):
        NoiseSchedule([1.0], zero_terminal_snr=True)
    with pytest.raises(ValueError, match="strictly inside"):
        NoiseSchedule([1.0, 1.0], zero_terminal_snr=True)            # only the terminal beta may be 1
    with pytest.raises(ValueError, match="strictly inside"):
        NoiseSchedule([0.1, 1.0])                                   # without the flag, as before
    with pytest.raises(TypeError, match="zero_terminal_snr must be a bool"):
        NoiseSchedule([0.1, 1.0], zero_terminal_snr=1)
    with pytest.raises(ValueError, match="needs T >= 2"):
        NoiseSchedule([0.3]).rescale_zero_terminal_snr()
    with pytest.raises(ValueError, match="rescale_zero_terminal_snr"):
        NoiseSchedule.from_diffusers(DDPMScheduler(num_train_timesteps=10, rescale_betas_zero_snr=True))

"""What a network predicts (chapter 2): ε, x_0 or v — the conversions, the eps-model wrapper and the loss."""
import math

import pytest
import torch
from diffusers import DDPMScheduler

from minidiff import NoiseSchedule, diffusion_loss, l_simple, q_sample, sample
from minidiff.data import GaussianMixture
from minidiff.eps import PredictionEps, eps_to_v, eps_to_x0, v_target, v_to_eps, v_to_x0


def draws(seed=0, shape=(6, 3), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)
    ab = torch.rand(shape[0], *[1] * (len(shape) - 1), generator=g, dtype=dtype) * 0.98 + 0.01
    return x0, eps, ab, ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def test_v_target_is_the_direct_formula():
    x0, eps, ab, _ = draws()
    alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
    torch.testing.assert_close(v_target(x0, eps, ab), alpha * eps - sigma * x0, rtol=0, atol=0)
    # a number works too, and (x_t, v) is (x_0, ε) rotated: the norm of each pair is kept
    v = v_target(x0, eps, 0.3)
    x_t = math.sqrt(0.3) * x0 + math.sqrt(0.7) * eps
    torch.testing.assert_close(x_t**2 + v**2, x0**2 + eps**2, rtol=1e-12, atol=1e-12)


def test_v_target_matches_diffusers_get_velocity():
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction")
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    schedule = NoiseSchedule.from_diffusers(scheduler)
    x0, eps, _, _ = draws(1, (5, 1, 4, 4))
    t = torch.tensor([0, 10, 500, 998, 999])
    ab = schedule.gather(torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64), t, x0)
    theirs = scheduler.get_velocity(x0, eps, t)
    torch.testing.assert_close(v_target(x0, eps, ab), theirs, rtol=1e-12, atol=1e-12)


def test_conversions_invert_each_other():
    x0, eps, ab, x_t = draws(2)
    v = v_target(x0, eps, ab)
    torch.testing.assert_close(v_to_eps(x_t, v, ab), eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v_to_x0(x_t, v, ab), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_to_v(x_t, eps, ab), v, rtol=1e-10, atol=1e-10)
    # and they agree with the ε ↔ x̂_0 conversion
    torch.testing.assert_close(v_to_x0(x_t, v, ab), eps_to_x0(x_t, v_to_eps(x_t, v, ab), ab), rtol=1e-10, atol=1e-10)


def test_v_is_defined_at_zero_terminal_snr():
    """At ᾱ = 0 (x_t = ε): ε = x_t and x̂_0 = −v, finite, where eps_to_x0 would divide by zero."""
    x0, eps, _, _ = draws(3)
    v = v_target(x0, eps, 0.0)
    torch.testing.assert_close(v, -x0)
    torch.testing.assert_close(v_to_eps(eps, v, 0.0), eps)
    torch.testing.assert_close(v_to_x0(eps, v, 0.0), x0)
    torch.testing.assert_close(v_to_eps(x0, v, 1.0), v)           # ᾱ = 1: no noise, v = ε
    with pytest.raises(ValueError, match=r"alpha_bar must be finite and in \(0, 1\]"):
        eps_to_v(eps, eps, 0.0)


@pytest.mark.parametrize("fn", [v_target, v_to_eps, v_to_x0, eps_to_v])
def test_conversions_reject_bad_input(fn):
    x = torch.zeros(4, 3)
    for ab in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha_bar must be finite"):
            fn(x, x, ab)
    with pytest.raises(ValueError, match="must have the shape of"):
        fn(x, torch.zeros(4, 2), 0.5)
    with pytest.raises(ValueError, match="same number of dims"):
        fn(x, x, torch.full((4,), 0.5))                 # (B,) would broadcast along the data axis
    with pytest.raises(TypeError, match="floating"):
        fn(torch.zeros(4, 3, dtype=torch.long), x, 0.5)
    with pytest.raises(TypeError, match="bool"):
        fn(x, x, True)


def exact_models(schedule):
    """The exact ε* of a 2-D mixture, and the x_0- and v-models that say the same thing."""
    eps_star = GaussianMixture.ring(k=4, radius=1.5, std=0.2).optimal_eps_model(schedule)

    def ab_of(x, t):
        return schedule.gather(schedule.alpha_bar, t, x)

    def v_model(x, t):
        return eps_to_v(x, eps_star(x, t), ab_of(x, t))

    def x0_model(x, t):
        return eps_to_x0(x, eps_star(x, t), ab_of(x, t))

    return eps_star, x0_model, v_model


def test_prediction_eps_recovers_the_eps_model_and_samples_alike():
    schedule = NoiseSchedule.linear(100)
    eps_star, x0_model, v_model = exact_models(schedule)
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(32, 2, generator=g, dtype=torch.float64), torch.randint(0, 99, (32,), generator=g)
    for prediction, model in (("v", v_model), ("x0", x0_model), ("eps", eps_star)):
        torch.testing.assert_close(PredictionEps(model, schedule, prediction)(x, t), eps_star(x, t), rtol=1e-8, atol=1e-8)
    x_T = torch.randn(64, 2, generator=g, dtype=torch.float64)
    ours = sample(PredictionEps(v_model, schedule, "v"), schedule, x_T.shape, method="ddim", steps=20, x_T=x_T, progress=False)
    ref = sample(eps_star, schedule, x_T.shape, method="ddim", steps=20, x_T=x_T, progress=False)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-7)


def test_prediction_eps_rejects_bad_arguments():
    schedule = NoiseSchedule.linear(100)
    with pytest.raises(ValueError, match="prediction must be one of"):
        PredictionEps(lambda x, t: x, schedule, "score")
    with pytest.raises(TypeError, match="NoiseSchedule"):
        PredictionEps(lambda x, t: x, "linear", "v")
    with pytest.raises(TypeError, match="callable"):
        PredictionEps(3, schedule, "v")

    class Net(torch.nn.Module):
        num_timesteps = 1000

        def forward(self, x, t):
            return x

    with pytest.raises(ValueError, match="T=1000"):
        PredictionEps(Net(), schedule, "v")


class Linear2D(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t[:, None].float() / 100], 1))


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_diffusion_loss_regresses_on_the_target_with_l_simples_draws(prediction):
    schedule, net = NoiseSchedule.cosine(100), Linear2D()
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    loss = diffusion_loss(schedule, prediction=prediction)(net, x0, torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)                 # l_simple's order: t, then ε
    t = torch.randint(0, schedule.T, (16,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = q_sample(schedule, x0, t, eps)
    ab = schedule.alpha_bar[t].float()[:, None]
    target = x0 if prediction == "x0" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(loss, (target - net(x_t, t)).pow(2).mean())


def test_diffusion_loss_default_is_still_l_simple():
    schedule, net = NoiseSchedule.linear(100), Linear2D()
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(7))
    ours = diffusion_loss(schedule)(net, x0, torch.Generator().manual_seed(8))
    assert torch.equal(ours, l_simple(net, schedule, x0, generator=torch.Generator().manual_seed(8)))
    assert torch.equal(ours, diffusion_loss(schedule, prediction="eps")(net, x0, torch.Generator().manual_seed(8)))
    with pytest.raises(ValueError, match="prediction must be one of"):
        diffusion_loss(schedule, prediction="score")

"""minidiff.clock.DiscreteTime: the inverse bridge (a continuous-time model seen by the DDPM/DDIM samplers)."""
from __future__ import annotations

import pytest
import torch

from minidiff import NoiseSchedule, sample
from minidiff.clock import ContinuousTime, CountCalls, DiscreteTime, model_clock
from minidiff.data import GaussianMixture
from minidiff.exact import MixtureConditionalEps, MixtureEps
from minidiff.nets import MLPDenoiser
from minidiff.sde import VPSDE

T = 1000


@pytest.fixture(scope="module")
def linear():
    return NoiseSchedule.linear(T)


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.isotropic([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.5, 0.3, 0.7], [0.5, 0.3, 0.2])


def test_discrete_time_inverts_the_ddpm_bridge():
    """DiscreteTime(ContinuousTime.from_ddpm(net)) is net: index i -> t = (i + 1)/T -> index tT − 1 = i."""
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, width=16, depth=1).double()
    round_trip = DiscreteTime(ContinuousTime.from_ddpm(net))
    x = torch.randn(6, 2, dtype=torch.float64)
    i = torch.tensor([0, 1, 17, 499, 998, 999])
    torch.testing.assert_close(round_trip(x, i), net(x, i), rtol=1e-10, atol=1e-12)
    assert round_trip.clock == "discrete" and model_clock(round_trip) == "discrete" and round_trip.num_timesteps == T
    torch.testing.assert_close(round_trip.time(i, 6), (i.double() + 1) / T, rtol=0, atol=0)
    torch.testing.assert_close(round_trip.time(4, 3), torch.full((3,), 5 / T, dtype=torch.float64))


def test_discrete_time_of_the_exact_sde_model_is_the_exact_ddpm_model(linear, gmm):
    """ε* of the VP-SDE of VPSDE.from_schedule, read at t = (i + 1)/T, is ε* of the DDPM schedule at index i up to the
    bridge's O(1/T) error in the noise level (largest at small t, where ε* of narrow components is steepest)."""
    bridged = DiscreteTime(MixtureEps(gmm, VPSDE.from_schedule(linear)))
    exact = gmm.optimal_eps_model(linear)
    x = 2 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errs = [(bridged(x, torch.full((256,), i)) - exact(x, torch.full((256,), i))).abs().max().item()
            for i in (49, 199, 499, 899)]
    assert all(e < bound for e, bound in zip(errs, (0.1, 0.03, 5e-3, 1e-3))), errs
    assert errs[0] > errs[-1]                                     # the bridge's error shrinks as t grows


def test_discrete_time_samples_with_ddpm_and_ddim(linear, gmm):
    """Chapter 2's samplers run a continuous-time model through the bridge: the same samples as the exact DDPM model
    to within the bridge error, and one model call per step (CountCalls inside the bridge)."""
    counter = CountCalls(MixtureEps(gmm, VPSDE.from_schedule(linear)))
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = sample(DiscreteTime(counter), linear, x_T.shape, "ddim", steps=20, x_T=x_T, progress=False)
    ref = sample(gmm.optimal_eps_model(linear), linear, x_T.shape, "ddim", steps=20, x_T=x_T, progress=False)
    assert counter.calls == 20
    assert (ours - ref).abs().max() < 0.05
    out = sample(DiscreteTime(counter), linear, (50, 2), "ddpm", generator=torch.Generator().manual_seed(2),
                 progress=False)
    assert out.shape == (50, 2) and torch.isfinite(out).all() and counter.calls == 20 + T


def test_discrete_time_forwards_the_condition(linear, gmm):
    cond_model = MixtureConditionalEps(gmm, VPSDE.from_schedule(linear))
    wrapped = DiscreteTime(cond_model)
    assert wrapped.null_cond == cond_model.null_cond == 3 and wrapped.num_classes == 3
    x, y = torch.zeros(4, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    t = torch.tensor([5, 5, 5, 5])
    torch.testing.assert_close(wrapped(x, t, y), cond_model(x, (t.double() + 1) / T, y), rtol=0, atol=0)


def test_discrete_time_bad_inputs(linear, gmm):
    model = MixtureEps(gmm, VPSDE())
    with pytest.raises(TypeError, match="model must be an eps-model"):
        DiscreteTime("model")
    with pytest.raises(ValueError, match=r"already runs on step indices \[0, T\)"):
        DiscreteTime(MLPDenoiser(dim=2, width=16, depth=1))
    with pytest.raises(ValueError, match="already runs on step indices"):
        DiscreteTime(gmm.optimal_eps_model(linear))
    for bad in (1, 0, -3, 2.5, True, None):
        with pytest.raises((TypeError, ValueError), match="T must be an int >= 2"):
            DiscreteTime(model, T=bad)
    wrapped = DiscreteTime(model, T=100)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"t must be a step index in \[0, T-1\]=\[0, 99\], got min 0 and max 100"):
        wrapped(x, torch.tensor([0, 100]))
    with pytest.raises(ValueError, match=r"got min -1"):
        wrapped(x, torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match=r"\[0, T-1\]"):
        wrapped(x, torch.tensor([float("nan"), 3.0]))
    with pytest.raises(ValueError, match=r"shape \(B,\)=\(2,\)"):
        wrapped(x, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="bool"):
        wrapped(x, torch.tensor([True, False]))
    with pytest.raises(TypeError, match="step index"):
        wrapped(x, "3")
    # the DDPM loop refuses a schedule of another length (the wrapper declares num_timesteps)
    with pytest.raises(ValueError, match="built for T=100 steps but the schedule has T=1000"):
        sample(wrapped, linear, (2, 2), "ddim", steps=5, progress=False)

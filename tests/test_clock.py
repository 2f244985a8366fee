"""minidiff.clock and NoiseSchedule.alpha_bar_at: time handling in one place — ᾱ at fractional steps, which
clock a model runs on, the refusal of discrete models by the continuous solvers, and the bridge."""
from __future__ import annotations

import math

import pytest
import torch

from minidiff import NoiseSchedule, sample
from minidiff.clock import (ContinuousTime, CountCalls, DiscreteTime, check_continuous_model, check_time, model_clock,
                            score_fn, time_grid)
from minidiff.data import GaussianMixture
from minidiff.dsm import dsm_loss
from minidiff.exact import MixtureConditionalEps, MixtureEps
from minidiff.guidance import ClassifierFreeGuidance, ClassifierGuidance, MixturePosterior, alpha_bar_at
from minidiff.nets import MLPDenoiser
from minidiff.ode import ode_log_likelihood, ode_loop
from minidiff.sde import VPSDE, em_loop, pc_loop, sample_sde

T = 1000


@pytest.fixture(scope="module")
def linear():
    return NoiseSchedule.linear(T)


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.isotropic([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.5, 0.3, 0.7], [0.5, 0.3, 0.2])


# ------------------------------------------------------------------------------ NoiseSchedule.alpha_bar_at
def test_alpha_bar_at_integer_and_fractional_steps(linear):
    t = torch.tensor([0, 3, 10, 500, T - 1])
    torch.testing.assert_close(linear.alpha_bar_at(t, 5), linear.alpha_bar[t], rtol=0, atol=0)
    torch.testing.assert_close(linear.alpha_bar_at(t.double(), 5), linear.alpha_bar[t], rtol=1e-12, atol=0)
    # log ᾱ is linear between steps: at k + 1/2 the geometric mean of the neighbours
    mid = linear.alpha_bar_at(torch.tensor([10.5, 998.5], dtype=torch.float64), 2)
    ref = (linear.alpha_bar[[10, 998]] * linear.alpha_bar[[11, 999]]).sqrt()
    torch.testing.assert_close(mid, ref, rtol=1e-12, atol=0)
    # a quarter of the way: ᾱ_k (1 − β_{k+1})^{1/4}, i.e. β piecewise constant in continuous time
    torch.testing.assert_close(linear.alpha_bar_at(20.25, 3),
                               (linear.alpha_bar[20] * (1 - linear.betas[21]) ** 0.25).expand(3), rtol=1e-12, atol=0)
    assert linear.alpha_bar_at(7, 4).shape == (4,) and linear.alpha_bar_at(7, 4).dtype == torch.float64
    # the guidance name is a thin alias
    torch.testing.assert_close(alpha_bar_at(linear, t / 2 + 0.3, 5), linear.alpha_bar_at(t / 2 + 0.3, 5))


def test_alpha_bar_at_bad_inputs(linear):
    with pytest.raises((TypeError, ValueError), match=r"t must be in \[0, T\)=\[0, 1000\), got min 0 and max 1000"):
        linear.alpha_bar_at(torch.tensor([0, T]), 2)
    with pytest.raises((TypeError, ValueError), match=r"t must be a step index in \[0, T-1\]=\[0, 999\], got min 999.5"):
        linear.alpha_bar_at(999.5, 1)
    with pytest.raises((TypeError, ValueError), match=r"step index in \[0, T-1\].*got min -0.5"):
        linear.alpha_bar_at(torch.tensor([-0.5, 2.0]), 2)
    with pytest.raises((TypeError, ValueError), match=r"step index in \[0, T-1\]"):
        linear.alpha_bar_at(torch.tensor([float("nan"), 2.0]), 2)
    with pytest.raises((TypeError, ValueError), match=r"t must be a scalar or have shape \(B,\)=\(3,\)"):
        linear.alpha_bar_at(torch.tensor([1.5, 2.0]), 3)
    with pytest.raises((TypeError, ValueError), match="3 entries but the batch has 2"):
        linear.alpha_bar_at(torch.tensor([1, 2, 3]), 2)
    with pytest.raises(TypeError, match="integer step indices"):
        linear.alpha_bar_at(torch.tensor([True, False]), 2)
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises((TypeError, ValueError), match="batch must be an int >= 1"):
            linear.alpha_bar_at(3, bad)


# ------------------------------------------------------------------------------ continuous times
def test_check_time_and_time_grid():
    torch.testing.assert_close(check_time(0.25, 3), torch.full((3,), 0.25, dtype=torch.float64))
    assert time_grid(4, 0.2) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    for bad, match in ((True, "bool"), (torch.tensor([True]), "bool"), (float("nan"), "finite"),
                       (float("inf"), "finite"), ("0.5", "real number"), (torch.tensor([0.2, -1e-9]), r"in \[0, 1\]")):
        with pytest.raises((TypeError, ValueError), match=match):
            check_time(bad)
    for steps in (0, -2, 2.5, True):
        with pytest.raises((TypeError, ValueError), match="steps must be an int >= 1"):
            time_grid(steps, 1e-3)
    for t_eps in (-0.1, 1.0, float("nan"), True):
        with pytest.raises((TypeError, ValueError), match="t_eps"):
            time_grid(10, t_eps)


# ------------------------------------------------------------------------------ which clock a model runs on
def test_models_declare_their_clock(linear, gmm):
    sde = VPSDE.from_schedule(linear)
    net = MLPDenoiser(dim=2, width=16, depth=1)
    assert model_clock(net) == "discrete" and model_clock(gmm.optimal_eps_model(linear)) == "discrete"
    assert model_clock(ContinuousTime(net)) == "continuous" and model_clock(MixtureEps(gmm, sde)) == "continuous"
    assert model_clock(lambda x, t: x) is None                       # a plain function declares nothing
    # wrappers inherit the clock of the model they wrap (.eps_model)
    assert model_clock(CountCalls(CountCalls(ContinuousTime(net)))) == "continuous"
    assert model_clock(CountCalls(net)) == "discrete"
    bridged_cond = ContinuousTime.from_ddpm(MixtureConditionalEps(gmm, linear))
    assert model_clock(ClassifierFreeGuidance(bridged_cond, 1.0)) == "continuous"
    assert model_clock(ClassifierGuidance(net, MixturePosterior(gmm, linear), 1.0, linear)) == "discrete"

    class Odd:
        clock = "sideways"

    with pytest.raises((TypeError, ValueError), match=r"clock must be one of \('discrete', 'continuous'\)"):
        model_clock(Odd())


def test_continuous_solvers_refuse_a_discrete_model(linear, gmm):
    sde = VPSDE.from_schedule(linear)
    x = torch.zeros(4, 2)
    msg = r"trained on step indices \[0, T\)=\[0, 1000\).*ContinuousTime.from_ddpm\(model\)"
    for model in (MLPDenoiser(dim=2, width=16, depth=1), gmm.optimal_eps_model(linear),
                  CountCalls(gmm.optimal_eps_model(linear)), MixtureConditionalEps(gmm, linear)):
        with pytest.raises((TypeError, ValueError), match=msg):
            score_fn(model, sde)
        with pytest.raises((TypeError, ValueError), match=msg):
            sample_sde(model, sde, (4, 2), "euler_maruyama", 3, progress=False)
        with pytest.raises((TypeError, ValueError), match=msg):
            next(ode_loop(model, sde, x, 3))
        with pytest.raises((TypeError, ValueError), match=msg):
            next(pc_loop(model, sde, x, 3))
        with pytest.raises((TypeError, ValueError), match=msg):
            ode_log_likelihood(model, sde, x, solver="euler", steps=1)
        with pytest.raises((TypeError, ValueError), match=msg.replace("score_fn", "dsm_loss")):
            dsm_loss(sde)(model, x, torch.Generator().manual_seed(0))
    # ... and accept it through the bridge; a plain function is trusted
    list(em_loop(ContinuousTime.from_ddpm(gmm.optimal_eps_model(linear)), sde, x, 2, progress=False))
    list(em_loop(lambda x, t: torch.zeros_like(x), sde, x, 2, progress=False))
    with pytest.raises((TypeError, ValueError), match="sde must be an SDE"):
        score_fn(MixtureEps(gmm, sde), linear)
    check_continuous_model(MixtureEps(gmm, sde))                     # no error


# ------------------------------------------------------------------------------ the bridge
def test_bridge_of_the_exact_ddpm_model_matches_the_exact_sde_model(linear, gmm):
    """ContinuousTime.from_ddpm(ε*_DDPM) at t is ε* of the VP-SDE of VPSDE.from_schedule: the same noise level
    up to the bridge's O(1/T) error (1.4e-3 in s(t), tests/test_sde.py), shrinking as t grows."""
    sde = VPSDE.from_schedule(linear)
    bridged = ContinuousTime.from_ddpm(gmm.optimal_eps_model(linear))
    exact = MixtureEps(gmm, sde)
    x = 2 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errs = []
    for t in (0.05, 0.2, 0.5, 0.9):
        tb = torch.full((256,), t, dtype=torch.float64)
        errs.append((bridged(x, tb) - exact(x, tb)).abs().max().item())
    # measured max |Δε| over 256 points: 0.065, 0.017, 2.8e-3, 3.9e-4 — largest at small t, where ε* of the
    # narrow components (std 0.3) is steepest in the noise level
    assert all(e < bound for e, bound in zip(errs, (0.1, 0.03, 5e-3, 1e-3))), errs
    # exactly, the bridge feeds index tT − 1: ᾱ_{tT−1} of the schedule
    tb = torch.tensor([0.2, 0.5], dtype=torch.float64)
    ref = gmm.optimal_eps_model(linear)(x[:2], torch.tensor([199, 499]))
    torch.testing.assert_close(bridged(x[:2], tb), ref, rtol=1e-12, atol=1e-12)


def test_continuous_time_forwards_null_cond_and_cfg_works_on_a_bridged_model(linear, gmm):
    cond = MixtureConditionalEps(gmm, linear)
    bridged = ContinuousTime.from_ddpm(cond)
    assert bridged.null_cond == cond.null_cond == 3 and bridged.num_classes == 3

    class Net(torch.nn.Module):
        null_cond = {"label": 7}
        num_timesteps = 10

        def forward(self, x, t, cond=None):
            return x

    assert ContinuousTime(Net()).null_cond == {"label": 7} and ContinuousTime(MLPDenoiser()).null_cond is None
    # CFG of the bridged model = the bridge of the CFG model (both clocks agree on the guided eps)
    x = 2 * torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.rand(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(3))
    for w in (0.0, 1.5):
        torch.testing.assert_close(ClassifierFreeGuidance(bridged, w)(x, t, y),
                                   ContinuousTime.from_ddpm(ClassifierFreeGuidance(cond, w))(x, t, y), rtol=0, atol=0)
    # and the guided bridged model samples with the SDE solvers
    out = sample_sde(ClassifierFreeGuidance(bridged, 1.0), VPSDE.from_schedule(linear), (8, 2), "ode_heun", 5,
                     cond=torch.zeros(8, dtype=torch.long), progress=False)
    assert out.shape == (8, 2) and torch.isfinite(out).all()


def test_continuous_time_bad_inputs(linear, gmm):
    net = MLPDenoiser(dim=2, width=16, depth=1)
    with pytest.raises((TypeError, ValueError), match="already runs on the continuous clock"):
        ContinuousTime(MixtureEps(gmm, VPSDE()))
    with pytest.raises((TypeError, ValueError), match="already runs on the continuous clock"):
        ContinuousTime.from_ddpm(ContinuousTime(net))
    with pytest.raises(TypeError, match="net must be an eps-model"):
        ContinuousTime("net")
    for scale in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises((TypeError, ValueError), match="scale"):
            ContinuousTime(net, scale=scale)
    with pytest.raises((TypeError, ValueError), match="shift"):
        ContinuousTime(net, shift=float("nan"))
    for T_bad in (1, 0, 2.5, True):
        with pytest.raises((TypeError, ValueError), match="T must be an int >= 2"):
            ContinuousTime.from_ddpm(net, T=T_bad)
    with pytest.raises((TypeError, ValueError), match=r"t must be in \[0, 1\]"):
        ContinuousTime(net)(torch.zeros(2, 2), torch.tensor([0.5, 1.5]))


def test_count_calls_is_transparent(linear, gmm):
    model = MixtureConditionalEps(gmm, linear)
    counter = CountCalls(model)
    assert counter.num_timesteps == T and counter.null_cond == 3 and counter.clock == "discrete"
    x, t = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(counter(x, t, torch.zeros(4, dtype=torch.long)), model(x, t, torch.zeros(4, dtype=torch.long)))
    assert counter.calls == 1
    counter.num_timesteps = 500                                     # chapter 3 sets it on a wrapped net
    assert counter.num_timesteps == 500 and model.num_timesteps == T
    with pytest.raises(AttributeError):
        counter.no_such_attribute
    with pytest.raises(TypeError, match="callable"):
        CountCalls(3)


# ------------------------------------------------------------------ DiscreteTime: the inverse bridge
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

"""NoiseSchedule: constructors vs diffusers, derived quantities, and bad input."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from minidiff import NoiseSchedule


@pytest.mark.parametrize("kind, make", [
    ("linear", lambda: NoiseSchedule.linear(1000)),
    ("squaredcos_cap_v2", lambda: NoiseSchedule.cosine(1000)),
    ("scaled_linear", lambda: NoiseSchedule.scaled_linear(1000)),
])
def test_betas_match_diffusers(kind, make):
    kwargs = {"beta_start": 0.00085, "beta_end": 0.012} if kind == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind, **kwargs)
    ours = make()
    assert torch.allclose(ours.betas.float(), ref.betas, rtol=1e-6, atol=1e-8)
    assert torch.allclose(ours.alpha_bar.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_from_diffusers_scheduler_config_and_dict_agree():
    sched = DDIMScheduler(num_train_timesteps=500, beta_schedule="linear", beta_start=2e-4, beta_end=0.03)
    from_obj = NoiseSchedule.from_diffusers(sched)
    from_cfg = NoiseSchedule.from_diffusers(sched.config)
    from_dict = NoiseSchedule.from_diffusers(dict(sched.config))
    assert from_obj.T == from_cfg.T == from_dict.T == 500
    assert torch.equal(from_obj.betas, sched.betas.double())
    assert torch.allclose(from_cfg.betas, from_obj.betas, atol=1e-9)
    assert torch.equal(from_cfg.betas, from_dict.betas)
    assert torch.allclose(NoiseSchedule.from_diffusers({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 50}).betas,
                          NoiseSchedule.cosine(50).betas)


def test_from_diffusers_rejects_unknown():
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule.from_diffusers({"beta_schedule": "sigmoid", "num_train_timesteps": 10})
    with pytest.raises(TypeError, match="scheduler"):
        NoiseSchedule.from_diffusers(42)


def test_derived_quantities():
    s = NoiseSchedule.linear(100)
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0))
    assert s.alpha_bar_prev[0] == 1 and torch.equal(s.alpha_bar_prev[1:], s.alpha_bar[:-1])
    # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) β_t, and β̃ ≤ β
    assert s.posterior_variance[0] == 0
    assert (s.posterior_variance <= s.betas).all()
    assert torch.allclose(s.snr, s.alpha_bar / (1 - s.alpha_bar))
    assert torch.allclose(s.log_snr, s.snr.log())
    assert (s.log_snr.diff() < 0).all(), "log SNR must decrease monotonically"


def test_cosine_formula_nichol_dhariwal():
    T, s_ = 1000, 0.008
    sched = NoiseSchedule.cosine(T, s=s_)
    f = lambda u: math.cos((u + s_) / (1 + s_) * math.pi / 2) ** 2
    for t in [0, 10, 500, 900]:  # away from the clipped end, ᾱ_t = f(t/T) / f(0)
        assert math.isclose(float(sched.alpha_bar[t]), f((t + 1) / T) / f(0), rel_tol=1e-9)
    assert float(sched.betas.max()) == pytest.approx(0.999)


def test_gather_shapes_and_dtype():
    s = NoiseSchedule.linear(10)
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float32)
    out = s.gather(s.alpha_bar, torch.tensor([0, 5, 9]), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out.flatten(), s.alpha_bar[[0, 5, 9]].float())
    assert s.gather(s.betas, 4, x).shape == (3, 1, 1, 1)  # an int broadcasts over the batch


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.5, 1.0], [-0.1], [float("nan")], []])
def test_betas_outside_unit_interval_raise(betas):
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(betas)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="T"):
        NoiseSchedule.linear(0)
    with pytest.raises(ValueError, match="beta_end"):
        NoiseSchedule.linear(10, beta_end=1.5)
    with pytest.raises(ValueError, match="max_beta"):
        NoiseSchedule.cosine(10, max_beta=1.0)


def test_check_t_errors():
    s = NoiseSchedule.linear(100)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        s.check_t(torch.tensor([0, 100]))
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        s.check_t(-1)
    with pytest.raises(TypeError, match="integer"):
        s.check_t(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="batch"):
        s.check_t(torch.tensor([1, 2]), batch=3)
    with pytest.raises(ValueError, match="shape"):
        s.check_t(torch.zeros(2, 2, dtype=torch.long))
    assert s.check_t(7, batch=4).tolist() == [7] * 4


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, error, match", [
    (lambda: NoiseSchedule.linear(-5), ValueError, "T"),
    (lambda: NoiseSchedule.linear(10.0), TypeError, "T"),
    (lambda: NoiseSchedule.linear(True), TypeError, "T"),
    (lambda: NoiseSchedule.linear(10, beta_start=0.0), ValueError, "beta_start"),
    (lambda: NoiseSchedule.linear(10, beta_start=NAN), ValueError, "beta_start"),
    (lambda: NoiseSchedule.linear(10, beta_end=INF), ValueError, "beta_end"),
    (lambda: NoiseSchedule.linear(10, beta_end=True), TypeError, "beta_end"),
    (lambda: NoiseSchedule.linear(10, beta_start=0.02, beta_end=1e-4), ValueError, "beta_start=0.02 > beta_end"),
    (lambda: NoiseSchedule.scaled_linear(10, beta_start=-1e-3), ValueError, "beta_start"),
    (lambda: NoiseSchedule.scaled_linear(10, beta_start=0.012, beta_end=0.00085), ValueError, "swap"),
    (lambda: NoiseSchedule.scaled_linear(0), ValueError, "T"),
    (lambda: NoiseSchedule.cosine(0), ValueError, "T"),
    (lambda: NoiseSchedule.cosine(10, s=-0.5), ValueError, "s "),
    (lambda: NoiseSchedule.cosine(10, s=-1.0), ValueError, "s "),       # 1 + s = 0 divided by zero
    (lambda: NoiseSchedule.cosine(10, s=NAN), ValueError, "s "),
    (lambda: NoiseSchedule.cosine(10, s="0.008"), TypeError, "s "),
    (lambda: NoiseSchedule.cosine(10, max_beta=0.0), ValueError, "max_beta"),
    (lambda: NoiseSchedule.cosine(10, max_beta=NAN), ValueError, "max_beta"),
    (lambda: NoiseSchedule.cosine(10, max_beta=True), TypeError, "max_beta"),
    (lambda: NoiseSchedule([0.1, 0.2], name=3), TypeError, "name"),
    (lambda: NoiseSchedule("0.1"), TypeError, "betas"),
    (lambda: NoiseSchedule(torch.tensor([True, False])), TypeError, "betas"),
    (lambda: NoiseSchedule(torch.full((2, 2), 0.1)), ValueError, "1-D"),
    (lambda: NoiseSchedule([0.1, INF]), ValueError, "betas"),
])
def test_constructors_reject_bad_numbers(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_constructor_edge_values_are_accepted():
    """Boundaries that are valid: one step, a constant schedule, s = 0, numpy ints."""
    import numpy as np

    one = NoiseSchedule.linear(1)
    assert one.T == 1 and one.betas.tolist() == [1e-4]
    flat = NoiseSchedule.linear(5, beta_start=0.1, beta_end=0.1)
    assert torch.allclose(flat.alpha_bar, 0.9 ** torch.arange(1, 6, dtype=torch.float64))
    assert NoiseSchedule.cosine(np.int64(20), s=0).T == 20
    assert NoiseSchedule.linear(10).check_t(np.int64(3)).item() == 3


@pytest.mark.parametrize("config, error, match", [
    ({"num_train_timesteps": 1.5}, TypeError, "num_train_timesteps"),
    ({"num_train_timesteps": 0}, ValueError, "num_train_timesteps"),
    ({"num_train_timesteps": "1000"}, TypeError, "num_train_timesteps"),
    ({"num_train_timesteps": 10, "beta_schedule": None}, ValueError, "beta_schedule"),
    ({"num_train_timesteps": 10, "beta_start": 0.5, "beta_end": 0.1}, ValueError, "beta_start"),
    ({"num_train_timesteps": 10, "beta_end": 1.0}, ValueError, "beta_end"),
    ({"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}, ValueError, "trained_betas has 2"),
    ({"trained_betas": [0.1, 1.0]}, ValueError, "betas"),
    ({"num_train_timesteps": 10, "rescale_betas_zero_snr": True}, ValueError, "rescale_betas_zero_snr"),
])
def test_from_diffusers_rejects_odd_configs(config, error, match):
    with pytest.raises(error, match=match):
        NoiseSchedule.from_diffusers(config)


def test_from_diffusers_trained_betas():
    s = NoiseSchedule.from_diffusers({"trained_betas": [0.1, 0.2, 0.3]})
    assert s.T == 3 and torch.allclose(s.alpha_bar, torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))


def test_check_t_and_gather_reject_bad_input():
    s = NoiseSchedule.linear(10)
    x = torch.zeros(3, 2)
    for t, error in [(True, TypeError), (2.0, TypeError), ("3", TypeError), ([1, 2], TypeError),
                     (torch.tensor([True, False]), TypeError), (torch.tensor([1j]), TypeError),
                     (10, ValueError), (torch.tensor([-1, 0, 1]), ValueError)]:
        with pytest.raises(error, match="t "):
            s.gather(s.alpha_bar, t, x)
    with pytest.raises(ValueError, match=r"values must be a per-step tensor of shape \(T,\)=\(10,\)"):
        s.gather(s.alpha_bar[:5], 1, x)
    with pytest.raises(ValueError, match="values"):
        s.gather(s.alpha_bar.tolist(), 1, x)
    with pytest.raises(ValueError, match="batched tensor"):
        s.gather(s.alpha_bar, 1, torch.tensor(1.0))
    with pytest.raises(TypeError, match="batch"):
        s.check_t(3, batch=2.0)
    with pytest.raises(ValueError, match="batch"):
        s.check_t(3, batch=-1)
    assert s.check_t(torch.zeros(0, dtype=torch.long), batch=0).shape == (0,)   # an empty batch is fine


def test_check_model_T_mismatch():
    s = NoiseSchedule.linear(100)

    class Model:
        num_timesteps = 1000

    with pytest.raises(ValueError, match="T=1000.*T=100"):
        s.check_model(Model())
    s.check_model(object())  # a model that declares nothing is accepted


@pytest.mark.parametrize("bad", [1000.5, 100.0, "100", True])
def test_check_model_rejects_non_integer_num_timesteps(bad):
    # int(1000.5) would be 1000: a model declaring a fractional step count must not slip through
    class Model:
        num_timesteps = bad

    with pytest.raises(TypeError, match="num_timesteps must be an int"):
        NoiseSchedule.linear(100).check_model(Model())

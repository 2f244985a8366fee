"""Dynamic thresholding of x̂_0 (Saharia et al. 2022): the formula vs a direct NumPy implementation and
vs diffusers' ``_threshold_sample``, the DDPM/DDIM steps vs diffusers' ``thresholding=True``, the loops,
and bad input."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from minidiff import NoiseSchedule, ddim_loop, ddim_step, ddpm_loop, ddpm_step, sample
from minidiff.eps import eps_to_x0
from minidiff.samplers import DynamicThreshold, dynamic_threshold


def _numpy_threshold(x0: np.ndarray, p: float, max_value: float | None, bound: float) -> np.ndarray:
    """Imagen's pseudo-code (App. E), one sample at a time, in units of ``bound``."""
    out = np.empty_like(x0)
    for i, row in enumerate(x0 / bound):
        s = max(np.percentile(np.abs(row), 100 * p), 1.0)
        s = s if max_value is None else min(s, max_value)
        out[i] = np.clip(row, -s, s) / s * bound
    return out


def _big_x0(generator, shape=(6, 3, 8, 8), dtype=torch.float64):
    """x̂_0 whose samples leave [-1, 1] by different amounts (scale 0.3 … 4), so s ranges from 1 to ~10."""
    scale = torch.tensor([0.3, 0.8, 1.5, 2.5, 4.0, 1.0], dtype=dtype)[: shape[0]].reshape(-1, *[1] * (len(shape) - 1))
    return torch.randn(shape, generator=generator, dtype=dtype) * scale


@pytest.mark.parametrize("p, max_value, bound", [(0.995, None, 1.0), (0.9, 3.0, 1.0), (0.5, None, 2.5), (1.0, 1.5, 0.7)])
def test_formula_matches_numpy(p, max_value, bound, generator):
    x0 = _big_x0(generator)
    got = dynamic_threshold(x0, p, max_value, bound)
    ref = _numpy_threshold(x0.flatten(1).numpy(), p, max_value, bound).reshape(x0.shape)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p, max_value", [(0.995, 1.0), (0.995, 5.0), (0.8, 2.0), (0.6, 100.0)])
def test_formula_matches_diffusers_threshold_sample(p, max_value, dtype, generator):
    scheduler = DDPMScheduler(num_train_timesteps=1000, thresholding=True, dynamic_thresholding_ratio=p,
                              sample_max_value=max_value)
    x0 = _big_x0(generator, dtype=dtype)
    expected = scheduler._threshold_sample(x0.clone())
    got = dynamic_threshold(x0, p, max_value)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)     # the same operations, bit for bit
    if max_value == 1.0:                 # diffusers' default sample_max_value=1 caps s at 1: the static clip
        torch.testing.assert_close(got, x0.clamp(-1, 1), rtol=0, atol=0)
    else:
        assert not torch.allclose(got, x0.clamp(-1, 1)), "the inputs must make s > 1 for some sample"


def test_properties(generator):
    x0 = _big_x0(generator)
    out = dynamic_threshold(x0, 0.995, bound=2.0)
    assert out.abs().max() <= 2.0 + 1e-12                            # always inside [-bound, bound]
    inside = x0 / (x0.abs().amax(dim=(1, 2, 3), keepdim=True)) * 1.9   # every entry inside the range: untouched
    torch.testing.assert_close(dynamic_threshold(inside, bound=2.0), inside, rtol=0, atol=0)
    # p = 1 and s capped at 1: the static clip
    torch.testing.assert_close(dynamic_threshold(x0, 1.0, max_value=1.0, bound=2.0), x0.clamp(-2, 2), rtol=0, atol=0)
    # per sample: each row thresholded alone gives the same row (no mixing across the batch)
    rows = torch.cat([dynamic_threshold(x0[i:i + 1], 0.9) for i in range(len(x0))])
    torch.testing.assert_close(dynamic_threshold(x0, 0.9), rows, rtol=0, atol=0)
    # 2-D points (B, 2): the quantile of two entries; a far-out point is pulled back along (almost) its direction
    pt = torch.tensor([[30.0, 3.0], [0.5, -0.2]], dtype=torch.float64)
    out = dynamic_threshold(pt, 0.995, bound=3.0)
    s = 1.0 + 0.995 * (10.0 - 1.0)                # |y| = (10, 1) in units of bound: linear interpolation at p
    torch.testing.assert_close(out[0], torch.tensor([s / s * 3.0, 1.0 / s * 3.0], dtype=torch.float64))
    torch.testing.assert_close(out[1], pt[1], rtol=0, atol=0)


def test_low_precision_input_keeps_its_dtype(generator):
    x0 = _big_x0(generator, dtype=torch.float32)
    got = dynamic_threshold(x0.bfloat16(), 0.9)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), dynamic_threshold(x0.bfloat16().float(), 0.9).bfloat16().float())


def _diffusers(kind: str, p: float, max_value: float):
    common = {"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": False, "thresholding": True,
              "dynamic_thresholding_ratio": p, "sample_max_value": max_value, "prediction_type": "epsilon"}
    if kind == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    ref = DDIMScheduler(set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0, **common)
    ref.set_timesteps(50)
    return ref


@pytest.mark.parametrize("t", [999, 500, 30, 0])
def test_ddpm_step_matches_diffusers_thresholding(t, generator):
    x, eps = (2 * torch.randn(4, 1, 8, 8, generator=generator) for _ in range(2))
    ref = _diffusers("ddpm", 0.9, 4.0)
    ours = NoiseSchedule.from_diffusers(ref)
    out = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7))
    got = ddpm_step(ours, x, t, eps, generator=torch.Generator().manual_seed(7),
                    dynamic_threshold=DynamicThreshold(0.9, max_value=4.0))
    assert (got - out.prev_sample).abs().max() < 1e-5
    x0 = dynamic_threshold(eps_to_x0(x.double(), eps.double(), ours.alpha_bar[t].item()), 0.9, 4.0)
    assert (x0 - out.pred_original_sample).abs().max() < 1e-3 * max(1.0, x0.abs().max().item())
    unthresholded = ddpm_step(ours, x, t, eps, generator=torch.Generator().manual_seed(7))
    assert (got - unthresholded).abs().max() > 1e-3, "the test inputs must actually be thresholded"


@pytest.mark.parametrize("t", [980, 500, 20, 0])
def test_ddim_step_and_x0_match_diffusers_thresholding(t, generator):
    x, eps = (2 * torch.randn(4, 1, 8, 8, generator=generator) for _ in range(2))
    ref = _diffusers("ddim", 0.995, 2.0)
    ours = NoiseSchedule.from_diffusers(ref)
    out = ref.step(eps, t, x, eta=0.0)
    rule = DynamicThreshold(0.995, max_value=2.0)
    got = ddim_step(ours, x, t, t - 20 if t else -1, eps, dynamic_threshold=rule)
    assert (got - out.prev_sample).abs().max() < 1e-4
    # the x̂_0 the loop yields (one step: t_start = t on a one-index sub-sequence below it)
    state = next(ddim_loop(lambda x_, t_: eps, ours, x, steps=50, t_start=t, dynamic_threshold=rule))
    assert state["t"] == t
    assert (state["x0"] - out.pred_original_sample).abs().max() < 1e-4
    assert (state["x"] - out.prev_sample).abs().max() < 1e-4


def test_loops_equal_their_steps_and_sample_passes_the_option(generator):
    s = NoiseSchedule.linear(50)
    def model(x, t):                             # a deliberately bad eps-model: x̂_0 leaves the range
        return -2 * x
    x_T = torch.randn(16, 2, generator=generator)
    rule = DynamicThreshold(0.9, bound=2.0)
    x = x_T
    for t in range(49, -1, -1):
        x = ddpm_step(s, x, t, model(x, t), generator=None, noise=torch.zeros_like(x) if t == 0 else
                      torch.randn(x.shape, generator=torch.Generator().manual_seed(t)), dynamic_threshold=rule)
    states = list(ddim_loop(model, s, x_T, steps=5, dynamic_threshold=rule))
    assert all(st["x0"].abs().max() <= 2.0 + 1e-6 for st in states)
    y = x_T
    for t, t_prev in zip([40, 30, 20, 10, 0], [30, 20, 10, 0, -1]):
        y = ddim_step(s, y, t, t_prev, model(y, t), dynamic_threshold=rule)
    torch.testing.assert_close(states[-1]["x"], y, rtol=0, atol=0)
    # a float is the percentile (bound 1, no cap); sample() hands the option to the loop
    a = sample(model, s, x_T.shape, method="ddim", steps=5, x_T=x_T, dynamic_threshold=0.9)
    b = sample(model, s, x_T.shape, method="ddim", steps=5, x_T=x_T, dynamic_threshold=DynamicThreshold(0.9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ddpm = list(ddpm_loop(model, s, x_T, generator=torch.Generator().manual_seed(0), dynamic_threshold=0.9))
    assert all(st["x0"].abs().max() <= 1.0 + 1e-6 for st in ddpm)
    assert not torch.allclose(a, sample(model, s, x_T.shape, method="ddim", steps=5, x_T=x_T))


def test_bad_input():
    s = NoiseSchedule.linear(20)
    x = torch.randn(3, 2)
    for bad, err, match in [
        ({"percentile": 0.0}, ValueError, "percentile must be in"), ({"percentile": 1.5}, ValueError, "percentile"),
        ({"percentile": math.nan}, ValueError, "percentile must be finite"),
        ({"percentile": True}, TypeError, "percentile must be a real"),
        ({"max_value": 0.5}, ValueError, "max_value must be >= 1"), ({"max_value": math.inf}, ValueError, "max_value"),
        ({"bound": 0.0}, ValueError, "bound must be > 0"), ({"bound": -1.0}, ValueError, "bound"),
        ({"bound": "1"}, TypeError, "bound must be a real"),
    ]:
        with pytest.raises(err, match=match):
            DynamicThreshold(**bad)
        with pytest.raises(err, match=match):
            dynamic_threshold(x, **bad)
    with pytest.raises(TypeError, match="x0 must be a floating-point tensor"):
        dynamic_threshold(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="x0 must have at least 2 dimension"):
        dynamic_threshold(torch.ones(5))
    with pytest.raises(ValueError, match="x0 is an empty batch"):
        dynamic_threshold(torch.ones(0, 2))
    with pytest.raises(ValueError, match="clip_x0 or dynamic_threshold, not both"):
        ddpm_step(s, x, 5, x, clip_x0=1.0, dynamic_threshold=0.995)
    with pytest.raises(ValueError, match="not both"):
        ddim_loop(lambda x_, t_: x_, s, x, steps=4, clip_x0=1.0, dynamic_threshold=0.995)
    with pytest.raises(TypeError, match="dynamic_threshold must be a percentile"):
        ddim_step(s, x, 5, 2, x, dynamic_threshold="dynamic")
    with pytest.raises(TypeError, match="dynamic_threshold must be a percentile"):
        ddpm_loop(lambda x_, t_: x_, s, x, dynamic_threshold=True)
    with pytest.raises(ValueError, match="percentile must be in"):
        sample(lambda x_, t_: x_, s, (3, 2), method="ddim", steps=4, dynamic_threshold=2.0)

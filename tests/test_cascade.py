"""Cascaded generation (chapter 4): resampling helpers, noise conditioning augmentation, the
super-resolution eps-model and its mapping condition, CFG on it, and two-stage sampling checked
against hand-computed values."""
import pytest
import torch

from minidiff import NoiseSchedule, UNet, fit, q_sample, sample
from minidiff.cascade import (LowResCondition, SuperResolutionUNet, augment_low_res, cascade_sample, downsample,
                              super_resolution_loss, upsample)
from minidiff.data import digits
from minidiff.eps import x0_to_eps
from minidiff.guidance import ClassifierFreeGuidance

T = 40


@pytest.fixture
def schedule():
    return NoiseSchedule.linear(T, beta_start=1e-3, beta_end=0.3)


def _sr(schedule, **kw):
    torch.manual_seed(0)
    sr = SuperResolutionUNet(8, 4, aug_schedule=schedule, num_timesteps=T, base_channels=8, **kw)
    torch.nn.init.normal_(sr.unet.out[-1].weight, std=0.1)     # the U-Net's output starts at zero
    return sr.eval()


def _bilinear_matrix(n_in, n_out):
    """The (n_out, n_in) matrix of 1-D linear interpolation with align_corners=False (half-pixel centres,
    clamped at the borders), written out by hand: up(X) = W X Wᵀ."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = int(src)
        hi, frac = min(lo + 1, n_in - 1), src - lo
        w[i, lo] += 1 - frac
        w[i, hi] += frac
    return w


class FakeSRNet(torch.nn.Module):
    """Stands in for SuperResolutionUNet.unet: reads [x_t, z̃, σ_a] and predicts x̂_0 = z̃ + σ_a + 0.1·y
    exactly (as ε), so a deterministic DDIM run ends at that x̂_0. Records every call."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.calls = schedule, []

    def forward(self, inp, t, labels=None):
        self.calls.append((inp.clone(), t.clone(), None if labels is None else labels.clone()))
        x, z, sigma = inp[:, :1], inp[:, 1:2], inp[:, 2:3]
        x0 = z + sigma + (0 if labels is None else 0.1 * labels.to(x)[:, None, None, None])
        return x0_to_eps(x, x0, self.schedule.gather(self.schedule.alpha_bar, t, x))


def _fake_sr(schedule, num_classes=10):
    sr = SuperResolutionUNet(8, 4, aug_schedule=schedule, num_timesteps=T, base_channels=8, num_classes=num_classes)
    sr.unet = FakeSRNet(schedule)
    return sr


class ExactLowRes:
    """The exact eps-model of a point mass at pattern[y]: DDIM's x̂_0 is pattern[y] at every step."""

    num_timesteps = T

    def __init__(self, schedule, patterns):
        self.schedule, self.patterns = schedule, patterns

    def __call__(self, x, t, cond=None):
        return x0_to_eps(x, self.patterns[cond].to(x), self.schedule.gather(self.schedule.alpha_bar, t, x))


# ----------------------------------------------------------------------------- resampling helpers


def test_down_and_upsampling_values(generator):
    x = torch.randn(3, 1, 8, 8, generator=generator)
    low = downsample(x, 2)
    assert low.shape == (3, 1, 4, 4)
    torch.testing.assert_close(low, x.reshape(3, 1, 4, 2, 4, 2).mean((3, 5)))           # 2×2 block means
    torch.testing.assert_close(downsample(torch.full((2, 1, 8, 8), 0.3), 4), torch.full((2, 1, 2, 2), 0.3))
    # bilinear with half-pixel centres, against the interpolation matrix written out by hand
    small = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    w = _bilinear_matrix(2, 4)
    torch.testing.assert_close(w[:, 1], torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(upsample(small[None, None], 4)[0, 0], w @ small @ w.T)
    w8 = _bilinear_matrix(4, 8)
    torch.testing.assert_close(upsample(low.double(), 8), w8 @ low.double() @ w8.T)
    torch.testing.assert_close(upsample(torch.full((2, 1, 4, 4), -0.5), 8), torch.full((2, 1, 8, 8), -0.5))


@pytest.mark.parametrize("bad", [3, 0, -2, True, 2.0, "2", None])
def test_bad_factors_and_sizes(bad):
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises((TypeError, ValueError), match="factor must be an int >= 1"):
        downsample(x, bad)
    if bad != 3:
        with pytest.raises((TypeError, ValueError), match="size must be an int >= 1"):
            upsample(x, bad)


def test_resampling_needs_images():
    for fn, arg in ((downsample, 2), (upsample, 8)):
        with pytest.raises((TypeError, ValueError), match=r"x must be images \(B, C, H, W\)"):
            fn(torch.zeros(1, 8, 8), arg)
        with pytest.raises((TypeError, ValueError), match=r"x must be images \(B, C, H, W\)"):
            fn([[0.0]], arg)


def test_augmentation_is_the_forward_process(schedule, generator):
    low = torch.randn(4, 1, 4, 4, generator=generator)
    noise = torch.randn(4, 1, 8, 8, generator=generator)
    level = torch.tensor([0, 5, 20, 39])
    torch.testing.assert_close(augment_low_res(low, 8, schedule, level, noise=noise),
                               q_sample(schedule, upsample(low, 8), level, noise=noise))
    ab = schedule.alpha_bar[level].float()[:, None, None, None]
    torch.testing.assert_close(augment_low_res(low, 8, schedule, level, noise=noise),
                               ab.sqrt() * upsample(low, 8) + (1 - ab).sqrt() * noise)
    with pytest.raises((TypeError, ValueError), match=r"t must be in \[0, T\)"):
        augment_low_res(low, 8, schedule, T)
    with pytest.raises((TypeError, ValueError), match=r"t must be in \[0, T\)"):
        augment_low_res(low, 8, schedule, torch.tensor([0, 1, 2, -1]))
    for bad in (True, 2.0, torch.full((4,), 2.0)):
        with pytest.raises(TypeError, match="t must be an int or an integer tensor|integer step indices"):
            augment_low_res(low, 8, schedule, bad)
    with pytest.raises((TypeError, ValueError), match="size must be an int >= 1"):
        augment_low_res(low, 0, schedule, 3)


# ----------------------------------------------------------------------------- the SR eps-model


def test_sr_model_wiring(schedule, generator):
    """The U-Net reads exactly [x_t, z̃, σ_a(a_b) as a constant map] and the labels; t passes through."""
    sr = _fake_sr(schedule)
    x, t = torch.randn(3, 1, 8, 8, generator=generator), torch.tensor([1, 7, 30])
    z = torch.randn(3, 1, 8, 8, generator=generator)
    level, y = torch.tensor([0, 12, 39]), torch.tensor([4, 0, 9])
    sr(x, t, {"low_res": z, "aug_level": level, "label": y})
    inp, t_seen, y_seen = sr.unet.calls[-1]
    sigma = (1 - schedule.alpha_bar[level]).sqrt().float()
    torch.testing.assert_close(inp, torch.cat([x, z, sigma[:, None, None, None].expand(3, 1, 8, 8)], 1))
    assert torch.equal(t_seen, t) and torch.equal(y_seen, y)
    # the old constructor builds the same mapping
    assert LowResCondition(z, level, y).keys() == {"low_res", "aug_level", "label"}
    assert LowResCondition(z, level).keys() == {"low_res", "aug_level"}
    sr(x, t, LowResCondition(z, level, y))
    assert all(torch.equal(a, b) for a, b in zip(sr.unet.calls[-1], sr.unet.calls[-2]))


def test_sr_model_reads_low_res_level_and_label(schedule, generator):
    sr = _sr(schedule, num_classes=10)
    x, t = torch.randn(4, 1, 8, 8, generator=generator), torch.full((4,), 10)
    image = upsample(torch.randn(4, 1, 4, 4, generator=generator), 8)
    level, y = torch.full((4,), 3), torch.tensor([1, 2, 3, 4])
    eps = sr(x, t, {"low_res": image, "aug_level": level, "label": y})
    assert eps.shape == x.shape
    assert not torch.allclose(eps, sr(x, t, {"low_res": -image, "aug_level": level, "label": y}))
    assert not torch.allclose(eps, sr(x, t, {"low_res": image, "aug_level": torch.full((4,), 30), "label": y}))
    assert not torch.allclose(eps, sr(x, t, {"low_res": image, "aug_level": level, "label": y + 1}))
    assert sr.null_cond == {"label": 10} and _sr(schedule).null_cond is None


def test_cfg_on_the_sr_model_nulls_only_the_label(schedule, generator):
    """One doubled pass; z̃ and a reach both halves unchanged; only the label becomes the null token,
    and the result is eq. 6 of the two halves."""
    sr = _fake_sr(schedule)
    x, t = torch.randn(3, 1, 8, 8, generator=generator), torch.full((3,), 20)
    cond = {"low_res": torch.randn(3, 1, 8, 8, generator=generator), "aug_level": torch.tensor([2, 5, 9]),
            "label": torch.tensor([1, 2, 3])}
    out = ClassifierFreeGuidance(sr, 2.0)(x, t, cond)
    assert len(sr.unet.calls) == 1
    inp, _, labels = sr.unet.calls[0]
    sigma = (1 - schedule.alpha_bar[cond["aug_level"]]).sqrt().float()[:, None, None, None].expand(3, 1, 8, 8)
    torch.testing.assert_close(inp[:3], torch.cat([x, cond["low_res"], sigma], 1), rtol=0, atol=0)
    assert torch.equal(inp[3:], inp[:3])                                 # x_t, z̃ and σ_a: the same in both halves
    assert torch.equal(labels, torch.tensor([1, 2, 3, 10, 10, 10]))
    ec = sr(x, t, cond)
    eu = sr(x, t, {**cond, "label": torch.full((3,), 10)})
    torch.testing.assert_close(out, 3 * ec - 2 * eu)


def test_sr_model_bad_inputs(schedule, generator):
    sr = _sr(schedule, num_classes=10)
    x, t = torch.randn(2, 1, 8, 8, generator=generator), torch.zeros(2, dtype=torch.long)
    image, level, y = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    with pytest.raises((TypeError, ValueError), match="needs cond="):
        sr(x, t, image)
    with pytest.raises((TypeError, ValueError), match="needs cond="):
        sample(sr, schedule, (2, 1, 8, 8), method="ddim", steps=2, progress=False)
    with pytest.raises((TypeError, ValueError), match=r"needs cond=.*got \['label', 'low_res'\]"):
        sr(x, t, {"low_res": image, "label": y})                                    # aug level missing
    with pytest.raises((TypeError, ValueError), match=r"needs cond=.*'labels'"):
        sr(x, t, {"low_res": image, "aug_level": level, "labels": y})               # a typo is not ignored
    with pytest.raises((TypeError, ValueError), match="upsampled low-res image"):
        sr(x, t, {"low_res": torch.zeros(2, 1, 4, 4), "aug_level": level, "label": y})
    with pytest.raises((TypeError, ValueError), match="batch size"):
        sr(x, t, {"low_res": image, "aug_level": torch.zeros(3, dtype=torch.long), "label": y})
    with pytest.raises((TypeError, ValueError), match="class-conditional"):
        sr(x, t, {"low_res": image, "aug_level": level})                            # label missing
    with pytest.raises((TypeError, ValueError), match="unconditional"):
        _sr(schedule)(x, t, {"low_res": image, "aug_level": level, "label": y})
    with pytest.raises((TypeError, ValueError), match="class labels must be in"):
        sr(x, t, {"low_res": image, "aug_level": level, "label": torch.tensor([3, 12])})
    with pytest.raises((TypeError, ValueError), match=r"t must be in \[0, T\)"):
        sr(x, t, {"low_res": image, "aug_level": torch.full((2,), T), "label": y})
    with pytest.raises(TypeError, match="integer step indices"):
        sr(x, t, {"low_res": image, "aug_level": torch.full((2,), 1.0), "label": y})
    with pytest.raises((TypeError, ValueError), match="x must have shape"):
        sr(torch.zeros(2, 1, 4, 4), t, {"low_res": image, "aug_level": level, "label": y})


@pytest.mark.parametrize("kwargs, match", [
    ({"low_res_size": 3}, "low_res_size"), ({"low_res_size": 8}, "low_res_size"), ({"low_res_size": 0}, "low_res_size"),
    ({"low_res_size": True}, "low_res_size"), ({"low_res_size": 4.0}, "low_res_size"),
    ({"image_size": 0}, "image_size"), ({"image_size": True}, "image_size"), ({"image_size": 8.0}, "image_size"),
    ({"in_channels": 0}, "in_channels"), ({"in_channels": False}, "in_channels")])
def test_sr_model_construction_errors(kwargs, match):
    args = {"image_size": 8, "low_res_size": 4, **kwargs}
    with pytest.raises((TypeError, ValueError), match=match):
        SuperResolutionUNet(**args)


def test_sr_loss_construction_errors(schedule):
    with pytest.raises(TypeError, match="aug_schedule must be a NoiseSchedule"):
        SuperResolutionUNet(8, 4, aug_schedule="linear")
    for bad in (0, T + 1, True, 2.0):
        with pytest.raises((TypeError, ValueError), match="max_aug_level must be an int"):
            super_resolution_loss(schedule, 2, bad)
    for bad in (0, True, 2.0):
        with pytest.raises((TypeError, ValueError), match="factor must be an int >= 1"):
            super_resolution_loss(schedule, bad, 5)
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        super_resolution_loss(None, 2, 5)


def test_sr_loss_builds_the_condition(schedule):
    """The loss feeds the SR model {"low_res": aug(up(down(x))), "aug_level", "label"}: with the fake net
    (x̂_0 = z̃ + σ_a + 0.1 y) at level 0 and inputs whose 2×2 blocks are constant, the recorded z̃ is x
    itself up to the level-0 noise."""
    sr = _fake_sr(schedule)
    x = upsample(torch.linspace(-1, 1, 32).reshape(2, 1, 4, 4), 8)
    x = downsample(x, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)           # constant 2×2 blocks
    loss_fn = super_resolution_loss(schedule, 2, max_aug_level=1)
    loss = loss_fn(sr, (x, torch.tensor([3, 7])), torch.Generator().manual_seed(0))
    inp, _, labels = sr.unet.calls[-1]
    assert torch.isfinite(loss) and torch.equal(labels, torch.tensor([3, 7]))
    sigma0 = (1 - schedule.alpha_bar[0]).sqrt().item()
    torch.testing.assert_close(inp[:, 2], torch.full((2, 8, 8), sigma0))               # level 0 for every example
    up = upsample(downsample(x, 2), 8)
    assert (inp[:, 1:2] - schedule.alpha_bar[0].sqrt().item() * up).abs().max() < 5 * sigma0


def test_sr_training_uses_the_low_res_input(schedule):
    """After brief training the SR model's samples, pooled back to 4×4, follow *their* low-res input."""
    x, y = digits("train")
    torch.manual_seed(0)
    sr = SuperResolutionUNet(8, 4, aug_schedule=schedule, num_timesteps=T, base_channels=16)
    losses = fit(sr, super_resolution_loss(schedule, 2, max_aug_level=T // 4), x, steps=150, batch_size=64, lr=3e-3,
                 seed=0, progress=False)
    assert sum(losses[-20:]) < sum(losses[:20])
    low = downsample(digits("test")[0][:32], 2)
    level = torch.zeros(32, dtype=torch.long)
    cond = {"low_res": augment_low_res(low, 8, schedule, level, generator=torch.Generator().manual_seed(0)),
            "aug_level": level}
    out = sample(sr, schedule, (32, 1, 8, 8), method="ddim", steps=20, cond=cond,
                 generator=torch.Generator().manual_seed(1), progress=False)
    err_own = (downsample(out, 2) - low).abs().mean()
    err_other = (downsample(out, 2) - low.roll(1, 0)).abs().mean()
    assert err_own < 0.8 * err_other, (err_own, err_other)   # measured: 0.32 vs 0.45


# ----------------------------------------------------------------------------- two-stage sampling


@pytest.mark.parametrize("method, aug_level, sr_w", [("ddim", 5, 0.0), ("ddim", 30, 0.0), ("ddim", 12, 2.0),
                                                     ("ddpm", 12, 0.0)])
def test_cascade_sample_equals_the_hand_computed_value(schedule, method, aug_level, sr_w):
    """Exact stages: the base is the eps-model of a point mass at pattern[y], the SR net predicts
    x̂_0 = z̃ + σ_a + 0.1·y. Deterministic DDIM ends at x̂_0, so
    low = pattern[y] and high = √ᾱ_a W pattern[y] Wᵀ + σ_a ξ + σ_a + 0.1·ỹ, with W the bilinear
    matrix, ξ the generator's draw after stage 1's (DDIM η = 0: none; DDPM: T − 1 noise draws) and
    ỹ = (1+w) y − w·null under CFG (DDPM's last step also lands exactly on x̂_0). A wrong upsampling,
    an ignored aug level or labels that never reach the SR net all change the value."""
    patterns = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.8 - 0.9
    labels = torch.tensor([3, 0, 9, 3, 5])
    x_T_low = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    x_T_high = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    sr = _fake_sr(schedule)
    low, high = cascade_sample(ExactLowRes(schedule, patterns), sr, schedule, labels, (1, 4, 4), aug_level=aug_level,
                               method=method, steps=8 if method == "ddim" else None, generator=torch.Generator().manual_seed(2), x_T_low=x_T_low,
                               x_T_high=x_T_high, sr_w=sr_w)
    torch.testing.assert_close(low, patterns[labels], rtol=0, atol=1e-12)
    w = _bilinear_matrix(4, 8)
    gen = torch.Generator().manual_seed(2)
    for _ in range(T - 1 if method == "ddpm" else 0):
        torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)      # stage 1's ancestral noise
    xi = torch.randn(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    ab = schedule.alpha_bar[aug_level]
    y_eff = (1 + sr_w) * labels.double() - sr_w * 10
    expected = ab.sqrt() * (w @ patterns[labels] @ w.T) + (1 - ab).sqrt() * (xi + 1) + 0.1 * y_eff[:, None, None, None]
    torch.testing.assert_close(high, expected, rtol=0, atol=1e-10)
    assert all(torch.equal(call[2], labels if sr_w == 0 else torch.cat([labels, torch.full((5,), 10)]))
               for call in sr.unet.calls)


def test_cascade_sample_with_real_nets_is_deterministic(schedule):
    torch.manual_seed(0)
    base = ClassifierFreeGuidance(UNet(image_size=4, base_channels=8, num_timesteps=T, num_classes=10), 1.0)
    sr = _sr(schedule, num_classes=10)
    labels = torch.arange(5)
    runs = [cascade_sample(base, sr, schedule, labels, (1, 4, 4), aug_level=5, method="ddim", steps=4,
                           generator=torch.Generator().manual_seed(2)) for _ in range(2)]
    (low, high), (low2, high2) = runs
    assert low.shape == (5, 1, 4, 4) and high.shape == (5, 1, 8, 8)
    assert low.abs().max() <= 1 and torch.isfinite(high).all()
    assert torch.equal(low, low2) and torch.equal(high, high2)
    # an unconditional SR model gets no labels: only z̃ and a
    sr_u = _fake_sr(schedule, num_classes=None)
    cascade_sample(base, sr_u, schedule, labels, (1, 4, 4), steps=4, generator=torch.Generator().manual_seed(2))
    assert all(call[2] is None for call in sr_u.unet.calls)


def test_cascade_sample_bad_inputs(schedule):
    base = ExactLowRes(schedule, torch.zeros(10, 1, 4, 4))
    sr, y = _fake_sr(schedule), torch.arange(3)
    with pytest.raises((TypeError, ValueError), match=r"labels must have shape \(B,\)"):
        cascade_sample(base, sr, schedule, torch.zeros(2, 2, dtype=torch.long), (1, 4, 4))
    with pytest.raises((TypeError, ValueError), match="integer classes"):
        cascade_sample(base, sr, schedule, torch.zeros(3), (1, 4, 4))
    for shape in ((1, 8, 8), (2, 4, 4), (4, 4), 4):
        with pytest.raises((TypeError, ValueError), match=r"low_shape must be .*=\(1, 4, 4\)"):
            cascade_sample(base, sr, schedule, y, shape)
    for bad in (-1, T, True, 2.0, torch.tensor(2)):
        with pytest.raises((TypeError, ValueError), match=r"aug_level must be an int step index in \[0, T\)=\[0, 40\)"):
            cascade_sample(base, sr, schedule, y, (1, 4, 4), aug_level=bad)
    for bad in (0, -3, True, 2.5):
        with pytest.raises((TypeError, ValueError), match="steps must be an int >= 1"):
            cascade_sample(base, sr, schedule, y, (1, 4, 4), steps=bad)
    with pytest.raises((TypeError, ValueError), match="steps must be in"):
        cascade_sample(base, sr, schedule, y, (1, 4, 4), steps=T + 1)
    with pytest.raises((TypeError, ValueError), match="method must be one of"):
        cascade_sample(base, sr, schedule, y, (1, 4, 4), method="euler")
    with pytest.raises(ValueError, match="method='ddpm' takes all T steps; got steps=8"):
        cascade_sample(base, sr, schedule, y, (1, 4, 4), method="ddpm", steps=8)   # was silently ignored
    for bad in (float("nan"), -1.0, True):
        with pytest.raises((TypeError, ValueError), match="sr_w must"):
            cascade_sample(base, sr, schedule, y, (1, 4, 4), sr_w=bad)
    with pytest.raises((TypeError, ValueError), match="null condition"):            # CFG needs a class-conditional SR model
        cascade_sample(base, _fake_sr(schedule, num_classes=None), schedule, y, (1, 4, 4), steps=4, sr_w=1.0)
    with pytest.raises(TypeError, match="sr_model must be a SuperResolutionUNet"):
        cascade_sample(base, ClassifierFreeGuidance(sr, 1.0), schedule, y, (1, 4, 4))

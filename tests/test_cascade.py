"""Cascaded generation (chapter 4): resampling helpers, noise conditioning augmentation, the
super-resolution eps-model and two-stage sampling."""
import pytest
import torch

from minidiff import NoiseSchedule, UNet, fit, q_sample, sample
from minidiff.cascade import (LowResCondition, SuperResolutionUNet, augment_low_res, cascade_sample, downsample,
                              super_resolution_loss, upsample)
from minidiff.data import digits
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


def test_down_and_upsampling(generator):
    x = torch.randn(3, 1, 8, 8, generator=generator)
    low = downsample(x, 2)
    assert low.shape == (3, 1, 4, 4)
    torch.testing.assert_close(low[:, :, 0, 0], x[:, :, :2, :2].mean((2, 3)))
    torch.testing.assert_close(downsample(torch.full((2, 1, 8, 8), 0.3), 4), torch.full((2, 1, 2, 2), 0.3))
    up = upsample(low, 8)
    assert up.shape == (3, 1, 8, 8)
    torch.testing.assert_close(upsample(torch.full((2, 1, 4, 4), -0.5), 8), torch.full((2, 1, 8, 8), -0.5))
    torch.testing.assert_close(downsample(up, 2).mean(), low.mean(), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="factor"):
        downsample(x, 3)
    with pytest.raises(ValueError, match="images"):
        upsample(x[0], 8)


def test_augmentation_is_the_forward_process(schedule, generator):
    low = torch.randn(4, 1, 4, 4, generator=generator)
    noise = torch.randn(4, 1, 8, 8, generator=generator)
    level = torch.tensor([0, 5, 20, 39])
    torch.testing.assert_close(augment_low_res(low, 8, schedule, level, noise=noise),
                               q_sample(schedule, upsample(low, 8), level, noise=noise))


def test_sr_model_reads_low_res_level_and_label(schedule, generator):
    sr = _sr(schedule, num_classes=10)
    x, t = torch.randn(4, 1, 8, 8, generator=generator), torch.full((4,), 10)
    image = upsample(torch.randn(4, 1, 4, 4, generator=generator), 8)
    y = torch.tensor([1, 2, 3, 4])
    eps = sr(x, t, LowResCondition(image, torch.full((4,), 3), y))
    assert eps.shape == x.shape
    assert not torch.allclose(eps, sr(x, t, LowResCondition(-image, torch.full((4,), 3), y)))     # low-res image
    assert not torch.allclose(eps, sr(x, t, LowResCondition(image, torch.full((4,), 30), y)))     # aug level
    assert not torch.allclose(eps, sr(x, t, LowResCondition(image, torch.full((4,), 3), y + 1)))  # label


def test_sr_model_bad_inputs(schedule, generator):
    sr = _sr(schedule, num_classes=10)
    x, t = torch.randn(2, 1, 8, 8, generator=generator), torch.zeros(2, dtype=torch.long)
    image, level = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="needs cond=LowResCondition"):
        sr(x, t, image)
    with pytest.raises(ValueError, match="needs cond=LowResCondition"):
        sample(sr, schedule, (2, 1, 8, 8), method="ddim", steps=2, progress=False)
    with pytest.raises(ValueError, match="upsampled low-res image"):
        sr(x, t, LowResCondition(torch.zeros(2, 1, 4, 4), level, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="class-conditional"):
        sr(x, t, LowResCondition(image, level))                                   # label missing
    with pytest.raises(ValueError, match="class labels must be in"):
        sr(x, t, LowResCondition(image, level, torch.tensor([3, 12])))
    with pytest.raises(ValueError, match=r"t must be in \[0, T\)"):
        sr(x, t, LowResCondition(image, torch.full((2,), T), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="x must have shape"):
        sr(torch.zeros(2, 1, 4, 4), t, LowResCondition(image, level, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="low_res_size"):
        SuperResolutionUNet(8, 3)
    with pytest.raises(ValueError, match="max_aug_level"):
        super_resolution_loss(schedule, 2, 0)


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
    cond = LowResCondition(augment_low_res(low, 8, schedule, level, generator=torch.Generator().manual_seed(0)), level)
    out = sample(sr, schedule, (32, 1, 8, 8), method="ddim", steps=20, cond=cond,
                 generator=torch.Generator().manual_seed(1), progress=False)
    err_own = (downsample(out, 2) - low).abs().mean()
    err_other = (downsample(out, 2) - low.roll(1, 0)).abs().mean()
    assert err_own < 0.8 * err_other, (err_own, err_other)   # measured: 0.32 vs 0.45


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_cascade_sample_shapes_and_determinism(schedule, method):
    torch.manual_seed(0)
    base = ClassifierFreeGuidance(UNet(image_size=4, base_channels=8, num_timesteps=T, num_classes=10), 1.0)
    sr = _sr(schedule, num_classes=10)
    labels = torch.arange(5)
    runs = [cascade_sample(base, sr, schedule, labels, (1, 4, 4), aug_level=5, method=method, steps=4,
                           generator=torch.Generator().manual_seed(2)) for _ in range(2)]
    (low, high), (low2, high2) = runs
    assert low.shape == (5, 1, 4, 4) and high.shape == (5, 1, 8, 8)
    assert low.abs().max() <= 1 and torch.isfinite(high).all()
    assert torch.equal(low, low2) and torch.equal(high, high2)
    # an unconditional SR model ignores the labels
    _, high_u = cascade_sample(base, _sr(schedule), schedule, labels, (1, 4, 4), steps=4, method=method,
                               generator=torch.Generator().manual_seed(2))
    assert high_u.shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\)"):
        cascade_sample(base, sr, schedule, torch.zeros(2, 2, dtype=torch.long), (1, 4, 4))

"""Time-dependent classifiers on noisy inputs (chapter 4): shapes, independence, errors, training."""
import pytest
import torch

from minidiff import NoiseSchedule, fit
from minidiff.data import digits
from minidiff.guidance import classifier_loss
from minidiff.nets import NoisyClassifier2D, NoisyDigitClassifier


@pytest.mark.parametrize("make, x", [
    (lambda: NoisyClassifier2D(num_classes=4, num_timesteps=100), torch.randn(6, 2)),
    (lambda: NoisyDigitClassifier(num_classes=10, base_channels=8, num_timesteps=100), torch.randn(6, 1, 8, 8)),
    (lambda: NoisyDigitClassifier(num_classes=3, image_size=16, in_channels=2, base_channels=8,
                                  channel_mults=(1, 2, 2), num_timesteps=100), torch.randn(6, 2, 16, 16)),
], ids=["2d", "digits", "16x16-3-levels"])
def test_logits_shape_time_dependence_and_independence(make, x):
    torch.manual_seed(0)
    clf = make().eval()
    t = torch.full((6,), 10)
    logits = clf(x, t)
    assert logits.shape == (6, clf.num_classes) and torch.isfinite(logits).all()
    assert not torch.allclose(logits, clf(x, torch.full((6,), 90)))           # it reads the time
    # example 0's logits do not depend on the other examples (per-example input gradients)
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:])
    torch.testing.assert_close(clf(x2, t)[0], logits[0])
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(clf(x, t)[0, 0], x)
    assert grad[1:].abs().max() == 0 and grad[0].abs().max() > 0


def test_bad_inputs():
    clf2, clfd = NoisyClassifier2D(num_classes=3, num_timesteps=100), NoisyDigitClassifier(base_channels=8, num_timesteps=100)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        clf2(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        clfd(torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t must be in \[0, T\)"):
        clf2(torch.randn(4, 2), torch.full((4,), 100))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        NoisyClassifier2D(num_classes=1)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        NoisyDigitClassifier(num_classes=1)
    with pytest.raises(ValueError, match="divisible"):
        NoisyDigitClassifier(image_size=6, channel_mults=(1, 2, 2))


def test_digit_classifier_learns_on_noisy_digits():
    """A few hundred steps of classifier_loss: clearly above chance at low noise, near chance at t = T−1."""
    schedule = NoiseSchedule.linear(1000)
    x, y = digits("train")
    torch.manual_seed(0)
    clf = NoisyDigitClassifier(base_channels=16)
    fit(clf, classifier_loss(schedule), (x, y), steps=120, batch_size=128, lr=3e-3, seed=0, progress=False)
    x_test, y_test = digits("test")
    with torch.no_grad():
        acc_clean = (clf(x_test, torch.zeros(len(y_test), dtype=torch.long)).argmax(1) == y_test).float().mean()
        noisy = torch.randn(x_test.shape, generator=torch.Generator().manual_seed(0))
        acc_noise = (clf(noisy, torch.full((len(y_test),), 999)).argmax(1) == y_test).float().mean()
    assert acc_clean > 0.6, acc_clean
    assert acc_noise < 0.25, acc_noise

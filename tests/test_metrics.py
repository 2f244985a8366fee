"""Sample-quality metrics: MMD, Fréchet distance, the digit classifier and its summary."""
import numpy as np
import pytest
import torch

from minidiff.data import digits
from minidiff.metrics import classifier_accuracy, digit_classifier, digit_metrics, frechet_distance, mmd


def test_mmd_separates_distributions(generator):
    a, b = torch.randn(400, 2, generator=generator), torch.randn(400, 2, generator=generator)
    shifted = torch.randn(400, 2, generator=generator) + 1.0
    same, diff = mmd(a, b), mmd(a, shifted)
    assert abs(same) < 0.02 and diff > 0.1 and diff > 10 * abs(same)
    with pytest.raises(ValueError, match="same D"):
        mmd(a, torch.zeros(4, 3))


def test_frechet_distance_closed_form(generator):
    """For Gaussians the formula is exact; with diagonal covariances it reduces to Σ (σ_a − σ_b)²."""
    a = torch.randn(20_000, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5]) + 1.0
    b = torch.randn(20_000, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.5, 1.0, 0.5])
    expected = 3.0 + (0.5**2 + 1.0**2 + 0.0)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)
    assert abs(frechet_distance(a, a)) < 1e-6
    with pytest.raises(ValueError, match="features"):
        frechet_distance(a, b[:, :2])


def test_digit_classifier_is_accurate_and_metrics_rank_sensibly():
    clf = digit_classifier()
    x_test, y_test = digits("test")
    assert classifier_accuracy(clf, x_test, y_test) > 0.95
    real = digit_metrics(x_test[:200], clf, x_test[200:])
    noise = digit_metrics(torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, clf, x_test[200:])
    assert real["frechet"] < noise["frechet"] / 5
    assert real["class_entropy"] > 2.1 and real["confidence"] > 0.9
    assert np.isfinite(list(real.values())).all()
    with pytest.raises(ValueError, match="images"):
        digit_metrics(torch.zeros(4, 64), clf, x_test)

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
    with pytest.raises(ValueError, match="same F"):
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


NAN, INF = float("nan"), float("inf")


def _rng_states():
    import random

    return random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state()


def test_digit_classifier_leaves_global_rngs_alone_and_is_deterministic(monkeypatch, tmp_path):
    """Empty cache (trains) and warm cache (loads): torch's, NumPy's and random's global states are
    unchanged, and training from scratch gives the same weights whatever the global seed was.
    (A 5-step configuration keeps it fast; the config is part of the cache key.)"""
    from minidiff import metrics

    monkeypatch.setitem(metrics.CLASSIFIER_CONFIG, "steps", 5)
    weights = []
    for run, global_seed in enumerate((1234, 99)):
        monkeypatch.setenv("MINIDIFF_CACHE", str(tmp_path / f"cache{run}"))   # an empty cache each run
        torch.manual_seed(global_seed)                  # a global state the classifier must not depend on
        np.random.seed(global_seed)
        before = _rng_states()
        fresh = digit_classifier()
        assert list((tmp_path / f"cache{run}").glob("digit_classifier-*")), "the cache should hold it now"
        after_train = _rng_states()
        warm = digit_classifier()
        after_load = _rng_states()
        for after in (after_train, after_load):
            assert after[0] == before[0] and after[1] == before[1] and torch.equal(after[2], before[2])
        for a, b in zip(fresh.state_dict().values(), warm.state_dict().values()):
            assert torch.equal(a, b)
        weights.append(fresh.state_dict())
    for a, b in zip(weights[0].values(), weights[1].values()):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="use_cache"):
        digit_classifier(use_cache="no")


def test_mmd_rejects_bad_bandwidths_and_samples(generator):
    a, b = torch.randn(20, 2, generator=generator), torch.randn(30, 2, generator=generator)
    for bw, error in [((0.0,), ValueError), ((1.0, -1.0), ValueError), ((NAN,), ValueError), ((INF,), ValueError),
                      ((), TypeError), ("0.5", TypeError), ((True,), TypeError), (0.0, ValueError)]:
        with pytest.raises(error, match="bandwidths"):
            mmd(a, b, bandwidths=bw)
    assert mmd(a, b, bandwidths=0.7) == pytest.approx(mmd(a, b, bandwidths=(0.7,)))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(a[:1], b)
    with pytest.raises(ValueError, match="NaN"):
        mmd(a, torch.full((5, 2), NAN))
    with pytest.raises(ValueError, match="no median distance"):
        mmd(torch.zeros(4, 2), torch.zeros(5, 2))              # identical points: no default bandwidth
    assert mmd(torch.zeros(4, 2), torch.zeros(5, 2), bandwidths=(1.0,)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        mmd(a.numpy(), b)


def test_mmd_closed_form_for_two_points():
    """x = {0, 0}, y = {d, d} on a line, one bandwidth h: MMD² = 1 + 1 − 2 exp(−d²/2h²)."""
    x, y = torch.zeros(2, 1), torch.full((2, 1), 1.5)
    assert mmd(x, y, bandwidths=(2.0,)) == pytest.approx(2 - 2 * np.exp(-1.5**2 / 8))


def test_frechet_distance_rejects_bad_features_and_handles_one_feature(generator):
    a = torch.randn(50, 3, generator=generator)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(a, torch.full((50, 3), NAN))
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(torch.full((50, 3), INF), a)
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(a, torch.randn(50))
    # F = 1: (μ_a − μ_b)² + (σ_a − σ_b)² exactly, with unbiased sample variances
    x, y = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [5.0], [9.0]])
    assert frechet_distance(x, y) == pytest.approx((1 - 5) ** 2 + (np.sqrt(2.0) - 4.0) ** 2)


def test_accuracy_and_digit_metrics_reject_bad_input():
    clf = DigitClassifierStub()
    images = torch.zeros(4, 1, 8, 8)
    assert classifier_accuracy(clf, images, torch.tensor([3, 3, 1, 3])) == 0.75
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\)=\(4,\)"):
        classifier_accuracy(clf, images, torch.tensor([3]))                # would broadcast silently
    with pytest.raises(TypeError, match="integer classes"):
        classifier_accuracy(clf, images, torch.zeros(4))
    with pytest.raises(ValueError, match="empty batch"):
        classifier_accuracy(clf, images[:0], torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="reference must be at least 2"):
        digit_metrics(images, clf, torch.zeros(4, 64))
    with pytest.raises(ValueError, match="samples must be at least 2"):
        digit_metrics(images[:1], clf, images)
    with pytest.raises(ValueError, match="samples contain NaN"):
        digit_metrics(torch.full((4, 1, 8, 8), NAN), clf, images)


class DigitClassifierStub(torch.nn.Module):
    """Logits favour class 3; features are the mean pixel and its square (enough for the checks)."""

    def features(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, m**2], 1)

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((x.shape[0],), 3), 10).float() * 5


def test_mixture_metrics_of_data_vs_of_noise():
    from minidiff.data import GaussianMixture
    from minidiff.metrics import mixture_metrics
    ring = GaussianMixture.ring()
    data, ref = (ring.sample(800, torch.Generator().manual_seed(s)).float() for s in (0, 1))
    good, bad = mixture_metrics(ring, data, ref), mixture_metrics(ring, 3 * torch.randn(800, 2), ref)
    assert good["loglik"] > bad["loglik"] and good["mmd"] < bad["mmd"] < 1
    assert good["off"] < 3 < 50 < bad["off"]                # 3 std in 2-D: P = e^{-4.5} ≈ 1 % for true samples
    assert good["median"] >= good["loglik"] - 1            # the median is robust to the tail
    with pytest.raises(ValueError, match="far"):
        mixture_metrics(ring, data, ref, far=0)

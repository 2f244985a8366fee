"""Improved precision/recall (Kynkäänniemi et al. 2019): k-NN manifold estimates."""
import itertools

import pytest
import torch

from minidiff.metrics import precision_recall


def brute_force(real, fake, k):
    """Direct transcription of eqs. 1–2 with Python loops."""
    def radius(x, i):
        d = sorted(float((x[i] - x[j]).norm()) for j in range(len(x)) if j != i)
        return d[k - 1]

    def inside(p, centres):
        return any(float((p - centres[i]).norm()) <= radius(centres, i) for i in range(len(centres)))

    return (sum(inside(f, real) for f in fake) / len(fake), sum(inside(r, fake) for r in real) / len(real))


def test_matches_brute_force(generator):
    for k, shift in itertools.product((1, 3), (0.0, 0.7)):
        real = torch.randn(30, 3, generator=generator)
        fake = 1.3 * torch.randn(25, 3, generator=generator) + shift
        pr = precision_recall(real, fake, k=k)
        assert (pr["precision"], pr["recall"]) == pytest.approx(brute_force(real, fake, k))


def test_hand_computed_1d():
    # real at 0, 1, 2, 3: k=1 radii all 1, so the real manifold is [-1, 4]
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [3.9], [9.0], [9.5]])
    pr = precision_recall(real, fake, k=1)
    assert pr["precision"] == 0.5                    # 0.5 and 3.9 lie within 1 of a real point
    # fake radii (k=1): 0.5 -> 3.4, 3.9 -> 3.4, 9 -> 0.5, 9.5 -> 0.5: all real points within 3.4 of 0.5 or 3.9
    assert pr["recall"] == 1.0


def test_fidelity_and_diversity_extremes(generator):
    real = torch.randn(300, 4, generator=generator)
    same = precision_recall(real, real)
    assert same == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 20)
    assert far == {"precision": 0.0, "recall": 0.0}
    # mode collapse: fakes only near one corner of the data -> precise but low recall
    collapsed = real[real[:, 0] > 1.0] * torch.tensor([1.0, 0.3, 0.3, 0.3])
    pr = precision_recall(real, collapsed)
    assert pr["precision"] > 0.8 and pr["recall"] < 0.3


def test_bad_inputs():
    a = torch.randn(10, 3)
    with pytest.raises(ValueError, match="features"):
        precision_recall(a, torch.randn(10, 2))
    with pytest.raises(ValueError, match="features"):
        precision_recall(a[0], a)
    for k in (0, -1, 10):
        with pytest.raises(ValueError, match=r"k .* must be an int in \[1, 9\]"):
            precision_recall(a, a, k=k)
    for k in (2.5, True, None):
        with pytest.raises(TypeError, match="k .* must be an int"):
            precision_recall(a, a, k=k)
    with pytest.raises(ValueError, match="at least 2"):
        precision_recall(a[:1], a, k=1)
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(torch.full((10, 3), float("nan")), a)
    with pytest.raises(TypeError, match="fake_feats"):
        precision_recall(a, a.numpy())

"""The scikit-learn digits as the course loads them: values on the 17-level grid, a fixed split, bad input."""
import pytest
import torch
from sklearn.datasets import load_digits

from minidiff.data import DIGITS_BIN_WIDTH, digits


def test_values_labels_and_grid():
    x, y = digits("all")
    raw = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(y, torch.as_tensor(raw.target))
    assert torch.equal(x[:, 0], torch.as_tensor(raw.images, dtype=torch.float32) / 8 - 1)     # x/8 − 1
    levels = (x + 1) / DIGITS_BIN_WIDTH                                                      # 0 … 16
    assert torch.equal(levels, levels.round()) and levels.min() == 0 and levels.max() == 16


def test_split_is_a_fixed_partition():
    (tr, ytr), (te, yte), (al, _) = digits("train"), digits("test"), digits("all")
    assert len(te) == round(0.2 * 1797) and len(tr) + len(te) == 1797
    # every image of "all" appears exactly once across train and test (compare as rows)
    rows = lambda a: {tuple(r) for r in a.flatten(1).tolist()}
    assert rows(tr) | rows(te) == rows(al)
    assert torch.equal(digits("test")[0], te)                                   # same split every call
    other = digits("test", seed=1)[0]
    assert not torch.equal(other, te) and len(other) == len(te)
    assert len(digits("test", test_fraction=0.5)[0]) == round(0.5 * 1797)


def test_upsampled_digits_keep_the_image():
    small, _ = digits("test")
    big, _ = digits("test", size=16)
    assert big.shape == (len(small), 1, 16, 16) and big.min() >= -1 and big.max() <= 1
    # the same images in the same order, bilinearly upsampled (the docstring's promise)
    ref = torch.nn.functional.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(big, ref.clamp(-1, 1))
    assert torch.allclose(big.mean(dim=(1, 2, 3)), small.mean(dim=(1, 2, 3)), atol=0.05)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(split="val"), ValueError, "split"),
    (dict(split="Train"), ValueError, "split"),
    (dict(split=None), ValueError, "split"),
    (dict(size=7), ValueError, "size"),
    (dict(size=0), ValueError, "size"),
    (dict(size=1024), ValueError, "size"),          # 1,797 × 1024² floats would need 7.5 GB
    (dict(size=16.0), TypeError, "size"),
    (dict(size=True), TypeError, "size"),
    (dict(size="8"), TypeError, "size"),
    (dict(test_fraction=0.0), ValueError, "test_fraction"),
    (dict(test_fraction=1.0), ValueError, "test_fraction"),
    (dict(test_fraction=float("nan")), ValueError, "test_fraction"),
    (dict(test_fraction=True), TypeError, "test_fraction"),
    (dict(test_fraction=1e-4), ValueError, "leaves 0 of 1797"),
    (dict(test_fraction=0.9999), ValueError, "leaves 1797 of 1797"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=True), TypeError, "seed"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        digits(**kwargs)

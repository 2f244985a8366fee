"""Layouts of the shapes world (chapter 7): the colour label map, its exact reading, mIoU."""
import pytest
import torch

from minidiff.data.shapes import COLOURS, make_scenes
from minidiff.layout import (
    NUM_CLASSES,
    colour_layout,
    iou_per_class,
    mean_iou,
    one_hot_layout,
    read_layout,
)


def test_reading_a_rendered_scene_recovers_its_layout_exactly():
    scenes = make_scenes(64, seed=3)
    layout = colour_layout(scenes)
    assert torch.equal(read_layout(scenes.images), layout)
    assert mean_iou(read_layout(scenes.images), layout) == 1.0
    # a red object's pixels are class 1 + index of "red"
    red = list(COLOURS).index("red") + 1
    is_red = (scenes.colours == red - 1) & scenes.present
    n, k = is_red.nonzero()[0].tolist()
    assert (layout[n][scenes.masks[n] == k + 1] == red).all()


def test_one_hot_layout():
    layout = colour_layout(make_scenes(4, seed=0))
    hot = one_hot_layout(layout)
    assert hot.shape == (4, NUM_CLASSES, 32, 32) and hot.dtype == torch.float32
    assert torch.equal(hot.argmax(1), layout) and torch.equal(hot.sum(1), torch.ones(4, 32, 32))


def test_miou_by_hand():
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 2]]])
    # background: inter 1, union 2; class 1: inter 1, union 3; class 2: inter 0, union 1; others absent
    iou = iou_per_class(pred, target)
    torch.testing.assert_close(iou[:3], torch.tensor([0.5, 1 / 3, 0.0], dtype=torch.float64))
    assert torch.isnan(iou[3:]).all()
    assert mean_iou(pred, target) == pytest.approx((0.5 + 1 / 3) / 3)


def test_noise_lowers_the_reading():
    scenes = make_scenes(16, seed=1)
    noisy = scenes.images + 0.8 * torch.randn(scenes.images.shape, generator=torch.Generator().manual_seed(0))
    assert mean_iou(read_layout(noisy), colour_layout(scenes)) < 0.9


def test_bad_inputs():
    layout = colour_layout(make_scenes(2, seed=0))
    with pytest.raises(TypeError, match="Scenes"):
        colour_layout(layout)
    with pytest.raises(ValueError, match=r"classes in \[0, 6\]"):
        one_hot_layout(layout + 7)
    with pytest.raises(ValueError, match="long label map"):
        one_hot_layout(layout.float())
    with pytest.raises(ValueError, match="same shape"):
        mean_iou(layout[:1], layout)
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        read_layout(torch.zeros(2, 32, 32))

r"""Layouts of the shapes world: the segmentation condition of chapter 7 and its exact reading.

A *layout* says which colour sits where: a label map (N, S, S) with 0 = background and 1 + c for the
colour ``COLOURS[c]`` (so :data:`NUM_CLASSES` = 7 classes). Chapter 7 gives it to a frozen text-to-image
model as the extra condition c_add (one-hot, (N, 7, S, S)) and asks how faithfully samples follow it.

Reading a layout back is exact in this world: every pixel is a flat palette colour (the background a dark
grey near ``BACKGROUND``), so the nearest palette entry of each pixel *is* its class — no learned
segmenter whose own errors would blur the metric. **Layout fidelity** is then the mean intersection over
union of the requested and the read maps (the seed's segmentation-to-image metric, BPS Table 2):

.. math:: \mathrm{mIoU} = \frac{1}{|K|}\sum_{k\in K}
   \frac{|\{\hat y = k\} \cap \{y = k\}|}{|\{\hat y = k\} \cup \{y = k\}|},

counted over all pixels of all images, K the classes that occur in either map (a class absent from both
would be 0/0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_int, check_tensor
from .data.shapes import BACKGROUND, COLOURS, Scenes

__all__ = ["NUM_CLASSES", "colour_layout", "iou_per_class", "mean_iou", "one_hot_layout", "read_layout"]

NUM_CLASSES = 1 + len(COLOURS)                  # background + one class per colour


def colour_layout(scenes: Scenes) -> Tensor:
    """(N, S, S) long: 0 where the background shows, 1 + colour index where an object shows."""
    if not isinstance(scenes, Scenes):
        raise TypeError(f"scenes must be a minidiff.data.shapes.Scenes, got {type(scenes).__name__}")
    table = torch.cat([torch.zeros_like(scenes.colours[:, :1]), scenes.colours.clamp_min(0) + 1], dim=1)  # (N, K+1)
    return table.gather(1, scenes.masks.flatten(1)).view_as(scenes.masks)


def one_hot_layout(layout: Tensor) -> Tensor:
    """A label map (N, S, S) in [0, NUM_CLASSES) -> the float one-hot c_add (N, NUM_CLASSES, S, S)."""
    layout = _check_layout(layout, "layout")
    return F.one_hot(layout, NUM_CLASSES).permute(0, 3, 1, 2).float()


def _palette(device: torch.device) -> Tensor:
    """(NUM_CLASSES, 3): the background grey, then the colours, in [-1, 1]."""
    return torch.tensor([(BACKGROUND,) * 3, *COLOURS.values()], device=device)


def read_layout(images: Tensor) -> Tensor:
    """The layout an image shows: each pixel's nearest palette class. images: (N, 3, S, S) in [-1, 1]
    -> (N, S, S) long."""
    check_tensor(images, "images", floating=True)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, S, S) (RGB in [-1, 1]), got {tuple(images.shape)}")
    distance = torch.cdist(images.permute(0, 2, 3, 1).reshape(-1, 3), _palette(images.device))   # (N·S·S, K)
    return distance.argmin(1).view(images.shape[0], *images.shape[2:])


def iou_per_class(pred: Tensor, target: Tensor) -> Tensor:
    """(NUM_CLASSES,) IoU of each class over all pixels of all images; NaN for a class in neither map."""
    pred, target = _check_layout(pred, "pred"), _check_layout(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape (N, S, S), got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    classes = torch.arange(NUM_CLASSES, device=pred.device)[:, None]
    p, t = pred.flatten()[None] == classes, target.flatten()[None] == classes              # (K, N·S·S)
    inter, union = (p & t).sum(1).double(), (p | t).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.nan)


def mean_iou(pred: Tensor, target: Tensor) -> float:
    """The module docstring's mIoU of label maps pred, target: (N, S, S), classes in neither map skipped."""
    return iou_per_class(pred, target).nanmean().item()


def _check_layout(layout: Tensor, name: str) -> Tensor:
    check_tensor(layout, name)
    if layout.dtype != torch.long or layout.ndim != 3:
        raise ValueError(f"{name} must be a long label map (N, S, S), got dtype {layout.dtype} and shape "
                         f"{tuple(layout.shape)} (use colour_layout(scenes) or read_layout(images))")
    if layout.numel() and (layout.min() < 0 or layout.max() >= NUM_CLASSES):
        raise ValueError(f"{name} must hold classes in [0, {NUM_CLASSES - 1}] (0 = background, 1 + colour index), "
                         f"got values in [{layout.min().item()}, {layout.max().item()}]")
    check_int(layout.shape[0], f"{name}.shape[0]", 1, hint=" (at least one map)")
    return layout

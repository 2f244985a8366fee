"""Real hand-written digits, offline: scikit-learn's bundled 8×8 set (1,797 images, 10 classes).

Pixel values 0…16 are mapped to [-1, 1] (x/8 − 1), so the data live on a 17-level grid with bin
width 2/16 — the discretised decoder of chapter 1 uses that width. A fixed, seeded split keeps
train and held-out images apart in every chapter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_choice, check_int, check_real

__all__ = ["digits", "DIGITS_BIN_WIDTH"]

DIGITS_BIN_WIDTH = 2 / 16  # 17 grey levels spread over [-1, 1]
SPLITS = ("train", "test", "all")
MAX_SIZE = 256  # bilinear upsampling of 8×8 images adds no detail; 256² × 1,797 floats is already 470 MB


def digits(split: str = "train", size: int = 8, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images (N, 1, size, size) float32 in [-1, 1] and labels (N,) long.

    split: "train", "test" or "all" (a seeded permutation, the same in every chapter).
    size: 8 (native) or larger up to 256 (bilinear upsampling, e.g. 16 or 32 for the cascade of chapter 4).
    test_fraction: share of the 1,797 images held out, in (0, 1), leaving both splits non-empty.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    check_choice(split, "split", SPLITS)
    size = check_int(size, "size (image side; native 8)", 8, MAX_SIZE)
    test_fraction = check_real(test_fraction, "test_fraction", 0, 1, low_open=True, high_open=True)
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    raw = load_digits()
    n_test = int(round(test_fraction * len(raw.target)))
    if not 0 < n_test < len(raw.target):
        raise ValueError(f"test_fraction={test_fraction:g} leaves {n_test} of {len(raw.target)} images for the "
                         "test split; both splits must be non-empty (e.g. test_fraction=0.2)")
    images = torch.tensor(raw.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.tensor(raw.target, dtype=torch.long)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    index = {"test": order[:n_test], "train": order[n_test:], "all": torch.arange(len(labels))}[split]
    return images[index], labels[index]

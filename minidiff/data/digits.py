"""Real hand-written digits, offline: scikit-learn's bundled 8×8 set (1,797 images, 10 classes).

Pixel values 0…16 are mapped to [-1, 1] (x/8 − 1), so the data live on a 17-level grid with bin
width 2/16 — the discretised decoder of chapter 1 uses that width. A fixed, seeded split keeps
train and held-out images apart in every chapter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["digits", "DIGITS_BIN_WIDTH"]

DIGITS_BIN_WIDTH = 2 / 16  # 17 grey levels spread over [-1, 1]
SPLITS = ("train", "test", "all")


def digits(split: str = "train", size: int = 8, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images (N, 1, size, size) float32 in [-1, 1] and labels (N,) long.

    split: "train", "test" or "all" (a seeded permutation, the same in every chapter).
    size: 8 (native) or larger (bilinear upsampling, e.g. 16 or 32 for the cascade of chapter 4).
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8 (native size 8), got {size!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.tensor(raw.target, dtype=torch.long)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    index = {"test": order[:n_test], "train": order[n_test:], "all": torch.arange(len(labels))}[split]
    return images[index], labels[index]

"""Resampling signals between rates (500 Hz PTB-XL/ICBEB/deepfake-ecg, 360 Hz MIT-BIH -> 100 Hz).

Polyphase filtering (``scipy.signal.resample_poly``): upsample by p, low-pass, downsample by q with
p/q = fs_out/fs_in reduced, so frequencies above the new Nyquist rate are removed rather than aliased.
A record of L samples becomes ceil(L·p/q) samples: 5000 at 500 Hz -> 1000 at 100 Hz.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...checks import check_int, check_tensor

__all__ = ["resample"]


def resample(x: Tensor, fs_in: int, fs_out: int) -> Tensor:
    """x: (..., L) at ``fs_in`` Hz -> (..., ceil(L·fs_out/fs_in)) at ``fs_out`` Hz, same dtype."""
    from scipy.signal import resample_poly

    check_tensor(x, "x", floating=True, min_ndim=1)
    fs_in, fs_out = check_int(fs_in, "fs_in", 1), check_int(fs_out, "fs_out", 1)
    if fs_in == fs_out:
        return x
    g = math.gcd(fs_in, fs_out)
    y = resample_poly(x.detach().cpu().double().numpy(), fs_out // g, fs_in // g, axis=-1)
    return torch.from_numpy(y).to(device=x.device, dtype=x.dtype)

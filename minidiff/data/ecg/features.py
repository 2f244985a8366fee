r"""Measured ECG properties: R-peaks, heart rate and a QRS-axis proxy (chapter 9), vectorised over records.

These are what the chapter's *target population* and its *membership rate* are defined by, so they must
work on real and generated signals alike and cost nothing:

* **R-peaks** (:func:`r_peaks`): the baseline is removed by subtracting a 0.2-s moving average; a sample
  is a peak if it is the maximum of ``|x_hp|`` within ± ``refractory`` seconds (no two beats closer than
  that: 0.25 s caps the rate at 240 bpm) and exceeds ``threshold`` × the record's 99th percentile.
* **Heart rate** (:func:`heart_rate`): 60 / mean RR interval = 60·fs·(k − 1)/(last peak − first peak)
  for k detected peaks (NaN when fewer than two).
* **QRS-axis proxy** (:func:`qrs_axis`): the frontal-plane axis is the direction of the mean QRS vector;
  we use the net QRS deflections A = max + min of the baseline-free signal within ±60 ms of the R-peaks,
  in leads I (0°) and aVF (+90°). A dipole of direction θ and size M gives A_I = M cos θ and
  A_aVF = (√3/2) M sin θ (aVF = II − I/2 and II = M cos(θ − 60°)), so
  axis = atan2(2 A_aVF/√3, A_I) in degrees (normal −30°…+90°).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...checks import check_real, check_tensor
from .leads import derived_limb_leads

__all__ = ["heart_rate", "highpass", "qrs_axis", "r_peaks"]


def _check_signal(x: Tensor, name: str = "x") -> Tensor:
    check_tensor(x, name, floating=True)
    if x.ndim != 2:
        raise ValueError(f"{name} must be one lead per record, shape (B, L), got {tuple(x.shape)}; pick a lead "
                         "with x[:, k]")
    return x


def highpass(x: Tensor, fs: float, window_s: float = 0.2) -> Tensor:
    """x minus its centred moving average over ``window_s`` seconds (baseline wander removed): (B, L) -> (B, L)."""
    _check_signal(x)
    fs = check_real(fs, "fs", low=0, low_open=True, hint=" (sampling rate in Hz)")
    k = max(1, round(window_s * fs)) | 1                                   # odd window
    base = F.avg_pool1d(F.pad(x[:, None], (k // 2, k // 2), mode="replicate"), k, stride=1)[:, 0]
    return x - base


def r_peaks(x: Tensor, fs: float, refractory: float = 0.25, threshold: float = 0.5) -> Tensor:
    """Boolean R-peak mask (B, L) of signals x: (B, L) sampled at ``fs`` Hz (module docstring)."""
    fs = check_real(fs, "fs", low=0, low_open=True, hint=" (sampling rate in Hz)")
    refractory = check_real(refractory, "refractory", low=0, low_open=True, hint=" (seconds)")
    threshold = check_real(threshold, "threshold", low=0, high=1, low_open=True)
    y = highpass(x, fs).abs()
    r = max(1, round(refractory * fs))
    local_max = F.max_pool1d(F.pad(y[:, None], (r, r), value=-1.0), 2 * r + 1, stride=1)[:, 0]
    level = torch.quantile(y, 0.99, dim=1, keepdim=True)
    return (y == local_max) & (y > threshold * level) & (level > 0)


def heart_rate(x: Tensor, fs: float, **peak_kwargs: float) -> Tensor:
    """Heart rate in beats per minute, (B,), from signals x: (B, L) (NaN where fewer than 2 R-peaks)."""
    peaks = r_peaks(x, fs, **peak_kwargs)
    pos = torch.arange(x.shape[1], device=x.device).expand_as(peaks)
    k = peaks.sum(1)
    first = torch.where(peaks, pos, x.shape[1]).min(1).values
    last = torch.where(peaks, pos, -1).max(1).values
    rr = (last - first).to(x.dtype) / (k - 1).clamp(min=1)                      # mean RR in samples
    return torch.where(k >= 2, 60.0 * fs / rr, torch.full_like(rr, math.nan))


def qrs_axis(lead_i: Tensor, lead_ii: Tensor, fs: float, qrs_halfwidth: float = 0.06) -> Tensor:
    """QRS-axis proxy in degrees, (B,), from leads I and II: (B, L) (module docstring). R-peaks are found
    on lead II; NaN where none is found."""
    _check_signal(lead_i, "lead_i")
    _check_signal(lead_ii, "lead_ii")
    halfwidth = check_real(qrs_halfwidth, "qrs_halfwidth", low=0, low_open=True, hint=" (seconds)")
    peaks = r_peaks(lead_ii, fs)
    w = max(1, round(halfwidth * fs))
    near = F.max_pool1d(peaks[:, None].float(), 2 * w + 1, stride=1, padding=w)[:, 0] > 0   # within ±w of a peak
    avf = derived_limb_leads(lead_i, lead_ii)["aVF"]

    def net(lead: Tensor) -> Tensor:                                            # max + min over the QRS windows
        hp = highpass(lead, fs)
        return (hp.masked_fill(~near, -math.inf).max(1).values + hp.masked_fill(~near, math.inf).min(1).values)

    axis = torch.rad2deg(torch.atan2(net(avf) * (2 / math.sqrt(3)), net(lead_i)))      # θ = atan2(2 A_aVF/√3, A_I)
    return torch.where(near.any(1), axis, torch.full_like(axis, math.nan))

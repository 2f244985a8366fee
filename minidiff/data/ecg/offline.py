r"""The offline ECG data of chapter 9: a real-ECG-trained source population, a target picked by a
measured property, and a real single-lead patient target (MIT-BIH record 208).

* **Source** (:func:`deepfake_source`): the ``deepfake-ecg`` package (MIT licence; Thambawita et al.,
  Sci. Rep. 2021) ships a Pulse2Pulse generator trained on real 10-s 12-lead ECGs. Fed uniform(−1, 1)
  noise (B, 8, 5000) it returns 10 s of leads I, II, V1–V6 at 500 Hz in [−1, 1]; × 6000 gives µV. We call
  the model directly (its ``generate()`` writes one text file per record), with noise drawn from a
  seeded ``torch.Generator``, resample to 100 Hz (polyphase, anti-aliased) and store mV. The result is
  cached on disk (``<cache>/ecg/``), so a seed gives the same tensor every time.
* **Target** (:func:`target_population`): the source records whose *measured* heart rate
  (:func:`~minidiff.data.ecg.features.heart_rate`, lead II) lies in a range — by default ≥ 80 bpm, the fast
  tail of the source (normal resting rate is 60–100 bpm; the source's median is ~68). A clinical
  property that a classifier must find in the timing of the beats, not in the amplitudes.
* **MIT-BIH** (:func:`mitbih_windows`): the 5-min excerpt of record 208 (lead MLII, 360 Hz; PhysioNet,
  ODC-By 1.0) that SciPy 1.11 shipped as ``scipy/misc/ecg.dat``, kept in the repository's ``data/``
  folder; decoded as SciPy did, (uint16 − 1024)/200 mV, resampled to 100 Hz and cut into 30 windows of 10 s.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...cache import cache_dir
from ...checks import check_int, check_real, check_tensor
from .features import heart_rate
from .leads import INDEPENDENT_LEADS, lead_indices
from .resample import resample

__all__ = [
    "DEEPFAKE_FS",
    "MITBIH_FILE",
    "deepfake_source",
    "generate_deepfake",
    "mitbih_signal",
    "mitbih_windows",
    "target_population",
]

DEEPFAKE_FS = 500                      # the generator's sampling rate (Hz); 10 s = 5000 samples
_DEEPFAKE_UV = 6000.0                  # its tanh output × 6000 = µV (deepfakeecg.generate)
MITBIH_FILE = Path(__file__).resolve().parents[3] / "data" / "mitbih_208_excerpt.dat"
_MITBIH_FS = 360


def _deepfake_generator() -> torch.nn.Module:
    try:
        import deepfakeecg
        from deepfakeecg.models import Generator
    except ImportError as err:
        raise ImportError("the offline ECG source needs the deepfake-ecg package: pip install deepfake-ecg "
                          "(it is in the course's environment.yml)") from err
    weights = Path(deepfakeecg.__file__).parent / "checkpoints" / "g_stat.pt"
    with warnings.catch_warnings():                    # its init calls the deprecated nn.init.kaiming_normal
        warnings.simplefilter("ignore", FutureWarning)
        net = Generator()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["stat_dict"])
    return net.eval()


def generate_deepfake(n: int, seed: int = 0, fs: int = 100, batch_size: int = 256) -> Tensor:
    """n fresh records (n, 8, 10·fs) in mV, leads :data:`~.leads.INDEPENDENT_LEADS`, from the deepfake-ecg
    generator with seeded noise (no cache; see :func:`deepfake_source`). fs must divide 500 evenly or be a
    rate :func:`~.resample.resample` accepts."""
    n, seed = check_int(n, "n", 1), check_int(seed, "seed", 0)
    fs, batch_size = check_int(fs, "fs", 1), check_int(batch_size, "batch_size", 1)
    net, gen = _deepfake_generator(), torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            noise = torch.rand(b, 8, 10 * DEEPFAKE_FS, generator=gen) * 2 - 1        # uniform(−1, 1)
            mv = net(noise) * _DEEPFAKE_UV / 1000.0                                      # µV -> mV
            out.append(resample(mv, DEEPFAKE_FS, fs))
    return torch.cat(out).float()


def deepfake_source(n: int = 4000, seed: int = 0, fs: int = 100, use_cache: bool = True) -> Tensor:
    """The source population: (n, 8, 10·fs) float32 mV, leads I, II, V1–V6, cached under ``<cache>/ecg``."""
    n, seed, fs = check_int(n, "n", 1), check_int(seed, "seed", 0), check_int(fs, "fs", 1)
    path = cache_dir() / "ecg" / f"deepfake-n{n}-seed{seed}-fs{fs}.pt"
    if use_cache and path.exists():
        try:
            x = torch.load(path, weights_only=True)
            if isinstance(x, Tensor) and tuple(x.shape) == (n, 8, 10 * fs):
                return x
        except (OSError, RuntimeError, EOFError):     # a half-written file: regenerate it
            pass
    x = generate_deepfake(n, seed, fs)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.save(x, tmp)
        tmp.replace(path)                              # atomic for parallel readers
    return x


def target_population(x: Tensor, fs: float, hr_range: tuple[float, float] = (80.0, math.inf),
                      leads: tuple[str, ...] = INDEPENDENT_LEADS) -> Tensor:
    """Boolean mask (N,) of the records x: (N, C, L) whose heart rate (lead II) lies in ``hr_range`` [bpm]."""
    check_tensor(x, "x", floating=True)
    if x.ndim != 3 or x.shape[1] != len(leads):
        raise ValueError(f"x must have shape (N, {len(leads)}, L) for leads {leads}, got {tuple(x.shape)}")
    lo, hi = hr_range
    lo = check_real(lo, "hr_range[0]", low=0)
    if not (isinstance(hi, (int, float)) and hi > lo):
        raise ValueError(f"hr_range must be (low, high) bpm with high > low, got {hr_range!r}")
    hr = heart_rate(x[:, lead_indices(leads, ["II"])[0]], fs)
    return (hr >= lo) & (hr < hi)


def mitbih_signal(path: str | Path | None = None) -> tuple[Tensor, int]:
    """The 5-min MIT-BIH record 208 excerpt: (108000,) float32 mV at 360 Hz, and 360."""
    path = MITBIH_FILE if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it ships in the course repository's data/ folder (from the "
                                "SciPy 1.11.4 wheel, scipy/misc/ecg.dat); see data/README.md")
    with np.load(path) as f:
        raw = f["ecg"].astype(np.int64)                     # uint16 ADC values
    return torch.from_numpy((raw - 1024) / 200.0).float(), _MITBIH_FS     # (adc − zero)/gain, as SciPy decoded it


def mitbih_windows(fs: int = 100, seconds: int = 10, path: str | Path | None = None) -> Tensor:
    """Non-overlapping windows (W, 1, seconds·fs) of the MIT-BIH excerpt at ``fs`` Hz (30 windows of 10 s)."""
    fs, seconds = check_int(fs, "fs", 1), check_int(seconds, "seconds", 1, 300)
    sig, fs0 = mitbih_signal(path)
    x = resample(sig[None], fs0, fs)[0]
    w = seconds * fs
    k = x.shape[0] // w
    return x[: k * w].reshape(k, 1, w)

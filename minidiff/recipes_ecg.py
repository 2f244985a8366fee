r"""Chapter 9's trained parts, cached: the ECG transfer problem, the source model, the three transfer
methods (vanilla, fine-tune, TGDP) and the feature CNN of the metrics. ``benchmarks/tgdp_ecg.py`` and
``notebooks/09_tgdp_ecg.ipynb`` call the same functions with the same budgets (``pick(quick, full)``).

**The problem at CPU scale** (:func:`ecg_transfer_data`). Source p: deepfake-ecg records (seed 0).
Target q: the records of a second batch (seed 1) whose measured heart rate is ≥ 80 bpm (≈ 13 % of the
source; :func:`~minidiff.data.ecg.target_population`), the first ``n`` of them for training, the rest
held out. We model the **two independent limb leads I and II** (the other four limb leads follow from
them, :func:`~minidiff.data.ecg.twelve_leads` needs V1–V6 too) at **50 Hz** (10 s = 500 samples; the
data layer delivers 100 Hz, halved here so a CPU trains in minutes: a QRS complex still spans ~4–5
samples and the heart rate is measured as well as at 100 Hz). Signals are z-scored per lead with the
**source** statistics (:class:`~minidiff.data.ecg.Standardizer`), which the target and the samples share.

Schedule: T = 200 **cosine** steps (Nichol & Dhariwal), ᾱ_T ≈ 0; samplers: DDIM. The seed's code (SSSD-ECG) uses
T = 200 linear β 1e-4…0.02, whose ᾱ_T = e^{−Σβ} ≈ 0.13 never reaches noise: a sampler started from N(0, I) has the
model fix the rhythm in its first steps, where ᾱ_t is already large enough for h_ψ to be saturated (≈ 0 or ≈ 1/π)
and ∇ log h ≈ 0. Measured with that schedule (n = 100, 600 + 2000 steps): h_ψ separates held-out target from
non-target records even at t = 150 (mean h 5.2 vs 0.08), yet TGDP's membership rate stayed at the source's (9 %
vs 10 %), 19 % with guidance scale 3.
Denoiser: :class:`minidiff.nets.UNet` with ``dims=1`` (unconditional: the offline data carry no labels).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .cache import load_or_train
from .checks import check_choice, check_int
from .config import pick
from .data.ecg import (
    INDEPENDENT_LEADS,
    Standardizer,
    deepfake_source,
    lead_indices,
    mitbih_windows,
    resample,
    target_population,
)
from .data.ecg.features import heart_rate
from .ecg_metrics import ECGFeatureNet, fit_ecg_classifier
from .nets import UNet
from .schedules import NoiseSchedule
from .tgdp import fit_baseline, fit_domain_classifier, fit_guidance_net
from .tgdp.ecg import SignalDomainClassifier, SignalGuidanceNet
from .train import EMA, diffusion_loss, train

__all__ = [
    "METHODS",
    "MODEL_FS",
    "MODEL_LEADS",
    "TARGET_HR",
    "ECGTransfer",
    "ecg_budgets",
    "ecg_feature_net",
    "ecg_schedule",
    "ecg_source_model",
    "ecg_transfer_data",
    "ecg_unet",
    "fit_method",
    "mitbih_transfer_data",
    "n_params",
]

MODEL_FS = 50
MODEL_LEADS = ("I", "II")
TARGET_HR = (80.0, math.inf)
METHODS = ("vanilla", "fine-tune", "TGDP")
SOURCE_SEED, POOL_SEED = 0, 1
DATA_FS = 100                                 # the rate deepfake_source delivers


@dataclass
class ECGTransfer:
    """One transfer problem, all signals z-scored with ``standardizer`` (source statistics), (N, C, 500).

    source: (m, C, L) source records (the source model's training set). target: (k, C, L) target records;
    ``target[:n]`` are the n training records of a run, ``target[n_max:]`` the held-out test records.
    others: (r, C, L) held-out records *outside* the target (negatives of the downstream test).
    hr_lead: index of lead II (the heart rate is measured on it). hr_range: the target's rate range (bpm).
    """
    source: Tensor
    target: Tensor
    others: Tensor
    standardizer: Standardizer
    leads: tuple[str, ...]
    fs: int
    hr_range: tuple[float, float]
    n_max: int

    @property
    def target_test(self) -> Tensor:
        return self.target[self.n_max:]

    def mv(self, z: Tensor) -> Tensor:
        """Back to millivolts: (B, C, L) -> (B, C, L)."""
        return self.standardizer.invert(z)

    def heart_rate(self, z: Tensor) -> Tensor:
        """Measured heart rate (B,) of z-scored signals (B, C, L) — lead II, or the only lead."""
        return heart_rate(self.mv(z)[:, lead_indices(self.leads, ["II"])[0]], self.fs)


def ecg_schedule() -> NoiseSchedule:
    """T = 200 cosine steps, ᾱ_T ≈ 0 (the module docstring says why not SSSD-ECG's linear 1e-4…0.02)."""
    return NoiseSchedule.cosine(200)


def _to_model(x: Tensor, leads: tuple[str, ...]) -> Tensor:
    """(N, 8, 1000) 100-Hz mV records (INDEPENDENT_LEADS) -> (N, len(leads), 500) at MODEL_FS."""
    return resample(x[:, lead_indices(INDEPENDENT_LEADS, leads)], DATA_FS, MODEL_FS)


def ecg_transfer_data(n_source: int | None = None, n_pool: int | None = None, n_max: int | None = None,
                      leads: tuple[str, ...] = MODEL_LEADS, hr_range: tuple[float, float] = TARGET_HR) -> ECGTransfer:
    """The offline transfer problem of the module docstring (deterministic; generation cached on disk)."""
    n_source = pick(256, 4096) if n_source is None else check_int(n_source, "n_source", 2)
    n_pool = pick(512, 4096) if n_pool is None else check_int(n_pool, "n_pool", 2)
    n_max = pick(30, 100) if n_max is None else check_int(n_max, "n_max", 1)
    src_raw, pool_raw = deepfake_source(n_source, SOURCE_SEED), deepfake_source(n_pool, POOL_SEED)
    in_target = target_population(pool_raw, DATA_FS, hr_range)            # measured on the 100-Hz lead II
    if int(in_target.sum()) <= n_max:
        raise ValueError(f"only {int(in_target.sum())} of {n_pool} pool records are in the target {hr_range} bpm, "
                         f"need more than n_max={n_max}: raise n_pool")
    src, pool = _to_model(src_raw, leads), _to_model(pool_raw, leads)
    std = Standardizer(src)                                                # source (training) statistics only
    return ECGTransfer(std(src), std(pool[in_target]), std(pool[~in_target]), std, tuple(leads), MODEL_FS,
                       hr_range, n_max)


def mitbih_transfer_data(n_source: int | None = None, n_max: int = 10) -> ECGTransfer:
    """Single-lead (II) source records and the 30 MIT-BIH 10-s windows (record 208, lead MLII ≈ II) as the
    target: ``target[:n_max]`` to train on, the other windows held out; hr_range spans every rate (the
    target is a patient, not a rate band)."""
    n_source = pick(256, 4096) if n_source is None else check_int(n_source, "n_source", 2)
    src = _to_model(deepfake_source(n_source, SOURCE_SEED), ("II",))
    tgt = resample(mitbih_windows(DATA_FS), DATA_FS, MODEL_FS)
    others = _to_model(deepfake_source(pick(512, 4096), POOL_SEED), ("II",))[:256]
    std = Standardizer(src)
    return ECGTransfer(std(src), std(tgt), std(others), std, ("II",), MODEL_FS, (0.0, math.inf), n_max)


def ecg_budgets() -> dict[str, int]:
    """Training steps of chapter 9 (one place): source model, each transfer method, the metric CNN."""
    return {"source": pick(60, 3000), "transfer": pick(20, 600), "guidance": pick(20, 2000), "feature": pick(40, 800),
            "utility": pick(30, 400), "samples": pick(32, 256), "ddim": pick(10, 50)}


def ecg_unet(in_channels: int, T: int, base_channels: int = 16) -> UNet:
    """The denoiser: a 1-D U-Net on (B, C, 500), three levels (500 -> 250 -> 125), attention in the middle."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet(500, in_channels, base_channels, (1, 2, 2), num_res_blocks=1, num_timesteps=T, dims=1)


def _data_key(data: ECGTransfer) -> dict[str, Any]:
    return {"leads": list(data.leads), "fs": data.fs, "m": int(data.source.shape[0]),
            "source_sum": round(float(data.source.double().abs().sum()), 3)}


def ecg_source_model(data: ECGTransfer, steps: int | None = None, batch_size: int = 32,
                     use_cache: bool = True) -> UNet:
    """The source eps-model ε_p: :func:`ecg_unet` trained on ``data.source`` (EMA 0.999), cached; frozen."""
    steps = ecg_budgets()["source"] if steps is None else check_int(steps, "steps", 1)
    schedule = ecg_schedule()
    cfg = {"data": _data_key(data), "steps": steps, "batch": batch_size, "lr": 2e-3, "T": schedule.T, "schedule": schedule.name, "v": 1}
    model = ecg_unet(data.source.shape[1], schedule.T)

    def train_fn(net: nn.Module) -> None:
        ema = EMA(net, 0.999)
        for _ in train(net, diffusion_loss(schedule), data.source, steps=steps, batch_size=batch_size, lr=2e-3,
                       warmup=min(100, steps // 10), ema=ema, seed=0, desc="ECG source U-Net"):
            pass
        ema.copy_to(net)

    return load_or_train("ecg-source-unet", cfg, model, train_fn, use_cache=use_cache).requires_grad_(False)


def ecg_feature_net(data: ECGTransfer, steps: int | None = None, use_cache: bool = True) -> ECGFeatureNet:
    """The metric CNN: classifies held-out records by heart-rate band (<64, 64–70, 70–80, ≥80 bpm) — a task
    that makes its features see the rhythm and the beat shapes. Trained on ``others`` + the held-out targets
    (never on a run's n training records), cached; frozen."""
    steps = ecg_budgets()["feature"] if steps is None else check_int(steps, "steps", 1)
    x = torch.cat([data.others, data.target_test])
    hr = data.heart_rate(x).nan_to_num(0.0)
    y = torch.bucketize(hr, torch.tensor([64.0, 70.0, 80.0]))
    cfg = {"data": _data_key(data), "n": int(x.shape[0]), "steps": steps, "v": 1}
    with torch.random.fork_rng(devices=[]):          # the weights are trained or loaded: no global RNG draw
        net = ECGFeatureNet(x.shape[1], 4)

    def train_fn(m: nn.Module) -> None:
        m.load_state_dict(fit_ecg_classifier(x, y, 4, steps=steps, seed=0).state_dict())

    return load_or_train("ecg-feature-cnn", cfg, net, train_fn, use_cache=use_cache).requires_grad_(False)


def n_params(model: Any) -> int:
    """Trainable-at-transfer parameter count of a model, or of a tuple of models."""
    if isinstance(model, (tuple, list)):
        return sum(n_params(m) for m in model)
    return sum(p.numel() for p in model.parameters())


def fit_method(method: str, data: ECGTransfer, source: UNet, n: int, steps: int | None = None, seed: int = 0,
               batch_size: int = 32, progress: bool = True, h_steps: int | None = None) -> dict[str, Any]:
    """Adapt to the first n target records with ``method`` and a step budget ``steps`` (the same for each).

    vanilla / fine-tune: :func:`~minidiff.tgdp.fit_baseline` (``steps`` U-Net steps on the n records). TGDP: the
    domain classifier gets ``steps`` steps on the n records; h_ψ trains on *source* pairs only, and its steps
    (``h_steps``, default ``ecg_budgets()["guidance"]``, batch 64) are ~10× cheaper than a U-Net step: with 600
    it stayed near h ≡ 1 (measured: membership 16 % vs the source's 10 %), with 2000 it reached 20 %; the
    wall times are returned and reported beside the results.
    Returns ``{"eps": eps-model, "params": trained parameter count, "seconds": wall time, "extra": ...}``.
    """
    from .tgdp import DensityRatioGuidance

    method = check_choice(method, "method", METHODS)
    n, seed = check_int(n, "n", 2, data.n_max), check_int(seed, "seed", 0)
    steps = ecg_budgets()["transfer"] if steps is None else check_int(steps, "steps", 1)
    h_steps = ecg_budgets()["guidance"] if h_steps is None else check_int(h_steps, "h_steps", 1)
    schedule, tgt, c = ecg_schedule(), data.target[:n], data.source.shape[1]
    start = time.perf_counter()
    if method != "TGDP":
        model = fit_baseline(method, source, schedule, tgt, steps=steps, batch_size=batch_size, lr=1e-3, seed=seed,
                             progress=progress)
        return {"eps": model, "params": n_params(model), "seconds": time.perf_counter() - start}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf_net = SignalDomainClassifier(c, conv_width=16, width=32, depth=1)
        h_net = SignalGuidanceNet(c, conv_width=16, width=64, depth=2, num_timesteps=schedule.T)
    clf = fit_domain_classifier(data.source, tgt, steps=steps, batch_size=batch_size, lr=2e-3, weight_decay=1e-3,
                                seed=seed, progress=progress, net=clf_net)
    h = fit_guidance_net(schedule, clf, data.source, steps=h_steps, batch_size=64, lr=2e-3, seed=seed,
                         progress=progress, net=h_net, max_ratio=50.0)
    eps = DensityRatioGuidance(source, h, schedule)
    return {"eps": eps, "params": n_params((clf, h)), "seconds": time.perf_counter() - start, "classifier": clf, "h": h}

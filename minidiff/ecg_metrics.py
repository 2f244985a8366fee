r"""How chapter 9 scores generated ECGs: features of a small 1-D CNN, Fréchet distance, diversity,
target membership and the downstream utility test (TGDP seed 001, ECG experiment).

* **Feature CNN** (:class:`ECGFeatureNet`): the :class:`~minidiff.tgdp.ecg.SignalEncoder` conv stack and a
  linear head, trained for a task on real data (:func:`fit_ecg_classifier`); its pooled features (B, F)
  play the role Inception features play in FID.
* **Fréchet distance** ("FID"): :func:`minidiff.metrics.frechet_distance` between Gaussians fitted to the
  features of real and generated records, ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2(Σ_r^{1/2} Σ_g Σ_r^{1/2})^{1/2}).
* **Diversity** (:func:`diversity`): mean pairwise feature distance among generated records divided by
  the same among real target records: 1 = as varied as the data, → 0 = mode collapse / copies.
* **Membership rate** (:func:`membership_rate`): the share of records whose *measured* heart rate lies in
  the target range — the target is defined by that measurement, so this is its direct check.
* **Downstream utility** (:func:`challenge_scores`, :func:`downstream_utility`): train a classifier on real
  (+ generated) data, score it on held-out real data: macro AUC, and the PhysioNet/CinC-2018 scores per
  class from the confusion counts, macro-averaged:

  .. math:: F_{\beta=2} = \frac{(1+\beta^2)TP}{(1+\beta^2)TP + FP + \beta^2 FN} = \frac{5TP}{5TP + FP + 4FN},\qquad
            G_{\beta=2} = \frac{TP}{TP + FP + \beta FN} = \frac{TP}{TP + FP + 2FN}.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import record_config
from .checks import check_int, check_real, check_tensor
from .data.ecg.features import heart_rate
from .metrics import frechet_distance
from .tgdp.ecg import SignalEncoder
from .train import train

__all__ = [
    "ECGFeatureNet",
    "challenge_scores",
    "diversity",
    "downstream_utility",
    "ecg_features",
    "ecg_frechet",
    "f_beta2",
    "fit_ecg_classifier",
    "g_beta2",
    "membership_rate",
]


@record_config
class ECGFeatureNet(nn.Module):
    """x: (B, C, L) -> logits (B, num_classes); :meth:`features` -> (B, 2·width) pooled conv features."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.encoder = SignalEncoder(in_channels, width, depth)
        self.num_classes = check_int(num_classes, "num_classes", 2)
        self.head = nn.Linear(self.encoder.out_dim, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _check_labels(x: Tensor, y: Tensor) -> Tensor:
    """Labels (N,) integer classes or (N, K) multi-hot (float) for signals x: (N, C, L)."""
    check_tensor(x, "x", floating=True, nonempty=True)
    if x.ndim != 3:
        raise ValueError(f"x must be signals (N, C, L), got {tuple(x.shape)}")
    check_tensor(y, "y")
    if y.shape[0] != x.shape[0] or y.ndim not in (1, 2):
        raise ValueError(f"y must be labels (N,) or multi-hot (N, K) with N={x.shape[0]}, got {tuple(y.shape)}")
    return y


def _loss(model: nn.Module, batch: tuple[Tensor, Tensor], generator: torch.Generator) -> Tensor:
    x, y = batch
    shift = int(torch.randint(0, x.shape[-1], (1,), generator=generator))       # a random circular shift:
    logits = model(torch.roll(x, shift, dims=-1))                               # beats may fall anywhere
    if y.ndim == 2:                                                             # multi-label (PTB-XL / ICBEB)
        return F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy(logits, y)


def fit_ecg_classifier(x: Tensor, y: Tensor, num_classes: int | None = None, *, steps: int = 500,
                       batch_size: int = 64, lr: float = 2e-3, width: int = 32, depth: int = 3, seed: int = 0,
                       device: str | torch.device | None = None, progress: bool = True) -> ECGFeatureNet:
    """Train an :class:`ECGFeatureNet` on x: (N, C, L) and labels y: (N,) (cross-entropy) or (N, K)
    multi-hot (binary cross-entropy, multi-label). Initialised from ``seed`` without touching the global RNG."""
    y = _check_labels(x, y)
    k = y.shape[1] if y.ndim == 2 else (int(y.max()) + 1 if num_classes is None else num_classes)
    seed = check_int(seed, "seed", 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ECGFeatureNet(x.shape[1], max(2, k), width, depth)
    for _ in train(net, _loss, (x, y), steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                   progress=progress, desc="ECG classifier"):
        pass
    return net.eval()


@torch.no_grad()
def ecg_features(net: ECGFeatureNet, x: Tensor, batch_size: int = 512) -> Tensor:
    """Pooled features (N, F) of x: (N, C, L), in batches."""
    check_tensor(x, "x", floating=True, nonempty=True)
    batch_size = check_int(batch_size, "batch_size", 1)
    dev = next(net.parameters()).device
    return torch.cat([net.features(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])


def ecg_frechet(net: ECGFeatureNet, real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between the feature Gaussians of real (N, C, L) and generated (M, C, L) records."""
    return frechet_distance(ecg_features(net, real), ecg_features(net, fake))


def _mean_pairwise(f: Tensor) -> Tensor:
    n = f.shape[0]
    d = torch.cdist(f.double(), f.double())
    return d.sum() / (n * (n - 1))                                              # off-diagonal mean


def diversity(fake_feats: Tensor, real_feats: Tensor) -> float:
    """mean_{i≠j} ‖f_i − f_j‖ over generated features (N, F) / the same over real ones (M, F); N, M >= 2."""
    for name, f in (("fake_feats", fake_feats), ("real_feats", real_feats)):
        check_tensor(f, name, floating=True)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be features (N, F) with N >= 2, got {tuple(f.shape)}")
    if fake_feats.shape[1] != real_feats.shape[1]:
        raise ValueError(f"fake_feats and real_feats must have the same F, got {fake_feats.shape[1]} and "
                         f"{real_feats.shape[1]}")
    return float(_mean_pairwise(fake_feats) / _mean_pairwise(real_feats).clamp(min=1e-12))


def membership_rate(hr_lead: Tensor, fs: float, hr_range: tuple[float, float]) -> float:
    """Share of signals hr_lead: (N, L) (in mV, the lead the target is measured on) whose heart rate is
    in [low, high) bpm; a record with no measurable rate counts as outside."""
    lo, hi = hr_range
    lo, hi = check_real(lo, "hr_range[0]", low=0), float(hi)
    if not hi > lo:
        raise ValueError(f"hr_range must be (low, high) with high > low, got {hr_range!r}")
    hr = heart_rate(hr_lead, fs)
    return float(((hr >= lo) & (hr < hi)).float().mean())


def f_beta2(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """F_β=2 = 5TP / (5TP + FP + 4FN) per class (0 where the denominator is 0)."""
    den = 5 * tp + fp + 4 * fn
    return torch.where(den > 0, 5 * tp / den.clamp(min=1e-12), torch.zeros_like(den))


def g_beta2(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """G_β=2 = TP / (TP + FP + 2FN) per class (0 where the denominator is 0)."""
    den = tp + fp + 2 * fn
    return torch.where(den > 0, tp / den.clamp(min=1e-12), torch.zeros_like(den))


def challenge_scores(y_true: Tensor, y_score: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Macro AUC, F_β=2 and G_β=2 of scores y_score: (N, K) in [0, 1] against y_true: (N, K) in {0, 1}
    (predicted positive where score >= threshold). Classes with one outcome only are left out of the AUC."""
    from sklearn.metrics import roc_auc_score

    check_tensor(y_true, "y_true")
    check_tensor(y_score, "y_score", floating=True)
    if y_true.ndim != 2 or y_true.shape != y_score.shape:
        raise ValueError(f"y_true and y_score must both be (N, K), got {tuple(y_true.shape)} and {tuple(y_score.shape)}")
    threshold = check_real(threshold, "threshold", low=0, high=1)
    truth, pred = y_true.bool(), y_score >= threshold
    tp = (truth & pred).sum(0).double()
    fp = (~truth & pred).sum(0).double()
    fn = (truth & ~pred).sum(0).double()
    both = [(truth[:, k].any() & ~truth[:, k].all()).item() for k in range(truth.shape[1])]
    cols = [k for k, ok in enumerate(both) if ok]
    auc = float(roc_auc_score(truth[:, cols].numpy(), y_score[:, cols].double().numpy(), average="macro")) if cols \
        else float("nan")
    return {"auc": auc, "f_beta2": float(f_beta2(tp, fp, fn).mean()), "g_beta2": float(g_beta2(tp, fp, fn).mean())}


def downstream_utility(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, steps: int = 500,
                       seed: int = 0, progress: bool = True, **fit_kwargs: float) -> dict[str, float]:
    """Train :func:`fit_ecg_classifier` on (x_train, y_train), score it on held-out (x_test, y_test) with
    :func:`challenge_scores`. Labels (N,) integer classes (one-hot, softmax scores) or (N, K) multi-hot
    (sigmoid scores)."""
    _check_labels(x_test, y_test)
    k = y_train.shape[1] if y_train.ndim == 2 else int(max(y_train.max(), y_test.max())) + 1
    net = fit_ecg_classifier(x_train, y_train, k, steps=steps, seed=seed, progress=progress, **fit_kwargs)
    with torch.no_grad():
        logits = torch.cat([net(x_test[i:i + 512]) for i in range(0, len(x_test), 512)])
    if y_test.ndim == 2:
        return challenge_scores(y_test, torch.sigmoid(logits))
    return challenge_scores(F.one_hot(y_test.long(), logits.shape[1]), torch.softmax(logits, 1))

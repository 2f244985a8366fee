"""minidiff.ecg_metrics and the signal TGDP nets (minidiff.tgdp.ecg): closed forms, hand-computed
confusion matrices, and tiny trainings that must learn the heart rate."""
from __future__ import annotations

import math

import pytest
import torch

from minidiff.checkpoint import build_model, model_config
from minidiff.ecg_metrics import (
    challenge_scores,
    diversity,
    downstream_utility,
    ecg_features,
    ecg_frechet,
    f_beta2,
    fit_ecg_classifier,
    g_beta2,
    membership_rate,
)
from minidiff.metrics import frechet_distance
from minidiff.schedules import NoiseSchedule
from minidiff.tgdp import (
    DensityRatioGuidance,
    fit_domain_classifier,
    fit_guidance_net,
    ratio_from_logit,
)
from minidiff.tgdp.ecg import SignalDomainClassifier, SignalEncoder, SignalGuidanceNet


def beats(n: int, bpm: float, fs: int = 50, seconds: float = 10.0, seed: int = 0) -> torch.Tensor:
    """(n, 1, L) pulse trains at ``bpm`` with random phases and a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * fs)) / fs
    period = 60.0 / bpm
    phase = torch.rand(n, 1, generator=g) * period
    d = torch.remainder(t - phase, period)
    d = torch.minimum(d, period - d)
    return (torch.exp(-0.5 * (d / 0.02) ** 2) + 0.05 * torch.randn(n, t.numel(), generator=g))[:, None]


# ---------- scores with closed forms ----------
def test_frechet_matches_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.5, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])      # stds (diagonal covariances)
    a = mu1 + s1 * torch.randn(200_000, 3, generator=g)
    b = mu2 + s2 * torch.randn(200_000, 3, generator=g)
    # d² = ‖μ1 − μ2‖² + Σ_k (σ1k² + σ2k² − 2 σ1k σ2k) for commuting (diagonal) covariances
    exact = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.03)


def test_f_and_g_beta2_on_a_hand_computed_confusion_matrix():
    # three classes: (TP, FP, FN) = (8, 2, 2), (1, 0, 3), (0, 4, 0)
    y_true = torch.tensor([[1, 0, 0]] * 10 + [[0, 1, 0]] * 4 + [[0, 0, 0]] * 6)
    y_score = torch.zeros(20, 3)
    y_score[:8, 0] = 1.0                            # 8 TP, 2 FN for class 0
    y_score[14:16, 0] = 0.9                         # 2 FP for class 0
    y_score[10, 1] = 0.7                            # 1 TP, 3 FN for class 1
    y_score[16:20, 2] = 0.6                         # 4 FP for class 2 (no positives)
    f = [5 * 8 / (5 * 8 + 2 + 4 * 2), 5 * 1 / (5 * 1 + 0 + 4 * 3), 0.0]
    g = [8 / (8 + 2 + 2 * 2), 1 / (1 + 0 + 2 * 3), 0.0]
    s = challenge_scores(y_true, y_score)
    assert s["f_beta2"] == pytest.approx(sum(f) / 3)
    assert s["g_beta2"] == pytest.approx(sum(g) / 3)
    tp, fp, fn = torch.tensor([8.0, 1.0]), torch.tensor([2.0, 0.0]), torch.tensor([2.0, 3.0])
    torch.testing.assert_close(f_beta2(tp, fp, fn), torch.tensor(f[:2]))
    torch.testing.assert_close(g_beta2(tp, fp, fn), torch.tensor(g[:2]))
    # class 2 has no positive: left out of the AUC; class 0 scores rank 8 of 10 positives above all negatives
    from sklearn.metrics import roc_auc_score
    expect = (roc_auc_score(y_true[:, 0], y_score[:, 0]) + roc_auc_score(y_true[:, 1], y_score[:, 1])) / 2
    assert s["auc"] == pytest.approx(expect)


def test_auc_extremes_and_errors():
    y = torch.tensor([[1], [1], [0], [0]])
    assert challenge_scores(y, torch.tensor([[0.9], [0.8], [0.2], [0.1]]))["auc"] == 1.0
    assert challenge_scores(y, torch.tensor([[0.1], [0.2], [0.8], [0.9]]))["auc"] == 0.0
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        challenge_scores(y[:, 0], torch.zeros(4))
    with pytest.raises(ValueError, match="threshold"):
        challenge_scores(y, torch.zeros(4, 1), threshold=1.5)


def test_diversity_is_relative_spread():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g)
    assert diversity(torch.randn(400, 4, generator=g), real) == pytest.approx(1.0, abs=0.05)
    assert diversity(2 * real, real) == pytest.approx(2.0)
    assert diversity(real[:1].expand(10, -1).clone(), real) == 0.0                  # copies of one record
    with pytest.raises(ValueError, match="N >= 2"):
        diversity(real[:1], real)
    with pytest.raises(ValueError, match="same F"):
        diversity(real, real[:, :3])


def test_membership_rate_counts_the_measured_heart_rate():
    x = torch.cat([beats(3, 60, fs=100), beats(1, 100, fs=100)])[:, 0]
    assert membership_rate(x, 100, (80.0, math.inf)) == 0.25
    assert membership_rate(x, 100, (55.0, 65.0)) == 0.75
    with pytest.raises(ValueError, match="high > low"):
        membership_rate(x, 100, (80.0, 80.0))


# ---------- the feature CNN and the downstream test ----------
def test_feature_cnn_learns_heart_rate_and_frechet_sees_it():
    x = torch.cat([beats(64, 60), beats(64, 100, seed=1)])
    y = torch.cat([torch.zeros(64), torch.ones(64)]).long()
    net = fit_ecg_classifier(x, y, steps=60, batch_size=32, lr=3e-3, width=16, progress=False)
    assert (net(x).argmax(1) == y).float().mean() > 0.9
    assert ecg_features(net, x).shape == (128, 32)
    slow, slow2, fast = beats(64, 60, seed=2), beats(64, 60, seed=3), beats(64, 100, seed=4)
    assert ecg_frechet(net, slow, slow2) < 0.2 * ecg_frechet(net, slow, fast)
    s = downstream_utility(x, y, torch.cat([slow, fast]), torch.cat([torch.zeros(64), torch.ones(64)]).long(),
                           steps=60, batch_size=32, lr=3e-3, width=16, progress=False)
    assert s["auc"] > 0.95 and s["f_beta2"] > 0.8
    with pytest.raises(ValueError, match=r"signals \(N, C, L\)"):
        fit_ecg_classifier(x[:, 0], y, steps=1)
    with pytest.raises(ValueError, match="y must be labels"):
        fit_ecg_classifier(x, y[:5], steps=1)


# ---------- TGDP's networks for signals ----------
def test_signal_nets_contract_and_rebuild():
    h = SignalGuidanceNet(2, conv_width=8, conv_depth=2, width=16, depth=1, num_timesteps=50)
    x, t = torch.randn(3, 2, 64), torch.tensor([0, 10, 49])
    torch.testing.assert_close(h(x, t), torch.ones(3), atol=0.05, rtol=0)        # starts at "no guidance"
    clone = build_model(model_config(h))
    clone.load_state_dict(h.state_dict())
    torch.testing.assert_close(clone.log_h(x, t), h.log_h(x, t))
    c = SignalDomainClassifier(2, conv_width=8)
    assert c(x).shape == (3,)
    with pytest.raises(ValueError, match=r"shape \(B, 2, L\)"):
        c(torch.randn(3, 3, 64))
    with pytest.raises(ValueError, match="depth must be"):
        SignalEncoder(2, depth=-1)


def test_density_ratio_guidance_on_signals_is_eps_minus_sigma_grad_log_h():
    schedule = NoiseSchedule.linear(50)
    h = SignalGuidanceNet(1, conv_width=8, conv_depth=1, width=16, depth=1, num_timesteps=50)
    with torch.no_grad():
        h.head[-1].weight.normal_()                                          # a non-trivial h
    eps_p = lambda x, t, cond=None: 0.5 * x
    guided = DensityRatioGuidance(eps_p, h, schedule)
    x, t = torch.randn(4, 1, 32), torch.full((4,), 30)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(h.log_h(xg, t).sum(), xg)
    sigma = (1 - schedule.alpha_bar[30]).sqrt()
    torch.testing.assert_close(guided(x, t), 0.5 * x - sigma * grad)


def test_fit_domain_classifier_and_guidance_net_on_signals():
    src = torch.cat([beats(96, 60), beats(32, 100, seed=1)])              # source: 25 % fast
    tgt = beats(16, 100, seed=2)                                          # target: fast only
    clf = fit_domain_classifier(src, tgt, steps=80, batch_size=32, lr=3e-3, progress=False,
                                net=SignalDomainClassifier(1, conv_width=16, width=32))
    with torch.no_grad():
        r, _ = ratio_from_logit(clf(torch.cat([beats(20, 60, seed=5), beats(20, 100, seed=6)])))
    assert r[20:].mean() > 5 * r[:20].mean()                              # q/p large on fast, small on slow
    schedule = NoiseSchedule.linear(50)
    h = fit_guidance_net(schedule, clf, src, steps=5, batch_size=16, progress=False,
                         net=SignalGuidanceNet(1, conv_width=8, width=16, depth=1, num_timesteps=50))
    assert h(src[:4], torch.zeros(4, dtype=torch.long)).shape == (4,)
    with pytest.raises(ValueError, match="pass net="):
        fit_domain_classifier(src, tgt, steps=1, progress=False)
    with pytest.raises(TypeError, match="net must be an nn.Module"):
        fit_domain_classifier(src, tgt, steps=1, progress=False, net="conv")
    with pytest.raises(ValueError, match="same dimension"):
        fit_domain_classifier(src, tgt[..., :100], steps=1, progress=False, net=SignalDomainClassifier(1))

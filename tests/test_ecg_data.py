"""minidiff.data.ecg: leads by name, derived leads, resampling, wfdb loaders on records written here, the
train-split standardisation, the label tables, measured features and the offline default."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minidiff.data.ecg import (
    CLASSES,
    ICBEB_TO_CLASS,
    INDEPENDENT_LEADS,
    PTBXL_TO_CLASS,
    TWELVE_LEADS,
    Standardizer,
    deepfake_source,
    derived_limb_leads,
    generate_deepfake,
    heart_rate,
    lead_indices,
    load_icbeb,
    load_ptbxl,
    mitbih_signal,
    mitbih_windows,
    qrs_axis,
    r_peaks,
    resample,
    target_population,
    twelve_leads,
)

wfdb = pytest.importorskip("wfdb")


def beats(n: int, bpm: float, fs: int = 100, seconds: float = 10.0, amp: float = 1.0, phase: float = 0.1) -> torch.Tensor:
    """(n, L) synthetic ECG-like trains: a narrow Gaussian 'QRS' every 60/bpm s plus a small sine baseline."""
    t = torch.arange(int(seconds * fs)) / fs
    period = 60.0 / bpm
    d = torch.remainder(t - phase, period)
    d = torch.minimum(d, period - d)
    x = amp * torch.exp(-0.5 * (d / 0.015) ** 2) + 0.05 * torch.sin(2 * math.pi * 0.3 * t)
    return x.expand(n, -1).clone()


# ---------- leads ----------
def test_derived_limb_leads_follow_einthoven_goldberger():
    g = torch.Generator().manual_seed(0)
    # electrode potentials R (right arm), L (left arm), F (left leg): every lead is a difference of them
    R, L, F = (torch.randn(4, 50, generator=g) for _ in range(3))
    lead_i, lead_ii = L - R, F - R
    d = derived_limb_leads(lead_i, lead_ii)
    torch.testing.assert_close(d["III"], F - L)
    torch.testing.assert_close(d["aVR"], R - (L + F) / 2)
    torch.testing.assert_close(d["aVL"], L - (R + F) / 2)
    torch.testing.assert_close(d["aVF"], F - (R + L) / 2)
    twelve = twelve_leads(torch.stack([lead_i, lead_ii, *torch.randn(6, 4, 50, generator=g)], 1))
    assert twelve.shape == (4, 12, 50)
    torch.testing.assert_close(twelve[:, TWELVE_LEADS.index("aVF")], F - (R + L) / 2)
    assert sum(twelve[:, TWELVE_LEADS.index(k)] for k in ("I", "III")).sub(twelve[:, 1]).abs().max() < 1e-6  # I+III=II


def test_lead_indices_by_name_and_errors():
    header = ["V1", "AVF", "II", "I", "resp", "V6"]
    assert lead_indices(header, ["I", "II", "aVF", "V6"]) == [3, 2, 1, 5]
    with pytest.raises(ValueError, match="unknown lead name 'V7'"):
        lead_indices(header, ["V7"])
    with pytest.raises(ValueError, match=r"leads \['V2'\] are not in this record"):
        lead_indices(header, ["V2"])
    with pytest.raises(ValueError, match="non-empty sequence"):
        lead_indices(header, "I")
    with pytest.raises(ValueError, match="same shape"):
        derived_limb_leads(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(B, 8, L\)"):
        twelve_leads(torch.zeros(2, 7, 10))


# ---------- resampling and features ----------
def test_resample_lengths_and_content():
    x = torch.sin(2 * math.pi * 1.0 * torch.arange(5000) / 500)[None].double()
    y = resample(x, 500, 100)
    assert y.shape == (1, 1000)
    ref = torch.sin(2 * math.pi * 1.0 * torch.arange(1000) / 100).double()
    assert (y[0, 50:-50] - ref[50:-50]).abs().max() < 1e-2            # a 1-Hz sine survives
    assert resample(torch.zeros(2, 3, 3600), 360, 100).shape == (2, 3, 1000)
    with pytest.raises(ValueError, match="fs_in"):
        resample(x, 0, 100)


@pytest.mark.parametrize("bpm", [50.0, 72.0, 110.0])
def test_heart_rate_on_synthetic_trains(bpm):
    hr = heart_rate(beats(3, bpm), 100)
    assert torch.allclose(hr, torch.full((3,), bpm), rtol=0.02)
    assert r_peaks(beats(1, bpm), 100).sum() == pytest.approx(10 * bpm / 60, abs=1)


def test_heart_rate_nan_on_flat_and_errors():
    assert heart_rate(torch.zeros(2, 1000), 100).isnan().all()
    with pytest.raises(ValueError, match=r"shape \(B, L\)"):
        heart_rate(torch.zeros(2, 1, 1000), 100)
    with pytest.raises(ValueError, match="fs"):
        heart_rate(torch.zeros(2, 1000), -1)


@pytest.mark.parametrize("angle", [-20.0, 0.0, 45.0, 80.0])
def test_qrs_axis_recovers_a_dipole_direction(angle):
    # a heart dipole of direction θ projects on lead I (0°) as cos θ and on aVF (90°) as sin θ;
    # lead II (60°) = cos(θ − 60°). The proxy must recover θ.
    q = beats(2, 70)
    th = math.radians(angle)
    lead_i, lead_ii = math.cos(th) * q, math.cos(th - math.radians(60)) * q
    assert qrs_axis(lead_i, lead_ii, 100).sub(angle).abs().max() < 2.0


# ---------- wfdb loaders ----------
def _write(path, names, fs, seconds, fill):
    path.parent.mkdir(parents=True, exist_ok=True)
    sig = np.stack([fill(k) * np.ones(int(fs * seconds)) for k in range(len(names))], 1)
    wfdb.wrsamp(path.name, fs=fs, units=["mV"] * len(names), sig_name=list(names), p_signal=sig, fmt=["16"] * len(names),
                write_dir=str(path.parent))


PTB_ORDER = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _ptbxl(tmp_path, n=4):
    rows = ["ecg_id,scp_codes,strat_fold,filename_lr,filename_hr"]
    codes = ["{'NORM': 100.0, 'SR': 0.0}", "{'AFIB': 100.0, 'CRBBB': 100.0}", "{'STD_': 50.0, 'PVC': 100.0}",
             "{'IMI': 100.0}"]
    for i in range(n):
        name = f"records100/00000/{i:05d}_lr"
        # lead k of record i holds the constant i + k/100, so order and record identity are checkable
        _write(tmp_path / name, PTB_ORDER, 100, 10, lambda k, i=i: i + k / 100)
        rows.append(f'{i},"{codes[i % 4]}",{i % 10 + 1},{name},records500/00000/{i:05d}_hr')
    (tmp_path / "ptbxl_database.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_ptbxl_loader_order_labels_folds(tmp_path):
    ds = load_ptbxl(_ptbxl(tmp_path), leads=["V6", "I", "aVF"])
    assert ds.x.shape == (4, 3, 1000) and ds.leads == ("V6", "I", "aVF")
    torch.testing.assert_close(ds.x[2, :, 500], torch.tensor([2.11, 2.00, 2.05]), atol=2e-3, rtol=0)
    assert ds.labels.shape == (4, len(CLASSES))
    assert [CLASSES[j] for j in ds.labels[1].nonzero()[:, 0]] == ["AF", "RBBB"]
    assert [CLASSES[j] for j in ds.labels[2].nonzero()[:, 0]] == ["PVC", "STD"]
    assert ds.labels[3].sum() == 0                                     # IMI is outside the 9 classes
    assert ds.folds.tolist() == [1, 2, 3, 4]


def test_label_tables_are_explicit_and_consistent():
    assert set(PTBXL_TO_CLASS.values()) == set(CLASSES) == set(ICBEB_TO_CLASS.values())
    assert [ICBEB_TO_CLASS[k] for k in range(1, 10)] == list(CLASSES)  # CPSC 2018 codes 1..9 in order
    assert PTBXL_TO_CLASS["CLBBB"] == "LBBB" and PTBXL_TO_CLASS["1AVB"] == "I-AVB"


def _icbeb(tmp_path, seconds=(12.0, 10.0, 7.0)):
    lines = ["Recording,First_label,Second_label,Third_label"]
    order = ["aVR", "I", "II", "III", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    for i, s in enumerate(seconds):
        _write(tmp_path / "g1" / f"A{i:04d}", order, 500, s, lambda k, i=i: i + k / 100)
        lines.append(f"A{i:04d},{i + 1},{9 - i if i else ''},")
    (tmp_path / "REFERENCE.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_icbeb_resamples_cuts_and_handles_short_records(tmp_path):
    root = _icbeb(tmp_path)
    with pytest.raises(ValueError, match="A0002 has 700 samples.*short='pad'"):
        load_icbeb(root)
    ds = load_icbeb(root, leads=["I", "aVR"], short="skip")
    assert ds.x.shape == (2, 2, 1000) and ds.record_ids == ["A0000", "A0001"]
    torch.testing.assert_close(ds.x[1, :, 500], torch.tensor([1.01, 1.00]), atol=2e-3, rtol=0)
    assert [CLASSES[j] for j in ds.labels[1].nonzero()[:, 0]] == ["AF", "STD"]             # codes 2 and 8
    padded = load_icbeb(root, leads=["I"], short="pad")
    assert padded.x.shape == (3, 1, 1000) and padded.x[2, 0, 750:].abs().max() == 0
    assert padded.x[2, 0, 300] == pytest.approx(2.01, abs=2e-3)
    assert sorted(padded.folds.tolist()) == [1, 2, 3]


def test_missing_folder_says_where_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="physionet.org/content/ptb-xl.*root="):
        load_ptbxl(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="REFERENCE.csv.*icbeb"):
        load_icbeb(tmp_path)
    with pytest.raises(ValueError, match="unknown lead name 'X1'"):
        load_ptbxl(tmp_path, leads=["X1"])
    with pytest.raises(ValueError, match="short must be one of"):
        load_icbeb(tmp_path, short="crop")


def test_standardizer_uses_the_train_split_only():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(20, 2, 50, generator=g) * torch.tensor([1.0, 3.0])[:, None] + torch.tensor([0.5, -2.0])[:, None]
    test = torch.randn(10, 2, 50, generator=g) * 10 + 7
    s = Standardizer(train)
    z = s(train)
    torch.testing.assert_close(z.mean(dim=(0, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2)), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(s(test), (test - train.mean((0, 2), keepdim=True)) / train.std((0, 2), keepdim=True))
    torch.testing.assert_close(s.invert(s(test)), test)
    with pytest.raises(ValueError, match=r"\(N, C, L\)"):
        Standardizer(torch.zeros(5, 10))


# ---------- offline default ----------
def test_deepfake_source_is_seeded_and_realistic():
    pytest.importorskip("deepfakeecg")
    a, b, c = generate_deepfake(3, seed=5), generate_deepfake(3, seed=5), generate_deepfake(3, seed=6)
    assert a.shape == (3, len(INDEPENDENT_LEADS), 1000)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 0.1
    hr = heart_rate(a[:, 1], 100)
    assert ((hr > 40) & (hr < 150)).all()                               # physiological rates
    assert 0.05 < a.std() < 1.0                                         # mV scale


def test_deepfake_source_cache_round_trip(tmp_path, monkeypatch):
    pytest.importorskip("deepfakeecg")
    monkeypatch.setenv("MINIDIFF_CACHE", str(tmp_path))
    first = deepfake_source(2, seed=3)
    assert len(list((tmp_path / "ecg").glob("deepfake-n2-seed3-fs100.pt"))) == 1
    torch.testing.assert_close(deepfake_source(2, seed=3), first)                      # read back from the cache
    torch.testing.assert_close(deepfake_source(2, seed=3, use_cache=False), first)     # and regenerated identically
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        deepfake_source(0)
    with pytest.raises(TypeError, match="seed must be an int"):
        generate_deepfake(2, seed=1.5)


def test_target_population_by_heart_rate():
    x = torch.stack([beats(1, 60)[0], beats(1, 90)[0]])[:, None].expand(-1, 8, -1).contiguous()
    assert target_population(x, 100, (80.0, math.inf)).tolist() == [False, True]
    assert target_population(x, 100, (50.0, 70.0)).tolist() == [True, False]
    with pytest.raises(ValueError, match="high > low"):
        target_population(x, 100, (80.0, 60.0))


def test_mitbih_windows():
    sig, fs = mitbih_signal()
    assert fs == 360 and sig.shape == (108000,)
    assert sig[:3].tolist() == pytest.approx([-0.245, -0.215, -0.185], abs=1e-6)  # as scipy.misc.electrocardiogram
    w = mitbih_windows()
    assert w.shape == (30, 1, 1000)
    assert 60 < np.nanmedian(heart_rate(w[:, 0], 100).numpy()) < 130
    with pytest.raises(FileNotFoundError, match="data/"):
        mitbih_signal("/nonexistent/ecg.dat")

r"""Real 12-lead ECG data sets in wfdb format -> one tensor layout (chapter 9; for users who have the files).

Both loaders return an :class:`ECGSet`: signals (N, leads, 10·fs) in mV at ``fs`` (100 Hz by default),
leads **selected by name** in the order asked for (default I, II, V1–V6), multi-hot labels over the nine
classes of the CPSC/ICBEB 2018 challenge (:data:`CLASSES`) and a fold number per record.

* **PTB-XL** (Wagner et al. 2020, 21,837 records of 10 s; PhysioNet, CC-BY 4.0): ``root`` holds
  ``ptbxl_database.csv`` (columns ``filename_lr``, ``filename_hr``, ``scp_codes``, ``strat_fold``) and
  the ``records100/``, ``records500/`` folders. The 100-Hz records are read (``filename_lr``).
* **ICBEB2018 / CPSC2018** (6,877 records of 6–60 s at 500 Hz): ``root`` holds ``REFERENCE.csv``
  (``Recording, First_label, Second_label, Third_label``, codes 1–9) and the records ``<Recording>.hea``
  + signal files (in ``root`` or any sub-folder). Records are resampled to ``fs`` (polyphase) and cut to
  their first 10 s. **Shorter records** (6–10 s): ``short="reject"`` (default) raises an error naming
  them, ``"pad"`` zero-pads at the end (the baseline of a mean-free ECG), ``"skip"`` drops them.
  There are no official folds: records get folds 1–10 by a seeded permutation.

**Label mapping** — written out, never inferred from a label binariser's sorted order (a trap in the
public TGDP code): PTB-XL SCP statement -> class, and ICBEB code -> class, in :data:`PTBXL_TO_CLASS` and
:data:`ICBEB_TO_CLASS`. PTB-XL statements outside the table carry no label.

**Standardisation** uses the training split only (:class:`Standardizer`): per-lead mean and standard
deviation of the training records, applied unchanged to validation, test and generated data.
"""
from __future__ import annotations

import ast
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...checks import check_choice, check_int, check_tensor
from .leads import INDEPENDENT_LEADS, canonical_lead, lead_indices
from .resample import resample

__all__ = [
    "CLASSES",
    "ICBEB_TO_CLASS",
    "PTBXL_TO_CLASS",
    "ECGSet",
    "Standardizer",
    "fit_record_length",
    "load_icbeb",
    "load_ptbxl",
]

CLASSES = ("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
PTBXL_TO_CLASS = {"NORM": "NORM", "AFIB": "AF", "1AVB": "I-AVB", "CLBBB": "LBBB", "CRBBB": "RBBB",
                  "PAC": "PAC", "PVC": "PVC", "STD_": "STD", "STE_": "STE"}
ICBEB_TO_CLASS = {1: "NORM", 2: "AF", 3: "I-AVB", 4: "LBBB", 5: "RBBB", 6: "PAC", 7: "PVC", 8: "STD", 9: "STE"}
SHORT_POLICIES = ("reject", "pad", "skip")

PTBXL_HELP = ("download PTB-XL from https://physionet.org/content/ptb-xl/ (wfdb format, ~3 GB) and pass the "
              "folder that contains ptbxl_database.csv as root=")
ICBEB_HELP = ("download ICBEB2018/CPSC2018 in wfdb format (e.g. the 'cpsc_2018' part of "
              "https://physionet.org/content/challenge-2020/, with the challenge's REFERENCE.csv from "
              "http://2018.icbeb.org/Challenge.html) and pass the folder that contains REFERENCE.csv as root=")


@dataclass
class ECGSet:
    """x: (N, C, L) float32 mV; labels: (N, len(CLASSES)) float multi-hot; folds: (N,) long in 1..10."""
    x: Tensor
    labels: Tensor
    folds: Tensor
    leads: tuple[str, ...]
    fs: int
    record_ids: list[str]

    def subset(self, mask: Tensor) -> ECGSet:
        """The records where ``mask`` (N,) bool is True."""
        idx = torch.nonzero(mask, as_tuple=True)[0]
        return ECGSet(self.x[idx], self.labels[idx], self.folds[idx], self.leads, self.fs,
                      [self.record_ids[i] for i in idx.tolist()])


class Standardizer:
    """Per-lead z-scoring with statistics of the training split only: x -> (x − μ_c)/σ_c.

    x_train: (N, C, L). mean, std: (1, C, 1)."""

    def __init__(self, x_train: Tensor, eps: float = 1e-6) -> None:
        check_tensor(x_train, "x_train", floating=True, nonempty=True)
        if x_train.ndim != 3:
            raise ValueError(f"x_train must have shape (N, C, L), got {tuple(x_train.shape)}")
        self.mean = x_train.mean(dim=(0, 2), keepdim=True)
        self.std = x_train.std(dim=(0, 2), keepdim=True).clamp(min=eps)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def invert(self, z: Tensor) -> Tensor:
        return z * self.std.to(z) + self.mean.to(z)


def _check_root(root: str | Path, marker: str, help_text: str) -> Path:
    root = Path(root).expanduser()
    if not (root / marker).is_file():
        raise FileNotFoundError(f"no {marker} in {root}: {help_text}")
    return root


def fit_record_length(x: Tensor, length: int, short: str, record: str) -> Tensor | None:
    """The first ``length`` samples of x: (C, L'); shorter records by the ``short`` policy (module docstring)."""
    short = check_choice(short, "short", SHORT_POLICIES)
    if x.shape[-1] >= length:
        return x[..., :length]
    if short == "reject":
        raise ValueError(f"record {record} has {x.shape[-1]} samples after resampling, fewer than the {length} of a "
                         "10-s window: pass short='pad' (zero-pad at the end) or short='skip' (drop such records)")
    if short == "skip":
        return None
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def _read(path: Path, leads: Sequence[str], fs: int, length: int, short: str) -> Tensor | None:
    """One wfdb record -> (len(leads), length) float32 mV at fs, leads by name."""
    import wfdb

    signal, fields = wfdb.rdsamp(str(path))
    idx = lead_indices(fields["sig_name"], leads)
    x = torch.from_numpy(np.nan_to_num(signal[:, idx].T.astype(np.float64)))
    x = resample(x, round(fields["fs"]), fs)
    out = fit_record_length(x, length, short, path.name)
    return None if out is None else out.float()


def _labels(names: list[list[str]]) -> Tensor:
    """Multi-hot (N, len(CLASSES)) in CLASSES order from each record's class names."""
    y = torch.zeros(len(names), len(CLASSES))
    for i, row in enumerate(names):
        for name in row:
            y[i, CLASSES.index(name)] = 1.0
    return y


def _check_args(leads: Sequence[str], fs: int, limit: int | None) -> tuple[tuple[str, ...], int, int | None]:
    leads = tuple(canonical_lead(lead) for lead in leads)
    fs = check_int(fs, "fs", 1, hint=" (target sampling rate in Hz)")
    limit = None if limit is None else check_int(limit, "limit", 1)
    return leads, fs, limit


def load_ptbxl(root: str | Path, leads: Sequence[str] = INDEPENDENT_LEADS, fs: int = 100,
               limit: int | None = None) -> ECGSet:
    """PTB-XL records (N, len(leads), 10·fs) with labels over :data:`CLASSES` and the official
    ``strat_fold`` (1–10; folds 9 and 10 are the recommended validation and test folds)."""
    leads, fs, limit = _check_args(leads, fs, limit)
    root = _check_root(root, "ptbxl_database.csv", PTBXL_HELP)
    with open(root / "ptbxl_database.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    xs, names, folds, ids = [], [], [], []
    for row in rows:
        xs.append(_read(root / row["filename_lr"], leads, fs, 10 * fs, "reject"))
        codes = ast.literal_eval(row["scp_codes"])                          # {"NORM": 100.0, "SR": 0.0}
        names.append([PTBXL_TO_CLASS[c] for c in codes if c in PTBXL_TO_CLASS])
        folds.append(int(row["strat_fold"]))
        ids.append(row.get("ecg_id", row["filename_lr"]))
    return ECGSet(torch.stack(xs), _labels(names), torch.tensor(folds), leads, fs, ids)


def load_icbeb(root: str | Path, leads: Sequence[str] = INDEPENDENT_LEADS, fs: int = 100, short: str = "reject",
               limit: int | None = None, seed: int = 0) -> ECGSet:
    """ICBEB2018 records (N, len(leads), 10·fs): resampled, cut to 10 s, short ones by ``short``; labels
    from REFERENCE.csv via :data:`ICBEB_TO_CLASS`; folds 1–10 from a permutation seeded by ``seed``."""
    leads, fs, limit = _check_args(leads, fs, limit)
    short = check_choice(short, "short", SHORT_POLICIES)
    root = _check_root(root, "REFERENCE.csv", ICBEB_HELP)
    headers = {p.stem: p.with_suffix("") for p in root.rglob("*.hea")}
    with open(root / "REFERENCE.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    xs, names, ids = [], [], []
    for row in rows:
        rec = row["Recording"]
        if rec not in headers:
            raise FileNotFoundError(f"REFERENCE.csv lists {rec} but {root} has no {rec}.hea: {ICBEB_HELP}")
        x = _read(headers[rec], leads, fs, 10 * fs, short)
        if x is None:
            continue
        codes = [row[k] for k in ("First_label", "Second_label", "Third_label") if row.get(k, "").strip()]
        xs.append(x)
        names.append([ICBEB_TO_CLASS[int(c)] for c in codes])
        ids.append(rec)
    if not xs:
        raise ValueError(f"no ICBEB record of {root} is 10 s long; use short='pad'")
    perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(check_int(seed, "seed", 0)))
    folds = torch.empty(len(xs), dtype=torch.long)
    folds[perm] = torch.arange(len(xs)) % 10 + 1
    return ECGSet(torch.stack(xs), _labels(names), folds, leads, fs, ids)

"""ECG data for chapter 9: leads by name, measured features, wfdb loaders (PTB-XL, ICBEB2018) and the
offline default (deepfake-ecg source, a heart-rate target, MIT-BIH record 208)."""
from .features import heart_rate, highpass, qrs_axis, r_peaks
from .leads import (
    INDEPENDENT_LEADS,
    LIMB_DERIVED,
    TWELVE_LEADS,
    canonical_lead,
    derived_limb_leads,
    lead_indices,
    twelve_leads,
)
from .offline import (
    deepfake_source,
    generate_deepfake,
    mitbih_signal,
    mitbih_windows,
    target_population,
)
from .resample import resample
from .wfdb_loaders import (
    CLASSES,
    ICBEB_TO_CLASS,
    PTBXL_TO_CLASS,
    ECGSet,
    Standardizer,
    load_icbeb,
    load_ptbxl,
)

__all__ = [
    "CLASSES",
    "ICBEB_TO_CLASS",
    "INDEPENDENT_LEADS",
    "LIMB_DERIVED",
    "PTBXL_TO_CLASS",
    "TWELVE_LEADS",
    "ECGSet",
    "Standardizer",
    "canonical_lead",
    "deepfake_source",
    "derived_limb_leads",
    "generate_deepfake",
    "heart_rate",
    "highpass",
    "lead_indices",
    "load_icbeb",
    "load_ptbxl",
    "mitbih_signal",
    "mitbih_windows",
    "qrs_axis",
    "r_peaks",
    "resample",
    "target_population",
    "twelve_leads",
]

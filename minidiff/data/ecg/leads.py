r"""ECG leads by name: the 12-lead order, selection by name, and the derived limb leads (chapter 9).

The six limb leads are voltages between three electrodes (right arm R, left arm L, left leg F), so only
two are independent. With I = L − R and II = F − R (Einthoven) and the Goldberger augmented leads:

.. math:: \mathrm{III} = \mathrm{II} - \mathrm I,\quad \mathrm{aVR} = -\tfrac12(\mathrm I + \mathrm{II}),\quad
          \mathrm{aVL} = \mathrm I - \tfrac12\mathrm{II},\quad \mathrm{aVF} = \mathrm{II} - \tfrac12\mathrm I .

A generator therefore models the 8 independent leads I, II, V1–V6 and derives the other four
(:func:`twelve_leads`). Leads are always **selected by name** (:func:`lead_indices`): wfdb returns them
in the order the record's header lists them, which differs between data sets (a trap in the public
TGDP code, which indexes by position).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...checks import check_tensor

__all__ = [
    "INDEPENDENT_LEADS",
    "LIMB_DERIVED",
    "TWELVE_LEADS",
    "canonical_lead",
    "derived_limb_leads",
    "lead_indices",
    "twelve_leads",
]

TWELVE_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
INDEPENDENT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
LIMB_DERIVED = ("III", "aVR", "aVL", "aVF")
_CANON = {name.upper(): name for name in TWELVE_LEADS}


def canonical_lead(name: str) -> str:
    """The standard spelling of a lead name: ``"AVF"``, ``"avf"``, ``" aVF "`` -> ``"aVF"``."""
    if not isinstance(name, str) or name.strip().upper() not in _CANON:
        raise ValueError(f"unknown lead name {name!r}; the 12 standard leads are {TWELVE_LEADS}")
    return _CANON[name.strip().upper()]


def lead_indices(available: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Positions of the ``wanted`` leads in a record whose leads are named ``available`` (case-insensitive).

    Raises a ValueError naming the leads that are missing, or unknown names in ``wanted``."""
    if isinstance(wanted, str) or not len(wanted):
        raise ValueError(f"wanted must be a non-empty sequence of lead names, e.g. {INDEPENDENT_LEADS}, got {wanted!r}")
    wanted = [canonical_lead(w) for w in wanted]
    have: dict[str, int] = {}
    for i, name in enumerate(available):
        try:
            have.setdefault(canonical_lead(name), i)
        except ValueError:                      # non-ECG channels (e.g. a respiration signal) are skipped
            continue
    missing = [w for w in wanted if w not in have]
    if missing:
        raise ValueError(f"leads {missing} are not in this record (it has {list(available)})")
    return [have[w] for w in wanted]


def derived_limb_leads(lead_i: Tensor, lead_ii: Tensor) -> dict[str, Tensor]:
    """III, aVR, aVL, aVF from leads I and II (Einthoven / Goldberger, module docstring); any equal shapes."""
    check_tensor(lead_i, "lead_i", floating=True)
    check_tensor(lead_ii, "lead_ii", floating=True)
    if lead_i.shape != lead_ii.shape:
        raise ValueError(f"lead_i and lead_ii must have the same shape, got {tuple(lead_i.shape)} and "
                         f"{tuple(lead_ii.shape)}")
    return {"III": lead_ii - lead_i,                       # III = II − I
            "aVR": -(lead_i + lead_ii) / 2,                # aVR = −(I + II)/2
            "aVL": lead_i - lead_ii / 2,                   # aVL = I − II/2
            "aVF": lead_ii - lead_i / 2}                   # aVF = II − I/2


def twelve_leads(x: Tensor, leads: Sequence[str] = INDEPENDENT_LEADS) -> Tensor:
    """The 12 standard leads (in :data:`TWELVE_LEADS` order) from signals x: (B, len(leads), L) that
    contain at least I, II and V1–V6 (named by ``leads``): returns (B, 12, L)."""
    check_tensor(x, "x", floating=True)
    if x.ndim != 3 or x.shape[1] != len(leads):
        raise ValueError(f"x must have shape (B, {len(leads)}, L) for leads {tuple(leads)}, got {tuple(x.shape)}")
    idx = dict(zip(INDEPENDENT_LEADS, lead_indices(leads, INDEPENDENT_LEADS)))
    derived = derived_limb_leads(x[:, idx["I"]], x[:, idx["II"]])
    rows = [x[:, idx[name]] if name in idx else derived[name] for name in TWELVE_LEADS]
    return torch.stack(rows, dim=1)

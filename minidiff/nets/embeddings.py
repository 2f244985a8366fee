r"""Time and class embeddings shared by every minidiff network (chapters 2 and 4).

Sinusoidal embedding (Vaswani et al. 2017, Sec. 3.5; used by DDPM, Ho et al. 2020, App. B):
:math:`\mathrm{emb}(t)_{i} = \sin(t\,\omega_i)`, :math:`\mathrm{emb}(t)_{i + d/2} = \cos(t\,\omega_i)`,
:math:`\omega_i = P^{-i/(d/2)}` with P = ``max_period``: nearby steps get nearby codes, and a
linear layer can read off any frequency.

Precision: the angles t·ω_i reach ~10³ rad, where bf16 (8 mantissa bits) cannot even tell t = 998
from t = 999, so the features are always computed in float32 and only then cast to the dtype of the
layer that reads them: a net converted with ``.to(torch.bfloat16)`` runs end to end in bf16.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .. import checks

__all__ = ["timestep_embedding", "TimeEmbedding", "ClassEmbedding", "check_timesteps", "conditioning",
           "check_int"]


def check_int(name: str, value: Any, minimum: int = 1, even: bool = False) -> int:
    """``value`` as an int >= ``minimum`` (and even if asked), else a ValueError/TypeError naming ``name``."""
    value = checks.check_int(value, name, minimum)
    if even and value % 2:
        raise ValueError(f"{name} must be even (half sines, half cosines), got {value}; use {value + 1}")
    return value


def _check_period(max_period: Any) -> float:
    if isinstance(max_period, bool) or not isinstance(max_period, numbers.Real) or not math.isfinite(max_period) \
            or max_period <= 1:
        raise ValueError(f"max_period (the longest sinusoid's period, in steps) must be a finite number > 1, "
                         f"got {max_period!r}; the usual value is 10000")
    return float(max_period)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0, dtype: torch.dtype | None = None) -> Tensor:
    """Sinusoidal features of (possibly fractional) steps. t: (B,) -> (B, dim); ``dim`` must be even.

    Computed in float32 whatever ``t``'s dtype (large t needs the mantissa), then cast to ``dtype``
    (default float32).
    """
    dim, max_period = check_int("dim", dim, even=True), _check_period(max_period)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return emb if dtype is None else emb.to(dtype)


def check_timesteps(t: Tensor, batch: int, num_timesteps: int) -> Tensor:
    """Validate the ``t`` a network receives: shape (B,) (or a scalar, broadcast), values in [0, T−1].

    Fractional steps are allowed (chapter 3 samples a discrete-time model at continuous times);
    NaN, inf and bool are not.
    """
    t = torch.as_tensor(t)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must hold step indices (int or float), got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"t must have shape (B,)=({batch},), got {tuple(t.shape)}")
    if t.numel() == 0:
        return t
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise ValueError("t contains NaN; steps must be numbers in [0, T)")
    lo, hi = t.aminmax()
    if lo < 0 or hi > num_timesteps - 1:
        raise ValueError(
            f"t must be in [0, T)=[0, {num_timesteps}) for this network, got min {float(lo):g} "
            f"and max {float(hi):g}; was the model built for a different T?"
        )
    return t


class TimeEmbedding(nn.Module):
    """Sinusoidal features followed by a 2-layer MLP: t: (B,) -> (B, dim), in the dtype of its weights."""

    def __init__(self, dim: int, freq_dim: int | None = None, max_period: float = 10_000.0) -> None:
        super().__init__()
        dim = check_int("dim", dim)
        self.freq_dim = dim if freq_dim is None else check_int("freq_dim", freq_dim, even=True)
        if self.freq_dim % 2:
            raise ValueError(f"the time embedding's dim ({dim}) is its sinusoid count and must be even; "
                             f"use {dim + 1} or pass an even freq_dim")
        self.max_period = _check_period(max_period)
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim, self.max_period, dtype=self.mlp[0].weight.dtype))


class ClassEmbedding(nn.Module):
    """Class labels -> (B, dim), with an extra learned *null* token for "no condition".

    Labels are ints in [0, num_classes); ``num_classes`` itself (= :attr:`null_label`) is the null
    token that classifier-free guidance uses for its unconditional branch (chapter 4).
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes)
        self.embed = nn.Embedding(num_classes + 1, check_int("dim", dim))

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Any, batch: int) -> Tensor:
        """labels: (B,) ints in [0, num_classes] -> (B, dim)."""
        return self.embed(self.check(labels, batch))

    def check(self, labels: Any, batch: int) -> Tensor:
        """Validated labels: (B,) ints in [0, num_classes] (the last one the null token), as long."""
        labels = torch.as_tensor(labels, device=self.embed.weight.device)
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.ndim != 1 or labels.shape[0] != batch:
            raise ValueError(f"cond must be integer class labels of shape (B,)=({batch},), got {labels.dtype} {tuple(labels.shape)}")
        lo, hi = labels.aminmax() if labels.numel() else (labels.new_zeros(()), labels.new_zeros(()))
        if lo < 0 or hi > self.num_classes:
            raise ValueError(
                f"class labels must be in [0, {self.num_classes}) (or {self.null_label} = null token), "
                f"got min {int(lo)}, max {int(hi)}"
            )
        return labels.long()


def class_labels(class_embed: ClassEmbedding | None, cond: Any) -> Tensor | None:
    """The label tensor inside ``cond`` (a tensor, or a mapping's ``"label"`` entry), or None.

    Other mapping entries (``"context"``, ``"c_add"``) are read by the nets that use them, not here.
    """
    if class_embed is None:
        if isinstance(cond, Tensor) or (isinstance(cond, Mapping) and "label" in cond):
            raise ValueError("this network is unconditional (num_classes=None) but class labels were given in cond")
        if cond is not None and not isinstance(cond, Mapping):
            raise TypeError(f"cond must be None, a label tensor or a mapping of tensors, got {type(cond).__name__}")
        return None
    if isinstance(cond, Mapping):
        if "label" not in cond:
            raise ValueError(f"this network is class-conditional: a mapping cond needs a 'label' entry (B,), "
                             f"got keys {sorted(cond)}; use label {class_embed.null_label} for the null token")
        cond = cond["label"]
    if cond is None:
        raise ValueError(
            "this network is class-conditional: pass cond=labels (B,), or "
            f"cond=torch.full((B,), {class_embed.null_label}) for the unconditional (null) token"
        )
    return cond


def conditioning(class_embed: ClassEmbedding | None, cond: Any, batch: int) -> Tensor | None:
    """The class embedding (B, dim) of ``cond`` — a label tensor (B,) or a mapping with a ``"label"``
    entry — for a class-conditional net; None for an unconditional one. Clear errors for misuse."""
    labels = class_labels(class_embed, cond)
    return None if labels is None else class_embed(labels, batch)

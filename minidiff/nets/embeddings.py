r"""Time and class embeddings shared by every minidiff network (chapters 2 and 4).

Sinusoidal embedding (Vaswani et al. 2017, Sec. 3.5; used by DDPM, Ho et al. 2020, App. B):
:math:`\mathrm{emb}(t)_{i} = \sin(t\,\omega_i)`, :math:`\mathrm{emb}(t)_{i + d/2} = \cos(t\,\omega_i)`,
:math:`\omega_i = P^{-i/(d/2)}` with P = ``max_period``: nearby steps get nearby codes, and a
linear layer can read off any frequency.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["timestep_embedding", "TimeEmbedding", "ClassEmbedding", "check_timesteps"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of (possibly fractional) steps. t: (B,) -> (B, dim); dim must be even."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def check_timesteps(t: Tensor, batch: int, num_timesteps: int) -> Tensor:
    """Validate the ``t`` a network receives: shape (B,) (or a scalar, broadcast), values in [0, T−1].

    Fractional steps are allowed (chapter 3 samples a discrete-time model at continuous times).
    """
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"t must have shape (B,)=({batch},), got {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() > num_timesteps - 1):
        raise ValueError(
            f"t must be in [0, T)=[0, {num_timesteps}) for this network, got min {float(t.min()):g} "
            f"and max {float(t.max()):g}; was the model built for a different T?"
        )
    return t


class TimeEmbedding(nn.Module):
    """Sinusoidal features followed by a 2-layer MLP: t: (B,) -> (B, dim)."""

    def __init__(self, dim: int, freq_dim: int | None = None) -> None:
        super().__init__()
        self.freq_dim = freq_dim or dim
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


class ClassEmbedding(nn.Module):
    """Class labels -> (B, dim), with an extra learned *null* token for "no condition".

    Labels are ints in [0, num_classes); ``num_classes`` itself (= :attr:`null_label`) is the null
    token that classifier-free guidance uses for its unconditional branch (chapter 4).
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Any, batch: int) -> Tensor:
        labels = torch.as_tensor(labels, device=self.embed.weight.device)
        if labels.is_floating_point() or labels.ndim != 1 or labels.shape[0] != batch:
            raise ValueError(f"cond must be integer class labels of shape (B,)=({batch},), got {labels.dtype} {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() > self.num_classes:
            raise ValueError(
                f"class labels must be in [0, {self.num_classes}) (or {self.null_label} = null token), "
                f"got min {int(labels.min())}, max {int(labels.max())}"
            )
        return self.embed(labels.long())


def conditioning(class_embed: ClassEmbedding | None, cond: Any, batch: int) -> Tensor | None:
    """The class embedding of ``cond`` for a conditional net, with clear errors for misuse."""
    if class_embed is None:
        if cond is not None:
            raise ValueError("this network is unconditional (num_classes=None) but cond was given")
        return None
    if cond is None:
        raise ValueError(
            "this network is class-conditional: pass cond=labels (B,), or "
            f"cond=torch.full((B,), {class_embed.null_label}) for the unconditional (null) token"
        )
    return class_embed(cond, batch)

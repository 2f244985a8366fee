"""An MLP eps-model for low-dimensional data (chapters 1–4, 8): the 2-D toys' denoiser.

x_t: (B, D) and t: (B,) -> ε̂: (B, D). Residual blocks, each told the time (and class) through an
added embedding — the same conditioning scheme as the U-Net, at a size that trains in seconds.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..checkpoint import record_config
from .embeddings import ClassEmbedding, TimeEmbedding, check_timesteps, conditioning

__all__ = ["MLPDenoiser"]


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.emb = nn.Linear(emb_dim, width)
        self.net = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.net(h + self.emb(emb))


@record_config
class MLPDenoiser(nn.Module):
    """Residual MLP eps-model.

    Args:
        dim: data dimension D.
        width: hidden width; depth: number of residual blocks.
        num_timesteps: the T of the schedule it is trained with (checked against samplers).
        num_classes: set for a class-conditional model (chapter 4); ``cond`` then holds labels.
    """

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, num_timesteps: int = 1000,
                 emb_dim: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        self.dim, self.num_timesteps, self.num_classes = dim, num_timesteps, num_classes
        self.time_embed = TimeEmbedding(emb_dim)
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        t = check_timesteps(t, x.shape[0], self.num_timesteps)
        emb = self.time_embed(t)
        class_emb = conditioning(self.class_embed, cond, x.shape[0])
        if class_emb is not None:
            emb = emb + class_emb
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)

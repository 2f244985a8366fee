"""A small U-Net eps-model for 8×8 … 32×32 images (chapter 2 onward).

The architecture follows DDPM/ADM in miniature (Ho et al. 2020, App. B; Dhariwal & Nichol 2021):
a conv stem, an encoder of ResBlocks (time/class embedding added inside each block) with
stride-2 downsampling, a middle block with self-attention, and a decoder that concatenates the
encoder's skip features. The output conv starts at zero, so an untrained model predicts ε̂ = 0.

Feature *ports*. Every encoder output (each one is also a skip), the middle block and every
decoder block is a named port: ``"in"``, ``"down.{level}.{block}"``, ``"down.{level}.pool"``,
``"mid"``, ``"up.{level}.{block}"``. ``forward(..., residuals={name: tensor})`` adds a tensor to a
port's feature, and ``forward(..., return_features=True)`` also returns every port's feature.
Later chapters steer the frozen net through these ports (BPS, ControlNet-style side networks)
without touching its code. ``unet.ports`` maps each name to its (channels, downsampling factor).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import record_config
from .embeddings import ClassEmbedding, TimeEmbedding, check_timesteps, conditioning

__all__ = ["UNet", "ResBlock", "SelfAttention2d"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class ResBlock(nn.Module):
    """Two 3×3 convs with GroupNorm/SiLU; the embedding is added between them (ADM-style)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.drop = _norm(c_out, groups), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H·W positions of a feature map, with a residual."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv, self.proj = nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        # (B, heads, HW, C/heads): attention over spatial positions
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class _Level(nn.Module):
    """ResBlocks (+ optional attention) at one resolution."""

    def __init__(self, blocks: Sequence[ResBlock], attention: bool, channels: int, groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(SelfAttention2d(channels, groups=groups) if attention else nn.Identity() for _ in blocks)


def check_image_size(image_size: int, channel_mults: Sequence[int]) -> None:
    """Each level but the last halves the resolution, so H = W must survive len(channel_mults) − 1 halvings."""
    factor = 2 ** (len(channel_mults) - 1)
    if image_size % factor:
        raise ValueError(f"image_size={image_size} must be divisible by 2**(levels-1)={factor}")


@record_config
class UNet(nn.Module):
    """U-Net eps-model: x: (B, C, H, W), t: (B,) -> ε̂: (B, C, H, W).

    Args:
        image_size: H = W; must be divisible by 2**(len(channel_mults) - 1).
        in_channels: C. base_channels: width of the first level; level i has base·channel_mults[i].
        num_res_blocks: ResBlocks per encoder level (the decoder has one more, for the pool skip).
        attention_levels: indices of levels with self-attention (the middle block always has it).
        num_timesteps: T of the schedule it is trained with. num_classes: class-conditional if set.
        out_channels: output channels, C by default. Only with the default is the U-Net itself an
            eps-model; other values serve wrappers that feed extra input channels (e.g. the
            super-resolution model of chapter 4 reads [x_t, low-res image, σ_a] and returns ε̂ of x_t).
    """

    def __init__(self, image_size: int = 8, in_channels: int = 1, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 attention_levels: Sequence[int] = (), num_timesteps: int = 1000,
                 num_classes: int | None = None, dropout: float = 0.0, groups: int = 8,
                 out_channels: int | None = None) -> None:
        super().__init__()
        check_image_size(image_size, channel_mults)
        self.image_size, self.in_channels = image_size, in_channels
        self.num_timesteps, self.num_classes = num_timesteps, num_classes
        emb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(emb_dim, freq_dim=base_channels)
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.ports: dict[str, tuple[int, int]] = {"in": (base_channels, 1)}

        widths = [base_channels * m for m in channel_mults]
        skips, c, scale = [base_channels], base_channels, 1
        self.down, self.pool = nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):
            blocks = []
            for j in range(num_res_blocks):
                blocks.append(ResBlock(c, w, emb_dim, groups, dropout))
                c = w
                skips.append(c)
                self.ports[f"down.{i}.{j}"] = (c, scale)
            self.down.append(_Level(blocks, i in attention_levels, c, groups))
            last = i == len(widths) - 1
            self.pool.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                scale *= 2
                skips.append(c)
                self.ports[f"down.{i}.pool"] = (c, scale)

        self.mid1, self.mid_attn = ResBlock(c, c, emb_dim, groups, dropout), SelfAttention2d(c, groups=groups)
        self.mid2 = ResBlock(c, c, emb_dim, groups, dropout)
        self.ports["mid"] = (c, scale)

        self.up, self.unpool = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks = []
            for j in range(num_res_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), widths[i], emb_dim, groups, dropout))
                c = widths[i]
                self.ports[f"up.{i}.{j}"] = (c, scale)
            self.up.append(_Level(blocks, i in attention_levels, c, groups))
            self.unpool.append(nn.Identity() if i == 0 else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
            if i > 0:
                scale //= 2
        self.out = nn.Sequential(_norm(c, groups), nn.SiLU(), nn.Conv2d(c, out_channels or in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None, *,
                residuals: Mapping[str, Tensor] | None = None,
                return_features: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """ε̂ for x: (B, C, H, W). ``residuals`` {port: (B, c, h, w)} are added at the ports;
        with ``return_features`` the result is ``(eps, {port: feature})``."""
        self._check_input(x, residuals)
        emb = self.time_embed(check_timesteps(t, x.shape[0], self.num_timesteps))
        class_emb = conditioning(self.class_embed, cond, x.shape[0])
        if class_emb is not None:
            emb = emb + class_emb
        feats: dict[str, Tensor] = {}

        def port(name: str, h: Tensor) -> Tensor:
            if residuals is not None and name in residuals:
                h = h + residuals[name]
            feats[name] = h
            return h

        h = port("in", self.conv_in(x))
        skips = [h]
        for i, (level, pool) in enumerate(zip(self.down, self.pool)):
            for j, (block, attn) in enumerate(zip(level.blocks, level.attn)):
                h = port(f"down.{i}.{j}", attn(block(h, emb)))
                skips.append(h)
            if not isinstance(pool, nn.Identity):
                h = port(f"down.{i}.pool", pool(h))
                skips.append(h)
        h = port("mid", self.mid2(self.mid_attn(self.mid1(h, emb)), emb))
        n_levels = len(self.up)
        for k, (level, unpool) in enumerate(zip(self.up, self.unpool)):
            i = n_levels - 1 - k
            for j, (block, attn) in enumerate(zip(level.blocks, level.attn)):
                h = port(f"up.{i}.{j}", attn(block(torch.cat([h, skips.pop()], dim=1), emb)))
            h = unpool(h)
        eps = self.out(h)
        return (eps, feats) if return_features else eps

    def port_shape(self, name: str) -> tuple[int, int, int]:
        """(channels, height, width) of a port's feature map."""
        if name not in self.ports:
            raise KeyError(f"unknown port {name!r}; available: {list(self.ports)}")
        c, scale = self.ports[name]
        return c, self.image_size // scale, self.image_size // scale

    def _check_input(self, x: Tensor, residuals: Mapping[str, Tensor] | None) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}")
        for name, r in (residuals or {}).items():
            shape = self.port_shape(name)
            if tuple(r.shape[1:]) != shape:
                raise ValueError(f"residual for port {name!r} must have shape (B, {shape[0]}, {shape[1]}, {shape[2]}), got {tuple(r.shape)}")

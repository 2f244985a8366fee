r"""Attention blocks of the U-Net: self-attention (chapter 2) and the cross-attention transformer (chapter 5).

Scaled dot-product attention (Vaswani et al. 2017, eq. 1), per head (Sec. 3.2.2):

.. math:: \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\big(Q K^\top / \sqrt{d}\big)\, V,
          \quad Q = x W_q,\; K = c W_k,\; V = c W_v,

with c = x (self-attention) or c = the text tokens (cross-attention, Rombach et al. 2022, Sec. 3.3).
Positions of a feature map are the tokens: (B, C, H, W) -> (B, H·W, C), and (B, C, L) -> (B, L, C) for
1-D signals, so one block serves both.

The modules mirror diffusers, name for name, so that one LoRA target list (``to_q``, ``to_k``, ``to_v``,
``to_out.0``) and one mental model serve minidiff's U-Net and Stable Diffusion's (chapter 10):

* :class:`Attention` — diffusers ``Attention`` (``to_q``, ``to_k``, ``to_v``, ``to_out = [Linear, Dropout]``);
* :class:`SelfAttention` — ``Attention(norm_num_groups=g, residual_connection=True, bias=True)``, the
  DDPM/ADM attention block of diffusers' ``UNet2DModel``;
* :class:`TransformerBlock` — ``BasicTransformerBlock`` (norm1, attn1, norm2, attn2, norm3, ff with GEGLU);
* :class:`SpatialTransformer` — ``Transformer2DModel(use_linear_projection=True)`` (norm, proj_in,
  transformer_blocks, proj_out, residual), as in SD 2.x.

The tests load these state dicts into the diffusers modules and compare outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..checks import check_int

__all__ = ["group_norm", "to_tokens", "from_tokens", "Attention", "SelfAttention", "GEGLU", "FeedForward",
           "TransformerBlock", "SpatialTransformer"]


def _check_int(name: str, value: object, low: int = 1) -> int:
    """``value`` as an int >= low, or a TypeError/ValueError naming the argument."""
    return check_int(value, name, low)


def group_norm(channels: int, groups: int, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with min(groups, channels) groups; a clear error if they do not divide the channels."""
    n = min(groups, channels)
    if channels % n:
        raise ValueError(f"groups={groups} must divide the channels of every GroupNorm, but a layer here has "
                         f"{channels} channels ({channels} % {groups} = {channels % groups}); choose groups dividing "
                         "base_channels·channel_mults and their sums (e.g. a power of two that divides base_channels)")
    return nn.GroupNorm(n, channels, eps=eps)


def to_tokens(x: Tensor) -> Tensor:
    """Feature map -> tokens: x: (B, C, *spatial) -> (B, N, C), N = the number of positions."""
    return rearrange(x, "b c ... -> b (...) c")


def from_tokens(tokens: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Tokens -> feature map: (B, N, C) -> ``shape`` = (B, C, *spatial); inverse of :func:`to_tokens`."""
    return tokens.transpose(1, 2).reshape(shape)


class Attention(nn.Module):
    """Multi-head (cross-)attention on tokens: x: (B, N, query_dim), context: (B, L, context_dim) -> (B, N, query_dim).

    heads · dim_head is the inner width (dim_head defaults to query_dim // heads). Without ``context_dim``
    it is self-attention (``context`` must be None); with it, keys and values come from ``context``.
    """

    def __init__(self, query_dim: int, heads: int = 4, dim_head: int | None = None, context_dim: int | None = None,
                 bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        query_dim, heads = _check_int("query_dim", query_dim), _check_int("heads", heads)
        if dim_head is None:
            if query_dim % heads:
                raise ValueError(f"attention width {query_dim} must be divisible by heads={heads}; pick heads dividing "
                                 "every attention level's channels")
            dim_head = query_dim // heads
        dim_head = _check_int("dim_head", dim_head)
        self.heads, self.dim_head = heads, dim_head
        self.context_dim = None if context_dim is None else _check_int("context_dim", context_dim)
        inner, kv_dim = heads * dim_head, self.context_dim or query_dim
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(dropout)])

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``mask``: optional bool (B, N, L) or broadcastable, True where query n may attend to key l
        (the text encoder's causal and padding masks); masked keys get attention weight 0."""
        if (context is None) != (self.context_dim is None):
            raise ValueError("a cross-attention layer needs context (B, L, context_dim)" if context is None
                             else "a self-attention layer takes no context")
        if context is not None and (context.ndim != 3 or context.shape[-1] != self.context_dim):
            raise ValueError(f"context must have shape (B, L, context_dim)=(B, L, {self.context_dim}), got {tuple(context.shape)}")
        source = x if context is None else context
        q, k, v = (rearrange(proj(s), "b n (h d) -> b h n d", h=self.heads)
                   for proj, s in ((self.to_q, x), (self.to_k, source), (self.to_v, source)))
        if mask is not None:
            if mask.dtype != torch.bool or mask.ndim != 3:
                raise ValueError(f"mask must be a bool tensor (B, N, L), got {mask.dtype} {tuple(mask.shape)}")
            mask = mask[:, None]                                # one mask for every head
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)   # softmax(q kᵀ / √d) v, per head (eq. 1)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out[1](self.to_out[0](out))


class SelfAttention(Attention):
    """The DDPM/ADM attention block: x + Attention(GroupNorm(x)) over positions. x: (B, C, *spatial) -> same.

    ``SelfAttention2d`` (chapter 2's name) is this class; it works on 1-D signals too.
    """

    def __init__(self, channels: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__(channels, heads, bias=True)
        self.group_norm = group_norm(channels, _check_int("groups", groups))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is not None:
            raise ValueError("SelfAttention takes no context; build the U-Net with context_dim for cross-attention")
        return x + from_tokens(super().forward(to_tokens(self.group_norm(x))), x.shape)


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020, Sec. 2): x: (B, N, dim_in) -> a ⊙ GELU(g), [a, g] = x W + b."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's position-wise MLP: GEGLU to mult·dim, dropout, linear back. (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * _check_int("mult", mult)
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on tokens, as in Stable Diffusion. x: (B, N, dim), context: (B, L, context_dim).

        x = x + attn1(norm1(x))             self-attention
        x = x + attn2(norm2(x), context)    cross-attention (only with context_dim)
        x = x + ff(norm3(x))                GEGLU feed-forward
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads, dropout=dropout)
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, context_dim=context_dim, dropout=dropout)
        else:
            self.norm2 = self.attn2 = None
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``mask``: optional bool (B, N, N) for the self-attention, True where a token may attend."""
        x = x + self.attn1(self.norm1(x), mask=mask)
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the positions of a feature map, with a residual (LDM's cross-attention block).

    x: (B, C, *spatial), context: (B, L, context_dim) -> (B, C, *spatial):
    GroupNorm -> tokens -> proj_in -> ``depth`` :class:`TransformerBlock` s -> proj_out -> feature map, + x.
    """

    def __init__(self, channels: int, heads: int = 4, context_dim: int | None = None, groups: int = 8,
                 depth: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = group_norm(channels, _check_int("groups", groups), eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim, dropout)
                                                for _ in range(_check_int("depth", depth)))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.proj_in(to_tokens(self.norm(x)))
        for block in self.transformer_blocks:
            h = block(h, context)
        return x + from_tokens(self.proj_out(h), x.shape)

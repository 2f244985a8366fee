"""A small U-Net eps-model for images (chapter 2 on), text-conditioned latents (chapter 5) and 1-D signals (chapter 9).

The architecture follows DDPM/ADM in miniature (Ho et al. 2020, App. B; Dhariwal & Nichol 2021):
a conv stem, an encoder of ResBlocks (time/class embedding added inside each block) with
stride-2 downsampling, a middle block with attention, and a decoder that concatenates the
encoder's skip features. The output conv starts at zero, so an untrained model predicts ε̂ = 0.

* ``dims=2`` reads images (B, C, H, W), square or not; ``dims=1`` reads signals (B, C, L) with the same
  code (Conv1d instead of Conv2d; attention treats positions as tokens either way). Each level but the
  last halves the size, so H, W or L must be divisible by 2**(levels − 1): other sizes are rejected with
  the nearest valid ones named (crop or pad the data yourself — silent padding would hide edge effects).
* ``context_dim=D`` gives the attention levels and the middle block a Stable-Diffusion-shaped transformer
  (self-attention, cross-attention to ``cond["context"]`` (B, L, D), GEGLU feed-forward; see
  :mod:`minidiff.nets.attention`); without it they use DDPM's self-attention block.

Feature *ports* (:mod:`minidiff.nets.ports`). Every port is a :class:`~minidiff.nets.ports.Port` module in
the tree, so a forward hook reads or changes it — the mechanism that also steers a diffusers U-Net:

* ``"in"`` (the stem), ``"down.{level}.{block}"``, ``"down.{level}.pool"``, ``"mid"``, ``"up.{level}.{block}"``:
  the main stream;
* ``"skip.{k}"``: the k-th encoder feature (k = 0 is ``"in"``, then the ``down.*`` ports in order) *as the
  decoder reads it*. Adding to a skip port changes only what the decoder concatenates, not the encoder's
  stream (ControlNet's and power steering's encoder→decoder mode).

``unet.ports`` maps each name to (channels, downsampling factor); :meth:`UNet.port_shape` gives the feature
shape without the batch. ``forward(..., residuals={name: tensor})`` and ``return_features=True`` are
shortcuts for :func:`~minidiff.nets.ports.add_residuals` and :func:`~minidiff.nets.ports.capture`.
"""
from __future__ import annotations

import numbers
from contextlib import ExitStack
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import record_config
from .attention import SelfAttention, SpatialTransformer, _check_int, group_norm
from .embeddings import ClassEmbedding, TimeEmbedding, check_timesteps, conditioning
from .ports import Port, add_residuals, capture

__all__ = ["UNet", "ResBlock", "SelfAttention2d", "check_image_size"]

#: chapter 2's name for the DDPM self-attention block (now also 1-D)
SelfAttention2d = SelfAttention

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}


def _check_dims(dims: object) -> int:
    if isinstance(dims, bool) or dims not in (1, 2):
        raise ValueError(f"dims must be 1 (signals (B, C, L)) or 2 (images (B, C, H, W)), got {dims!r}")
    return int(dims)


class ResBlock(nn.Module):
    """Two 3-wide convs with GroupNorm/SiLU; the embedding is added between them (ADM-style).

    x: (B, c_in, *spatial), emb: (B, emb_dim) -> (B, c_out, *spatial); ``dims`` = len(spatial) ∈ {1, 2}.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8, dropout: float = 0.0,
                 dims: int = 2) -> None:
        super().__init__()
        conv = _CONV[_check_dims(dims)]
        self.norm1, self.conv1 = group_norm(c_in, groups), conv(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.drop = group_norm(c_out, groups), nn.Dropout(dropout)
        self.conv2 = conv(c_out, c_out, 3, padding=1)
        self.skip = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))
        h = h + e.reshape(*e.shape, *([1] * (h.ndim - 2)))     # (B, c_out) broadcast over positions
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Level(nn.Module):
    """ResBlocks (+ optional attention) at one resolution, each followed by its output port."""

    def __init__(self, blocks: Sequence[ResBlock], attn: Sequence[nn.Module], ports: Sequence[Port]) -> None:
        super().__init__()
        self.blocks, self.attn, self.ports = nn.ModuleList(blocks), nn.ModuleList(attn), nn.ModuleList(ports)


def check_image_size(image_size: int | Sequence[int], channel_mults: Sequence[int], dims: int = 2) -> tuple[int, ...]:
    """The spatial size as a tuple (H, W) or (L,); each must survive len(channel_mults) − 1 halvings.

    ``image_size`` is an int (H = W, or L for ``dims=1``) or a tuple of ``dims`` ints. Sizes that do not
    divide raise a ValueError naming the nearest valid ones.
    """
    dims = _check_dims(dims)
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        sizes = (image_size,) * dims
    elif isinstance(image_size, Sequence) and not isinstance(image_size, str):
        sizes = tuple(image_size)
    else:
        sizes = ()
    if len(sizes) != dims:
        raise TypeError(f"image_size must be an int or a tuple of {dims} ints ({'(H, W)' if dims == 2 else '(L,)'}), "
                        f"got {image_size!r}")
    sizes = tuple(_check_int("image_size", s) for s in sizes)
    levels = len(channel_mults)
    factor = 2 ** (levels - 1)
    for s in sizes:
        if s % factor:
            near = [v for v in (s // factor * factor, (s // factor + 1) * factor) if v > 0]
            raise ValueError(f"image_size={image_size} must be divisible by 2**(levels-1)={factor} (each of the {levels} "
                             f"levels but the last halves it); nearest valid sizes to {s}: "
                             f"{' or '.join(map(str, near))} — crop or pad the data, or use fewer levels")
    return sizes


@record_config
class UNet(nn.Module):
    """U-Net eps-model: x: (B, C, *size), t: (B,), cond -> ε̂: (B, C, *size); size = (H, W) or (L,).

    Args:
        image_size: spatial size: an int (H = W; L for ``dims=1``) or a tuple (H, W); each must be
            divisible by 2**(len(channel_mults) - 1).
        in_channels: C. base_channels: width of the first level; level i has base·channel_mults[i].
        num_res_blocks: ResBlocks per encoder level (the decoder has one more, for the pool skip).
        attention_levels: indices of levels with attention (the middle block always has it).
        num_timesteps: T of the schedule it is trained with. num_classes: class-conditional if set.
        dropout: in [0, 1). groups: GroupNorm groups (capped at a layer's channels; must divide them).
        out_channels: output channels, C by default. Only with the default is the U-Net itself an
            eps-model; other values serve wrappers that feed extra input channels (e.g. the
            super-resolution model of chapter 4 reads [x_t, low-res image, σ_a] and returns ε̂ of x_t).
        dims: 2 for images, 1 for signals. heads: attention heads (must divide the attention widths).
        context_dim: D of the text tokens ``cond["context"]`` (B, L, D) to cross-attend to; None for none.

    Conditions: ``cond`` is None, class labels (B,), or a mapping ``{"label": (B,), "context": (B, L, D)}``
    (other entries, e.g. power steering's ``c_add``, are ignored here). For a model with ``context_dim`` and
    no classes, a plain tensor ``cond`` is the context. ``null_cond`` is the learned null label (or None);
    the null of the context (the empty prompt's embedding) comes from the text encoder.
    """

    def __init__(self, image_size: int | Sequence[int] = 8, in_channels: int = 1, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 attention_levels: Sequence[int] = (), num_timesteps: int = 1000,
                 num_classes: int | None = None, dropout: float = 0.0, groups: int = 8,
                 out_channels: int | None = None, *, dims: int = 2, heads: int = 4,
                 context_dim: int | None = None) -> None:
        super().__init__()
        self.dims = _check_dims(dims)
        base, widths, attention_levels = self._check_args(channel_mults, base_channels, attention_levels, dropout)
        self.spatial_size = check_image_size(image_size, channel_mults, self.dims)
        self.image_size = image_size
        self.in_channels = _check_int("in_channels", in_channels)
        self.num_timesteps = _check_int("num_timesteps", num_timesteps)
        self.num_classes = None if num_classes is None else _check_int("num_classes", num_classes)
        self.context_dim = None if context_dim is None else _check_int("context_dim", context_dim)
        out_channels = self.in_channels if out_channels is None else _check_int("out_channels", out_channels)
        self._blocks = dict(emb_dim=4 * base, groups=_check_int("groups", groups), dropout=float(dropout),
                            heads=_check_int("heads", heads))
        num_res_blocks = _check_int("num_res_blocks", num_res_blocks)

        self.time_embed = TimeEmbedding(4 * base, freq_dim=base)
        self.class_embed = ClassEmbedding(self.num_classes, 4 * base) if self.num_classes else None
        self.conv_in = _CONV[self.dims](self.in_channels, base, 3, padding=1)
        self.port_in = Port("in", base, 1)
        skips = self._build_encoder(base, widths, attention_levels, num_res_blocks)
        c, scale = skips[-1]
        self.mid1, self.mid_attn, self.mid2 = self._res(c, c), self._attention(c), self._res(c, c)
        self.port_mid = Port("mid", c, scale)
        self.skip_ports = nn.ModuleList(Port(f"skip.{k}", ck, sk) for k, (ck, sk) in enumerate(skips))
        self._build_decoder(widths, attention_levels, num_res_blocks, skips)
        self.out = nn.Sequential(group_norm(widths[0], groups), nn.SiLU(),
                                 _CONV[self.dims](widths[0], out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.ports: dict[str, tuple[int, int]] = self._port_table()

    def _res(self, c_in: int, c_out: int) -> ResBlock:
        b = self._blocks
        return ResBlock(c_in, c_out, b["emb_dim"], b["groups"], b["dropout"], self.dims)

    def _attention(self, c: int) -> nn.Module:
        """The attention block of a level: SD's transformer with ``context_dim``, else DDPM's self-attention."""
        b = self._blocks
        if self.context_dim is not None:
            return SpatialTransformer(c, b["heads"], self.context_dim, b["groups"], dropout=b["dropout"])
        return SelfAttention(c, b["heads"], b["groups"])

    def _level(self, blocks: list[ResBlock], attention: bool, ports: list[Port]) -> _Level:
        c = blocks[-1].conv2.out_channels
        return _Level(blocks, [self._attention(c) if attention else nn.Identity() for _ in blocks], ports)

    def _build_encoder(self, base: int, widths: list[int], attention_levels: set[int],
                       num_res_blocks: int) -> list[tuple[int, int]]:
        """down[i], pool[i], pool_ports[i]; returns (channels, scale) of every skip in encoder order."""
        skips, c = [(base, 1)], base
        self.down, self.pool, self.pool_ports = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):                       # level i works at 1 / 2**i of the input size
            blocks = [self._res(c if j == 0 else w, w) for j in range(num_res_blocks)]
            c = w
            self.down.append(self._level(blocks, i in attention_levels,
                                         [Port(f"down.{i}.{j}", c, 2 ** i) for j in range(num_res_blocks)]))
            skips += [(c, 2 ** i)] * num_res_blocks
            if i == len(widths) - 1:                         # the last level does not downsample
                self.pool.append(nn.Identity())
                self.pool_ports.append(nn.Identity())
            else:
                self.pool.append(_CONV[self.dims](c, c, 3, stride=2, padding=1))
                self.pool_ports.append(Port(f"down.{i}.pool", c, 2 ** (i + 1)))
                skips.append((c, 2 ** (i + 1)))
        return skips

    def _build_decoder(self, widths: list[int], attention_levels: set[int], num_res_blocks: int,
                       skips: list[tuple[int, int]]) -> None:
        """up[k], unpool[k] for levels i = L-1 … 0; each block reads one skip, last one first."""
        skips, c = list(skips), widths[-1]
        self.up, self.unpool = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(self._res(c + skips.pop()[0], widths[i]))
                c = widths[i]
            ports = [Port(f"up.{i}.{j}", c, 2 ** i) for j in range(num_res_blocks + 1)]
            self.up.append(self._level(blocks, i in attention_levels, ports))
            self.unpool.append(nn.Identity() if i == 0 else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), _CONV[self.dims](c, c, 3, padding=1)))

    @staticmethod
    def _check_args(channel_mults: Sequence[int], base_channels: int, attention_levels: Sequence[int],
                    dropout: float) -> tuple[int, list[int], set[int]]:
        if isinstance(channel_mults, (str, bytes)) or not isinstance(channel_mults, Sequence) or not channel_mults:
            raise TypeError(f"channel_mults must be a non-empty sequence of ints (one per level), got {channel_mults!r}")
        base = _check_int("base_channels", base_channels)
        widths = [base * _check_int(f"channel_mults[{i}]", m) for i, m in enumerate(channel_mults)]
        if isinstance(attention_levels, (str, bytes)) or not isinstance(attention_levels, Iterable):
            raise TypeError(f"attention_levels must be a sequence of level indices, got {attention_levels!r}")
        levels = set()
        for a in attention_levels:
            if isinstance(a, bool) or not isinstance(a, numbers.Integral) or not 0 <= a < len(widths):
                raise ValueError(f"attention_levels must be level indices in [0, {len(widths)}), got {list(attention_levels)}")
            levels.add(int(a))
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        return base, widths, levels

    def _port_table(self) -> dict[str, tuple[int, int]]:
        """name -> (channels, scale), main stream in forward order, then the skips."""
        main = [self.port_in]
        for level, pool_port in zip(self.down, self.pool_ports):
            main += list(level.ports) + ([pool_port] if isinstance(pool_port, Port) else [])
        main.append(self.port_mid)
        main += [p for level in self.up for p in level.ports] + list(self.skip_ports)
        return {p.port_name: (p.channels, p.scale) for p in main}

    @property
    def null_cond(self) -> int | None:
        """The null condition classifier-free guidance uses: the learned null label, or None."""
        return self.class_embed.null_label if self.class_embed is not None else None

    def port_shape(self, name: str) -> tuple[int, ...]:
        """(channels, height, width) of a port's feature map; (channels, length) for ``dims=1``."""
        if name not in self.ports:
            raise KeyError(f"unknown port {name!r}; available: {list(self.ports)}")
        c, scale = self.ports[name]
        return (c, *(s // scale for s in self.spatial_size))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None, *,
                residuals: Mapping[str, Tensor] | None = None,
                return_features: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """ε̂ for x: (B, C, *size). ``residuals`` {port: (B, *port_shape)} are added at the ports;
        with ``return_features`` the result is ``(eps, {port: feature})`` for every port."""
        if residuals is None and not return_features:
            return self._eps(x, t, cond)
        if residuals is not None:
            if not isinstance(residuals, Mapping):
                raise TypeError(f"residuals must be a mapping {{port: tensor}}, got {type(residuals).__name__}")
            for name in residuals:
                self.port_shape(name)                        # KeyError naming the ports for a typo
        with ExitStack() as stack:
            if residuals:
                stack.enter_context(add_residuals(self, residuals))
            feats = stack.enter_context(capture(self)) if return_features else {}
            eps = self._eps(x, t, cond)
        return (eps, {name: feats[name] for name in self.ports}) if return_features else eps

    def encode(self, x: Tensor, t: Tensor, cond: Any = None) -> tuple[list[Tensor], Tensor]:
        """The encoder and middle only: (skips, mid) with skips[k] the feature the decoder reads at port
        ``skip.k`` (before that port) and mid the middle block's output. What a ControlNet branch runs."""
        skips, h, _, _ = self._encode(x, t, cond)
        return skips, h

    def _encode(self, x: Tensor, t: Tensor, cond: Any) -> tuple[list[Tensor], Tensor, Tensor, Tensor | None]:
        self._check_input(x)
        emb, context = self._conditioning(x, t, cond)
        h = self.port_in(self.conv_in(x))
        skips = [h]
        for level, pool, pool_port in zip(self.down, self.pool, self.pool_ports):
            for block, attn, port in zip(level.blocks, level.attn, level.ports):
                h = port(_attend(attn, block(h, emb), context))
                skips.append(h)
            if isinstance(pool_port, Port):
                h = pool_port(pool(h))
                skips.append(h)
        h = self.port_mid(self.mid2(_attend(self.mid_attn, self.mid1(h, emb), context), emb))
        return skips, h, emb, context

    def _eps(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        skips, h, emb, context = self._encode(x, t, cond)
        for level, unpool in zip(self.up, self.unpool):
            for block, attn, port in zip(level.blocks, level.attn, level.ports):
                skip = self.skip_ports[len(skips) - 1](skips.pop())
                h = port(_attend(attn, block(torch.cat([h, skip], dim=1), emb), context))
            h = unpool(h)
        return self.out(h)

    def _conditioning(self, x: Tensor, t: Tensor, cond: Any) -> tuple[Tensor, Tensor | None]:
        """The time(+class) embedding (B, emb_dim) and the checked context (B, L, D) or None."""
        if isinstance(cond, Mapping):
            label, context = cond.get("label"), cond.get("context")
        elif self.context_dim is not None and self.class_embed is None:
            label, context = None, cond                      # a text-only model: a plain tensor is the context
        else:
            label, context = cond, None
        emb = self.time_embed(check_timesteps(t, x.shape[0], self.num_timesteps))
        class_emb = conditioning(self.class_embed, label, x.shape[0])
        if class_emb is not None:
            emb = emb + class_emb
        return emb, self._check_context(context, x)

    def _check_context(self, context: Any, x: Tensor) -> Tensor | None:
        if self.context_dim is None:
            if context is not None:
                raise ValueError("this U-Net has no cross-attention (context_dim=None) but cond['context'] was given; "
                                 "build it with context_dim=D to condition on tokens")
            return None
        want = f"(B, L, D)=({x.shape[0]}, L, {self.context_dim})"
        if context is None:
            raise ValueError(f"this U-Net cross-attends to tokens (context_dim={self.context_dim}): pass "
                             f"cond={{'context': {want}}} (plus 'label' if class-conditional); for the unconditional "
                             "branch pass the empty prompt's embedding")
        if not isinstance(context, Tensor) or not context.is_floating_point():
            got = context.dtype if isinstance(context, Tensor) else type(context).__name__
            raise TypeError(f"cond['context'] must be a float tensor {want}, got {got}")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or not context.shape[1] or context.shape[2] != self.context_dim:
            raise ValueError(f"cond['context'] must have shape {want} with L >= 1 tokens, got {tuple(context.shape)}")
        return context.to(dtype=x.dtype)

    def _check_input(self, x: Tensor) -> None:
        want = (self.in_channels, *self.spatial_size)
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor (B, {', '.join(map(str, want))}), got {type(x).__name__}")
        if x.ndim != 2 + self.dims or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")


def _attend(attn: nn.Module, h: Tensor, context: Tensor | None) -> Tensor:
    """Apply a level's attention block (an Identity where the level has none)."""
    return h if isinstance(attn, nn.Identity) else attn(h, context)

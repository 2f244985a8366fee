r"""Side networks B_φ(t, c_add): from the extra condition to one residual per steered port (chapter 7).

Power steering (Huang et al. 2024) learns the likelihood correction of

.. math:: \bar\varepsilon(z_t, t, c, c_{add}) = \varepsilon^*(z_t, t, c) - \sqrt{1-\bar\alpha_t}\,
          \nabla_{z_t}\log p(c_{add}\mid z_t, c)

not as an output but as residuals v_add^i added to the frozen denoiser's features (ĥ = h + ω_i v_add^i).
B_φ sees only t and c_add — never z_t, never the text (BPS.md) — and every output head is zero-initialised,
so the steered model starts *exactly* at the base model.

* :class:`ConvSideNet` for image-like ports (U-Net feature maps): c_add (B, C, f·H, f·W) is pixel-unshuffled by
  f to the latent grid (SD: 512² → 64², f = 8), then a small conv trunk produces one feature map per port
  scale (1, 2, 4, … of the U-Net) and a zero 3×3 conv per port maps it to that port's channels. The official
  code mirrors SD's encoder and adds a light decoder; here one trunk feeds encoder and decoder ports of the
  same scale alike (a simplification, stated).
* :class:`MLPSideNet` for vector ports (the U-shaped 2-D MLP): c_add is a class label (B,) or a vector
  (B, d); a time embedding and a c_add embedding feed an MLP and a zero linear head per port.

``constant_t``: feed this step index instead of t (the seed's time-step ablation: does B_φ need t?).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from ..checkpoint import record_config
from ..checks import check_int, check_labels, check_tensor
from ..nets.attention import group_norm
from ..nets.embeddings import TimeEmbedding
from ..nets.unet import ResBlock

__all__ = ["ConvSideNet", "MLPSideNet", "pixel_unshuffle"]


def pixel_unshuffle(x: Tensor, f: int) -> Tensor:
    """Space-to-depth: (B, C, f·H, f·W) -> (B, C·f², H, W), each f×f patch stacked into channels."""
    return rearrange(x, "b c (h p) (w q) -> b (c p q) h w", p=f, q=f)


def _shapes(port_shapes: Mapping[str, Sequence[int]], spatial: bool) -> dict[str, tuple[int, ...]]:
    if not isinstance(port_shapes, Mapping) or not port_shapes:
        raise ValueError("port_shapes must be a non-empty mapping {port: (channels, *spatial)}, e.g. "
                         "minidiff.bps.port_shapes(unet, ports)")
    out = {}
    for name, shape in port_shapes.items():
        shape = tuple(int(s) for s in shape)
        if (len(shape) == 3) != spatial or any(s < 1 for s in shape) or (not spatial and len(shape) != 1):
            want = "(channels, H, W)" if spatial else "(channels,)"
            raise ValueError(f"port {name!r} has shape {shape}; this side network needs {want} for every port")
        out[name] = shape
    return out


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias: the steered model starts at the base (ControlNet's "zero convolution")."""
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class _TimeInput(nn.Module):
    """The side network's time embedding, or the embedding of one fixed step (``constant_t``)."""

    def __init__(self, dim: int, num_timesteps: int, constant_t: int | None) -> None:
        super().__init__()
        self.embed, self.num_timesteps = TimeEmbedding(dim), check_int(num_timesteps, "num_timesteps", 1)
        self.constant_t = None if constant_t is None else check_int(constant_t, "constant_t", 0, self.num_timesteps - 1)

    def forward(self, t: Tensor) -> Tensor:
        if self.constant_t is not None:
            t = torch.full_like(t, self.constant_t)
        return self.embed(t)


@record_config
class ConvSideNet(nn.Module):
    """B_φ(t, c_add) -> {port: (B, channels, h, w)} for U-Net ports. c_add: (B, in_channels, f·H, f·W).

    Args:
        port_shapes: {port: (channels, h, w)} of the steered ports (:func:`minidiff.bps.port_shapes`).
        grid: (H, W) of the base's input, the grid c_add is unshuffled to (default: the largest port size;
            pass the U-Net's ``spatial_size`` when only coarse ports are steered).
        in_channels: C of c_add (e.g. 1 for an edge map, K for a one-hot layout). unshuffle: f.
        width: channels at the finest scale (×2 per coarser scale, at most ×4). num_timesteps: T of the base.
        constant_t: fixed step for the time-input ablation (None: use t). groups: GroupNorm groups.
    """

    def __init__(self, port_shapes: Mapping[str, Sequence[int]], in_channels: int, unshuffle: int = 1,
                 width: int = 32, num_timesteps: int = 1000, constant_t: int | None = None, groups: int = 8,
                 grid: Sequence[int] | None = None) -> None:
        super().__init__()
        shapes = _shapes(port_shapes, spatial=True)
        self.port_shapes, self.in_channels = shapes, check_int(in_channels, "in_channels", 1)
        self.unshuffle, width = check_int(unshuffle, "unshuffle", 1), check_int(width, "width", 1)
        if grid is None:
            grid = max(s[1] for s in shapes.values()), max(s[2] for s in shapes.values())
        if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) != 2:
            raise ValueError(f"grid must be (H, W) of the base's input, got {grid!r}")
        self.grid = (check_int(grid[0], "grid[0]", 1), check_int(grid[1], "grid[1]", 1))
        self.scales = self._scales(shapes)
        widths = [width * min(2 ** i, 4) for i in range(len(self.scales))]
        self.time = _TimeInput(4 * width, num_timesteps, constant_t)
        self.conv_in = nn.Conv2d(self.in_channels * self.unshuffle ** 2, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(widths[max(i - 1, 0)], w, 4 * width, groups) for i, w in enumerate(widths))
        self.down = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        level = {s: i for i, s in enumerate(self.scales)}
        self.heads = nn.ModuleDict({self._key(p): nn.Sequential(group_norm(widths[level[self._scale(s)]], groups),
                                                                 nn.SiLU(), _zero(nn.Conv2d(widths[level[self._scale(s)]], s[0], 3, padding=1)))
                                    for p, s in shapes.items()})

    def _scale(self, shape: tuple[int, ...]) -> int:
        return self.grid[0] // shape[1]

    def _scales(self, shapes: dict[str, tuple[int, ...]]) -> list[int]:
        scales = set()
        for name, (_, h, w) in shapes.items():
            s = self.grid[0] // h
            if s * h != self.grid[0] or s * w != self.grid[1] or s & (s - 1):
                raise ValueError(f"port {name!r} of size {h}x{w} is not the {self.grid} grid downsampled by a power of 2")
            scales.add(s)
        return [2 ** i for i in range(max(scales).bit_length())]

    @staticmethod
    def _key(port: str) -> str:
        return port.replace(".", "_")                # ModuleDict keys cannot contain dots

    def forward(self, t: Tensor, c_add: Tensor) -> dict[str, Tensor]:
        check_tensor(c_add, "c_add", floating=True)
        want = (self.in_channels, self.grid[0] * self.unshuffle, self.grid[1] * self.unshuffle)
        if c_add.ndim != 4 or tuple(c_add.shape[1:]) != want:
            raise ValueError(f"c_add must have shape (B, {', '.join(map(str, want))}) (in_channels, unshuffle x the "
                             f"steered grid {self.grid}), got {tuple(c_add.shape)}")
        emb = self.time(t)
        h = self.conv_in(pixel_unshuffle(c_add, self.unshuffle) if self.unshuffle > 1 else c_add)
        features = {}
        for i, block in enumerate(self.blocks):
            h = block(h if i == 0 else self.down[i - 1](h), emb)
            features[self.scales[i]] = h
        return {p: self.heads[self._key(p)](features[self._scale(s)]) for p, s in self.port_shapes.items()}


@record_config
class MLPSideNet(nn.Module):
    """B_φ(t, c_add) -> {port: (B, channels)} for an MLP's ports. c_add: labels (B,) in [0, num_classes) or
    vectors (B, in_features) — exactly one of ``num_classes`` / ``in_features`` is set."""

    def __init__(self, port_shapes: Mapping[str, Sequence[int]], num_classes: int | None = None,
                 in_features: int | None = None, width: int = 64, num_timesteps: int = 1000,
                 constant_t: int | None = None) -> None:
        super().__init__()
        if (num_classes is None) == (in_features is None):
            raise ValueError("give exactly one of num_classes (c_add = labels (B,)) or in_features (c_add = (B, d))")
        self.port_shapes = _shapes(port_shapes, spatial=False)
        width = check_int(width, "width", 1)
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", 1)
        self.in_features = None if in_features is None else check_int(in_features, "in_features", 1)
        self.c_embed = (nn.Embedding(self.num_classes, width) if self.num_classes is not None
                        else nn.Linear(self.in_features, width))
        self.time = _TimeInput(width, num_timesteps, constant_t)
        self.trunk = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.heads = nn.ModuleDict({p.replace(".", "_"): _zero(nn.Linear(width, s[0])) for p, s in self.port_shapes.items()})

    def _embed(self, c_add: Any) -> Tensor:
        if self.num_classes is not None:
            return self.c_embed(check_labels(c_add, "c_add (labels)", len(c_add), self.num_classes,
                                             device=self.c_embed.weight.device))
        check_tensor(c_add, "c_add", floating=True)
        if c_add.ndim != 2 or c_add.shape[1] != self.in_features:
            raise ValueError(f"c_add must have shape (B, {self.in_features}), got {tuple(c_add.shape)}")
        return self.c_embed(c_add)

    def forward(self, t: Tensor, c_add: Any) -> dict[str, Tensor]:
        h = self.trunk(self._embed(c_add) + self.time(t))
        return {p: self.heads[p.replace(".", "_")](h) for p in self.port_shapes}

r"""MLP eps-models for low-dimensional data: the 2-D toys' denoiser (chapters 1–4, 8) and a
U-shaped variant with ports for side networks (chapter 7).

x_t: (B, D) and t: (B,) -> ε̂: (B, D). Residual blocks, each told the time (and class) through an
added embedding — the same conditioning scheme as the U-Net, at a size that trains in seconds:

    h ← h + W₂ σ(W₁ σ(LN(h + P_k e(t, y))))        (block k; e = time embedding + class embedding)

**The time path runs on distinct steps.** e(t, y) and its per-block projections P_k e are
functions of t and y alone, and a batch holds at most T distinct steps (a sampler's batch holds
one), so they are computed once per distinct t (and per distinct label) and gathered back to the
rows — when the batch holds repeats (see :func:`_per_distinct`). All blocks' projections are one matrix product with their weights stacked, and
P_k(e_t + e_y) + b_k = (P_k e_t + b_k) + P_k e_y splits the time and class parts. The network
computes the same function as the row-by-row formula, up to float rounding, with the same
parameters (names, shapes, initialisation).

**Ports** (see :mod:`minidiff.nets.ports`) are :class:`~minidiff.nets.ports.Port` modules, so
``add_residuals`` / ``capture`` hook them as they hook the U-Net. A port with no hook attached is
skipped outright (the call of an identity module costs a few µs, a fair share of a 2-D step);
module-global hooks (``nn.modules.module.register_module_forward_hook``) therefore do not see ports.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import record_config
from .embeddings import ClassEmbedding, TimeEmbedding, check_int, check_timesteps, class_labels
from .ports import Port

__all__ = ["MLPDenoiser", "UMLPDenoiser"]


class _Block(nn.Module):
    """Residual block h -> h + net(h + P emb): h: (B, width), emb: (B, emb_dim)."""

    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.emb = nn.Linear(emb_dim, width)
        self.net = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.body(h, self.emb(emb))

    def body(self, h: Tensor, projected: Tensor) -> Tensor:
        """The block given its projected embedding P emb: (B, width) (see :func:`block_embeddings`)."""
        return h + self.net(h + projected)


def _through(port: Port, h: Tensor) -> Tensor:
    """h after ``port``; a port without hooks is an identity, so it is not even called."""
    return port(h) if (port._forward_hooks or port._forward_pre_hooks) else h


def _per_distinct(fn, keys: Tensor, distinct_max: int) -> Tensor:
    """fn(keys) row by row: keys (B,) -> (B, ...), computed once per distinct key where that pays.

    One key for all rows (a sampler's batch): computed once, broadcast without a copy. More rows
    than possible keys (B > ``distinct_max``, e.g. the ELBO's or a large training batch): computed on
    ``keys.unique()`` and gathered. Otherwise most keys are distinct (256 random steps of 1000 hold
    ~226) and the sort, gather and scatter of ``unique`` would cost more than they save.
    """
    if keys.numel() == 0:
        return fn(keys)
    lo, hi = keys.aminmax()
    if lo == hi:
        out = fn(keys[:1])
        return out.expand(keys.shape[0], *out.shape[1:])
    if keys.shape[0] <= distinct_max or keys.is_floating_point():
        return fn(keys)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    return fn(uniq).index_select(0, inverse)


def block_embeddings(time_embed: TimeEmbedding, class_embed: ClassEmbedding | None, blocks: list[_Block],
                     t: Tensor, cond: Any, batch: int, num_timesteps: int) -> tuple[Tensor, ...]:
    """P_k (e(t) + e(y)) + b_k for every block k: one (B, width_k) tensor per block.

    t: (B,) validated steps in [0, num_timesteps); cond: None, labels (B,) or a mapping with a ``"label"``
    entry. All blocks in one matrix product, on distinct t and labels where that pays (see :func:`_per_distinct`).
    """
    weight = torch.cat([b.emb.weight for b in blocks])         # (Σ width_k, emb_dim)
    bias = torch.cat([b.emb.bias for b in blocks])
    proj = _per_distinct(lambda u: F.linear(time_embed(u), weight, bias), t, num_timesteps)
    labels = class_labels(class_embed, cond)
    if labels is not None:
        labels = class_embed.check(labels, batch)
        table = class_embed.embed.weight                           # (K + 1, emb_dim): project the table
        if table.shape[0] < batch:                                 # once, then look rows up
            proj = proj + F.linear(table, weight).index_select(0, labels)
        else:
            proj = proj + F.linear(class_embed.embed(labels), weight)
    return proj.split([b.emb.out_features for b in blocks], dim=1)


class _PortedNet(nn.Module):
    """What the two MLP nets share: argument checks, the time path, ports by name."""

    def _setup(self, dim: int, width: int, num_timesteps: int, emb_dim: int, num_classes: int | None) -> None:
        self.dim, self.width = check_int("dim", dim), check_int("width", width)
        self.num_timesteps = check_int("num_timesteps", num_timesteps)
        emb_dim = check_int("emb_dim", emb_dim, minimum=2, even=True)
        if num_classes is not None:
            check_int("num_classes", num_classes)
        self.num_classes = num_classes
        self.time_embed = TimeEmbedding(emb_dim)
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.inp = nn.Linear(self.dim, self.width)
        self.ports: dict[str, tuple[int, int]] = {}

    def _port(self, name: str) -> Port:
        self.ports[name] = (self.width, 1)
        return Port(name, self.width)

    @property
    def null_cond(self) -> int | None:
        """The null condition (the class embedding's null label) of a class-conditional net, else None."""
        return None if self.class_embed is None else self.class_embed.null_label

    def port_shape(self, name: str) -> tuple[int]:
        """(width,): the feature shape at port ``name`` (a residual there is (B, width))."""
        if name not in self.ports:
            raise KeyError(f"unknown port {name!r}; available: {list(self.ports)}")
        return (self.ports[name][0],)

    def _embeddings(self, x: Tensor, t: Tensor, cond: Any, blocks: list[_Block]) -> tuple[Tensor, ...]:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(getattr(x, 'shape', ()))}")
        t = check_timesteps(t, x.shape[0], self.num_timesteps).to(x.device)
        return block_embeddings(self.time_embed, self.class_embed, blocks, t, cond, x.shape[0], self.num_timesteps)


@record_config
class MLPDenoiser(_PortedNet):
    """Residual MLP eps-model: x: (B, dim), t: (B,) -> ε̂: (B, dim).

    Args:
        dim: data dimension D.
        width: hidden width; depth: number of residual blocks.
        num_timesteps: the T of the schedule it is trained with (checked against samplers).
        emb_dim: size of the time (and class) embedding; even (half sines, half cosines).
        num_classes: set for a class-conditional model (chapter 4); ``cond`` then holds labels (B,)
            or a mapping with a ``"label"`` entry; label ``num_classes`` is the null token.

    Ports: ``"in"`` (after the input layer) and ``"block.{i}"`` (after residual block i), each (width,).
    """

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, num_timesteps: int = 1000,
                 emb_dim: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        self._setup(dim, width, num_timesteps, emb_dim, num_classes)
        depth = check_int("depth", depth)
        self.blocks = nn.ModuleList(_Block(self.width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(self.width), nn.SiLU(), nn.Linear(self.width, self.dim))
        self.port_in = self._port("in")
        self.port_blocks = nn.ModuleList(self._port(f"block.{i}") for i in range(depth))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        embs = self._embeddings(x, t, cond, list(self.blocks))
        h = _through(self.port_in, self.inp(x))
        for block, port, e in zip(self.blocks, self.port_blocks, embs):
            h = _through(port, block.body(h, e))
        return self.out(h)


class _UpBlock(nn.Module):
    """Decoder block: fuse the stream and its skip, then a residual block. h, skip: (B, width)."""

    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.fuse = nn.Linear(2 * width, width)
        self.block = _Block(width, emb_dim)

    def body(self, h: Tensor, skip: Tensor, projected: Tensor) -> Tensor:
        return self.block.body(self.fuse(torch.cat([h, skip], dim=1)), projected)


@record_config
class UMLPDenoiser(_PortedNet):
    """A U-shaped MLP eps-model for 2-D data with encoder→decoder skips (chapter 7's 2-D experiments).

    x: (B, dim), t: (B,) -> ε̂: (B, dim). Encoder blocks down.0 … down.{depth−1}, a middle block, and
    decoder blocks up.{depth−1} … up.0; up.i reads the output of down.i through the skip port skip.i
    (the decoder's copy, separate from the main stream) — the U-Net's layout with vectors for maps.

    Ports, each (width,): ``"in"``, ``"down.{i}"``, ``"skip.{i}"``, ``"mid"``, ``"up.{i}"``, in forward
    order. A residual at ``skip.i`` reaches the output only through decoder block up.i.
    Args as :class:`MLPDenoiser`; ``depth`` is the number of encoder (= decoder) blocks.
    """

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 2, num_timesteps: int = 1000,
                 emb_dim: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        self._setup(dim, width, num_timesteps, emb_dim, num_classes)
        depth = check_int("depth", depth)
        self.down = nn.ModuleList(_Block(self.width, emb_dim) for _ in range(depth))
        self.mid = _Block(self.width, emb_dim)
        self.up = nn.ModuleList(_UpBlock(self.width, emb_dim) for _ in range(depth))  # up[i] mirrors down[i]
        self.out = nn.Sequential(nn.LayerNorm(self.width), nn.SiLU(), nn.Linear(self.width, self.dim))
        names = ["in", *(f"{kind}.{i}" for i in range(depth) for kind in ("down", "skip")), "mid",
                 *(f"up.{i}" for i in reversed(range(depth)))]                     # forward order
        self.port_list = nn.ModuleList(self._port(name) for name in names)
        self._port_modules = {p.port_name: p for p in self.port_list}

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        blocks = [*self.down, self.mid, *(u.block for u in self.up)]
        embs = self._embeddings(x, t, cond, blocks)
        depth = len(self.down)
        port = self._port_modules
        h, skips = _through(port["in"], self.inp(x)), []
        for i, block in enumerate(self.down):
            h = _through(port[f"down.{i}"], block.body(h, embs[i]))
            skips.append(_through(port[f"skip.{i}"], h))
        h = _through(port["mid"], self.mid.body(h, embs[depth]))
        for i in reversed(range(depth)):
            h = _through(port[f"up.{i}"], self.up[i].body(h, skips[i], embs[depth + 1 + i]))
        return self.out(h)

r"""A frozen denoiser steered by a side network: the eps-model of power steering and its baselines.

:class:`Steered` is the one mechanism: on each call it asks a side network for residuals
``{port: v}``, scales them by fixed weights ω, adds them to the frozen base's ports through forward hooks
(:func:`minidiff.nets.ports.add_residuals`) and returns the base's ε̂ — so it is an eps-model like any
other, and chapters 2–4's samplers and classifier-free guidance apply unchanged. The extra condition
travels in ``cond["c_add"]``; CFG nulls only ``"label"``/``"context"`` (:data:`minidiff.cond.NULL_KEYS`), so
c_add steers the conditional and the unconditional branch alike, as in the BPS and ControlNet code.

:class:`PowerSteering` (Huang et al. 2024) is :class:`Steered` with a side network B_φ(t, c_add) that never
sees z_t, an integration mode (:data:`minidiff.bps.MODES`) and a weight scheme. The ControlNet- and
T2I-Adapter-style baselines (:mod:`minidiff.bps.baselines`) are other side networks on the same mechanism.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..nets.ports import add_residuals
from .modes import mode_ports, port_shapes, port_weights
from .side import ConvSideNet, MLPSideNet

__all__ = ["PowerSteering", "Steered", "split_c_add"]


def split_c_add(cond: Any) -> tuple[Any, Any]:
    """(the base's condition, c_add) from ``cond`` = {"c_add": …, other entries}: the rest is passed to the base
    (None when nothing is left)."""
    if not isinstance(cond, Mapping) or "c_add" not in cond:
        raise ValueError("a steered model needs cond = {'c_add': extra condition, ...} (plus 'label' / 'context' "
                         f"for the base), got {type(cond).__name__ if not isinstance(cond, Mapping) else sorted(cond)}")
    rest = {k: v for k, v in cond.items() if k != "c_add"}
    return (rest or None), cond["c_add"]


class Steered(nn.Module):
    """ε̂(x_t, t, cond) of ``base`` with ω_p · side(...)[p] added at each port p. x_t: the base's input (B, ...).

    side: a module called as ``side(t, c_add)`` (``reads_x_t = False``, power steering, T2I-Adapter) or
    ``side(x_t, t, base_cond, c_add)`` (``reads_x_t = True``, ControlNet) returning ``{port: (B, *port_shape)}``.
    weights: {port: ω}. The base is frozen here (``requires_grad_(False)``, eval mode) unless
    ``train_base=True`` (the fine-tuning baseline).
    """

    def __init__(self, base: nn.Module, side: nn.Module, weights: Mapping[str, float], *, reads_x_t: bool = False,
                 train_base: bool = False) -> None:
        super().__init__()
        if not isinstance(base, nn.Module) or not isinstance(side, nn.Module):
            raise TypeError(f"base and side must be nn.Modules, got {type(base).__name__} and {type(side).__name__}")
        if not weights:
            raise ValueError("weights must name at least one port to steer")
        self.base, self.side, self.weights = base, side, dict(weights)
        self.reads_x_t, self.train_base = bool(reads_x_t), bool(train_base)
        if not self.train_base:
            base.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> Steered:
        super().train(mode)
        if not self.train_base:
            self.base.eval()                            # a frozen base stays in eval mode (dropout off)
        return self

    @property
    def num_timesteps(self) -> int:
        return self.base.num_timesteps

    @property
    def null_cond(self) -> Any:
        return getattr(self.base, "null_cond", None)

    def residuals(self, x_t: Tensor, t: Tensor, cond: Any) -> dict[str, Tensor]:
        """The weighted residuals {port: ω_p v_p} this call adds."""
        base_cond, c_add = split_c_add(cond)
        out = self.side(x_t, t, base_cond, c_add) if self.reads_x_t else self.side(t, c_add)
        missing = set(self.weights) - set(out)
        if missing:
            raise ValueError(f"the side network returned no residual for the steered ports {sorted(missing)}")
        return {p: w * out[p] for p, w in self.weights.items() if w != 0}

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        base_cond, _ = split_c_add(cond)
        with add_residuals(self.base, self.residuals(x_t, t, cond)):
            return self.base(x_t, t) if base_cond is None else self.base(x_t, t, base_cond)


class PowerSteering(Steered):
    """Bayesian power steering: a frozen ``base`` (minidiff UNet or UMLPDenoiser) plus a side network B_φ(t, c_add).

    Args:
        base: the frozen denoiser. mode: an integration mode of :data:`minidiff.bps.MODES` ("ALL", "EMD", …).
        weights: "uniform", "head-heavy" or {port: ω}. scale: global ω multiplier (set later with
            :meth:`set_scale` to trade fidelity for diversity at sampling time).
        side: a ready side network; default a :class:`ConvSideNet` (``c_add_channels``, ``unshuffle``) for a U-Net
            or an :class:`MLPSideNet` (``num_classes`` or ``in_features``) for an MLP; ``side_kwargs`` go to it
            (``width``, ``constant_t`` …).
    """

    def __init__(self, base: nn.Module, mode: str = "ALL", weights: str | Mapping[str, float] = "uniform",
                 scale: float = 1.0, side: nn.Module | None = None, **side_kwargs: Any) -> None:
        ports = mode_ports(base, mode)
        if side is None:
            side = self.default_side(base, ports, **side_kwargs)
        elif side_kwargs:
            raise TypeError(f"side_kwargs {sorted(side_kwargs)} are for the default side network; pass them to yours")
        self.mode, self.scheme = mode, weights
        super().__init__(base, side, port_weights(base, ports, weights, scale))

    @staticmethod
    def default_side(base: nn.Module, ports: list[str], **kwargs: Any) -> nn.Module:
        shapes = port_shapes(base, ports)
        kwargs.setdefault("num_timesteps", base.num_timesteps)
        if all(len(s) == 3 for s in shapes.values()):
            if "c_add_channels" not in kwargs:
                raise TypeError("a U-Net side network needs c_add_channels= (channels of c_add), optionally unshuffle=")
            kwargs.setdefault("grid", tuple(base.spatial_size))
            return ConvSideNet(shapes, kwargs.pop("c_add_channels"), **kwargs)
        return MLPSideNet(shapes, **kwargs)

    def set_scale(self, scale: float) -> PowerSteering:
        """Re-weight the residuals with a new global scale (same scheme); returns self."""
        self.weights = port_weights(self.base, list(self.weights), self.scheme, scale)
        return self

    @torch.no_grad()
    def frozen_base_is_unchanged(self, reference: Mapping[str, Tensor]) -> bool:
        """True if the base's weights equal ``reference`` (a ``state_dict`` copy taken before training)."""
        return all(torch.equal(v, reference[k]) for k, v in self.base.state_dict().items())

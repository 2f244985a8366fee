r"""Where power steering adds its residuals: port groups, integration modes and the weights ω (chapter 7).

A frozen denoiser's ports (:mod:`minidiff.nets.ports`) fall into four groups (Huang et al. 2024, the
integration-mode ablation; ``shared/papers/BPS.md``):

* ``E``   — encoder block outputs (``down.i.j`` of the U-Net, ``down.i`` of the U-shaped MLP; not the
  downsampling convs ``down.i.pool``);
* ``M``   — the middle block (``mid``);
* ``D``   — decoder block outputs (``up.…``);
* ``E-D`` — the encoder → decoder skip connections as the decoder reads them (``skip.k``).

An **integration mode** is a set of groups — data, not a code path: :data:`MODES` maps the seed's nine
names (ALL, EMD, E, EM, D, MD, E-D, ME-D, M) to their groups, and :func:`mode_ports` turns a mode into the
port names of a given model. The weights ω_i of ĥ = h + ω_i v_add^i are fixed, not learned:
``"uniform"`` (all 1; the seed's layout task) or ``"head-heavy"`` (the official code's "head-heavy,
foot-light": encoder 16, 8, 4, 2 from the highest resolution down, middle 16, decoder 1; skips follow the
encoder rule of their level), times a global ``scale`` that trades fidelity for diversity.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import nn

from ..checks import check_real
from ..nets.ports import find_ports

__all__ = ["GROUPS", "MODES", "WEIGHT_SCHEMES", "mode_ports", "port_groups", "port_shapes", "port_weights"]

GROUPS = ("E", "M", "D", "E-D")
MODES: dict[str, tuple[str, ...]] = {
    "ALL": ("E", "M", "D", "E-D"), "EMD": ("E", "M", "D"), "E": ("E",), "EM": ("E", "M"), "D": ("D",),
    "MD": ("M", "D"), "E-D": ("E-D",), "ME-D": ("M", "E-D"), "M": ("M",),
}
WEIGHT_SCHEMES = ("uniform", "head-heavy")


def _group_of(name: str) -> str | None:
    """The group of a minidiff port name, or None for ports outside every group ("in", "down.i.pool")."""
    if name == "mid":
        return "M"
    if name.startswith("skip."):
        return "E-D"
    if name.startswith("up."):
        return "D"
    if name.startswith("down.") and not name.endswith(".pool"):
        return "E"
    return None


def port_groups(model: nn.Module) -> dict[str, list[str]]:
    """``{group: [port names in forward order]}`` of a minidiff net with ports (UNet, UMLPDenoiser)."""
    ports = find_ports(model)
    if not ports:
        raise ValueError(f"{type(model).__name__} has no ports: power steering needs a net with named ports "
                         "(minidiff.UNet or minidiff.nets.mlp.UMLPDenoiser)")
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name in ports:
        group = _group_of(name)
        if group is not None:
            groups[group].append(name)
    return groups


def _check_mode(mode: str) -> tuple[str, ...]:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"unknown integration mode {mode!r}; the modes are {list(MODES)} "
                         "(E = encoder, M = middle, D = decoder, E-D = encoder-to-decoder skips)")
    return MODES[mode]


def mode_ports(model: nn.Module, mode: str = "ALL") -> list[str]:
    """The port names a mode adds residuals to, in the model's forward order."""
    groups = set(_check_mode(mode))
    by_group = port_groups(model)
    order = list(find_ports(model))
    chosen = {p for g in groups for p in by_group[g]}
    return [p for p in order if p in chosen]


def port_shapes(model: nn.Module, ports: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Per port the feature shape without the batch: (channels, *spatial) via ``model.port_shape`` for a
    U-Net, (channels,) for an MLP's ports."""
    found = find_ports(model)
    unknown = [p for p in ports if p not in found]
    if unknown:
        raise KeyError(f"unknown ports {unknown}; this model has {list(found)}")
    if hasattr(model, "port_shape"):
        return {p: tuple(model.port_shape(p)) for p in ports}
    return {p: (found[p].channels,) for p in ports}


def _level(model: nn.Module, name: str) -> int:
    """Depth of a port: log2 of its downsampling scale for a U-Net; the block index for an MLP's ports."""
    port = find_ports(model)[name]
    if port.scale > 1 or hasattr(model, "port_shape"):
        return round(math.log2(port.scale))
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def port_weights(model: nn.Module, ports: Sequence[str], scheme: str | Mapping[str, float] = "uniform",
                 scale: float = 1.0) -> dict[str, float]:
    """ω_i for each port: a scheme of :data:`WEIGHT_SCHEMES` or an explicit ``{port: ω}`` mapping, times
    ``scale`` (≥ 0; 0 switches steering off, smaller values give more diverse samples)."""
    scale = check_real(scale, "scale", 0.0, hint=" (the global steering strength; 1 = as trained)")
    if isinstance(scheme, Mapping):
        missing, extra = set(ports) - set(scheme), set(scheme) - set(ports)
        if missing or extra:
            raise ValueError(f"explicit weights must name exactly the steered ports {list(ports)}; missing "
                             f"{sorted(missing)}, unexpected {sorted(extra)}")
        return {p: scale * check_real(scheme[p], f"weight of {p!r}") for p in ports}
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"unknown weight scheme {scheme!r}; use one of {WEIGHT_SCHEMES} or a {{port: weight}} mapping")
    if scheme == "uniform":
        return {p: scale for p in ports}
    weights = {}
    for p in ports:                                  # head-heavy, foot-light (BPS official code)
        group = _group_of(p)
        weights[p] = scale * (16.0 if group == "M" else 1.0 if group == "D" else 16.0 / 2 ** _level(model, p))
    return weights

r"""Bayesian power steering on Stable Diffusion's U-Net through forward hooks (chapters 7 and 10).

Chapter 7 steers minidiff's U-Net, whose ports are :class:`~minidiff.nets.ports.Port` modules. diffusers'
``UNet2DConditionModel`` has none and cannot be edited, so this module *names* its ports and attaches to the
modules that compute them (``shared/papers/BPS.md``: "BPS on a diffusers U-Net needs forward hooks on
``down_blocks[i].resnets/attentions``, ``mid_block``, ``up_blocks[i].resnets/attentions``"):

* ``down.i.j`` (group E): the output of layer j of down block i — its attention block if it has one, else its
  ResBlock; ``mid`` (M): the middle block's output; ``up.i.j`` (D): layer j of up block i, likewise;
* ``skip.k`` (E-D): the k-th encoder -> decoder skip tensor (conv_in's output, every down layer, every
  downsampler), changed only where the decoder reads it, through the U-Net's own ``down_block_additional_residuals``
  argument (ControlNet's door, set by a forward pre-hook).

For SD 1.5 this gives BPS's 21 ports (8 encoder layers + middle + 12 decoder layers) plus 12 skips. A residual
is added once per layer, after the layer's last module (BPS adds the same v after the ResBlock *and* after the
attention of a layer; one addition per layer is the simplification we state). :class:`SDPorts` presents these
ports the way chapter 7's code expects them, so the integration modes, the ω schemes ("head-heavy, foot-light":
16, 8, 4, 2 from the finest encoder level down, 16 in the middle, 1 in the decoder) and the side network
:class:`~minidiff.bps.ConvSideNet` — c_add pixel-unshuffled by the VAE factor to the latent grid, 512² -> 64² for
SD — are reused unchanged, and :class:`SDPowerSteering` is chapter 7's :class:`~minidiff.bps.Steered` with these
hooks. Zero-initialised heads make the steered model equal the base exactly at the start.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..bps import (
    ConvSideNet,
    Steered,
    mode_ports,
    port_shapes,
    port_weights,
    split_c_add,
)
from ..checks import check_int
from ..nets.ports import Port, PortHooks, add_residuals
from .unet import SDEps

__all__ = ["SDPorts", "SDPowerSteering", "add_sd_residuals"]


def _layer_targets(unet: nn.Module) -> dict[str, str]:
    """{port: module path} for the encoder, middle and decoder ports, in forward order."""
    targets: dict[str, str] = {}

    def layers(kind: str, blocks: nn.ModuleList) -> None:
        for i, block in enumerate(blocks):
            n_attn = len(getattr(block, "attentions", None) or [])
            for j in range(len(block.resnets)):         # a layer ends with its attention block when it has one
                targets[f"{kind}.{i}.{j}"] = f"{kind}_blocks.{i}.{'attentions' if j < n_attn else 'resnets'}.{j}"

    layers("down", unet.down_blocks)
    if unet.mid_block is not None:
        targets["mid"] = "mid_block"
    layers("up", unet.up_blocks)
    return targets


def _first_tensor(output: Any) -> Tensor:
    """The feature tensor of a block's output: a tensor, ``(tensor, ...)`` or an output object's ``.sample``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def _add_to_output(port: str, residual: Tensor):
    """f(output) -> output with ``residual`` added to its feature tensor (keeps tuples / output objects)."""
    def add(output: Any) -> Any:
        feature = _first_tensor(output)
        if residual.shape[1:] != feature.shape[1:] or residual.shape[0] not in (1, feature.shape[0]):
            raise ValueError(f"the residual for port {port!r} must have shape (B, {', '.join(map(str, feature.shape[1:]))})"
                             f" = {tuple(feature.shape)}, got {tuple(residual.shape)}")
        new = feature + residual.to(feature.dtype)
        if isinstance(output, Tensor):
            return new
        if isinstance(output, tuple):
            return (new, *output[1:])
        output.sample = new
        return output
    return add


class SDPorts(nn.Module):
    """The named ports of a diffusers U-Net at one latent size, as chapter 7's code reads a minidiff net.

    ``find_ports(ports)`` lists one parameter-free :class:`~minidiff.nets.ports.Port` per port (channels and
    downsampling scale), ``port_shape(name)`` gives (channels, h, w), ``spatial_size`` the latent grid, and
    ``targets`` the U-Net module each encoder / middle / decoder port hooks. Shapes come from one dry run of the
    U-Net at ``latent_size`` (default its ``sample_size``: 64×64 for SD 1.5).
    """

    def __init__(self, unet: nn.Module, latent_size: int | Sequence[int] | None = None) -> None:
        super().__init__()
        size = unet.config.sample_size if latent_size is None else latent_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2:
            raise ValueError(f"latent_size must be an int or (h, w), got {latent_size!r}")
        self.spatial_size = (check_int(size[0], "latent_size[0]", 1), check_int(size[1], "latent_size[1]", 1))
        self.targets = _layer_targets(unet)
        self.shapes = self._dry_run(unet)
        self.ports = nn.ModuleList(Port(name, shape[0], self.spatial_size[0] // shape[1])
                                   for name, shape in self.shapes.items())

    @torch.no_grad()
    def _dry_run(self, unet: nn.Module) -> dict[str, tuple[int, int, int]]:
        """(channels, h, w) of every port from one forward pass on zeros (batch 1)."""
        p = next(unet.parameters())
        z = torch.zeros(1, unet.config.in_channels, *self.spatial_size, device=p.device, dtype=p.dtype)
        context = torch.zeros(1, 1, unet.config.cross_attention_dim, device=p.device, dtype=p.dtype)
        seen: dict[str, tuple[int, ...]] = {}
        skips: list[tuple[int, ...]] = []
        hooks = PortHooks(unet)
        with hooks:
            for name, target in self.targets.items():
                hooks.add(target, lambda m, i, out, name=name: seen.__setitem__(name, tuple(_first_tensor(out).shape[1:])))
            hooks.add("conv_in", lambda m, i, out: skips.append(tuple(out.shape[1:])))
            for k in range(len(unet.down_blocks)):
                hooks.add(f"down_blocks.{k}", lambda m, i, out: skips.extend(tuple(s.shape[1:]) for s in out[1]))
            unet(z, torch.zeros(1, dtype=torch.long, device=p.device), encoder_hidden_states=context)
        seen.update({f"skip.{k}": s for k, s in enumerate(skips)})
        return {name: tuple(int(v) for v in shape) for name, shape in seen.items()}

    def port_shape(self, name: str) -> tuple[int, int, int]:
        if name not in self.shapes:
            raise KeyError(f"unknown port {name!r}; this U-Net has {list(self.shapes)}")
        return self.shapes[name]

    @property
    def skip_ports(self) -> list[str]:
        return [p for p in self.shapes if p.startswith("skip.")]


def add_sd_residuals(unet: nn.Module, ports: SDPorts, residuals: Mapping[str, Tensor]) -> PortHooks:
    """Add ``residuals[port]`` (B, *port_shape) at each named port of a diffusers U-Net on every forward call
    until the returned hooks are removed (a context manager). Encoder / middle / decoder ports: forward hooks on
    their modules; skip ports: a pre-hook that passes them as ``down_block_additional_residuals`` (zeros for the
    skips not steered, and a zero ``mid_block_additional_residual``, which diffusers needs alongside)."""
    unknown = set(residuals) - set(ports.shapes)
    if unknown:
        raise KeyError(f"unknown ports {sorted(unknown)}; this U-Net has {list(ports.shapes)}")
    hooks = add_residuals(unet, {ports.targets[p]: _add_to_output(p, r) for p, r in residuals.items()
                                 if not p.startswith("skip.")})
    skips = {p: r for p, r in residuals.items() if p.startswith("skip.")}
    if skips:
        hooks.handles.append(unet.register_forward_pre_hook(_skip_hook(ports, skips), with_kwargs=True))
    return hooks


def _skip_hook(ports: SDPorts, skips: Mapping[str, Tensor]):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        sample = args[0] if args else kwargs["sample"]
        batch, dtype = sample.shape[0], next(module.parameters()).dtype
        zeros = {p: sample.new_zeros(batch, *ports.shapes[p], dtype=dtype) for p in ports.skip_ports}
        down = tuple((skips[p].to(dtype) if p in skips else zeros[p]).expand(batch, *ports.shapes[p])
                     for p in ports.skip_ports)
        mid_shape = ports.shapes["mid"]
        return args, {**kwargs, "down_block_additional_residuals": down,
                      "mid_block_additional_residual": sample.new_zeros(batch, *mid_shape, dtype=dtype)}
    return hook


class SDPowerSteering(Steered):
    """Power steering (Huang et al. 2024) of a frozen Stable Diffusion U-Net: an eps-model
    ``steer(z_t, t, {"context": (B, L, D), "c_add": (B, C, f·h, f·w)})``.

    Args:
        base: the frozen :class:`~minidiff.sd.SDEps` (its U-Net is frozen here).
        mode: an integration mode of :data:`minidiff.bps.MODES`. weights: "uniform", "head-heavy" or {port: ω}.
        scale: global ω multiplier (:meth:`set_scale`). side: a ready side network ``side(t, c_add) -> {port: v}``;
            default a :class:`~minidiff.bps.ConvSideNet` built from ``c_add_channels``, ``unshuffle`` (the VAE
            factor f; :meth:`from_pipeline` sets it) and ``side_kwargs`` (``width``, ``constant_t``).
        latent_size: the latent grid the side network produces residuals for (default the U-Net's sample_size).
    """

    def __init__(self, base: SDEps, mode: str = "ALL", weights: str | Mapping[str, float] = "uniform",
                 scale: float = 1.0, side: nn.Module | None = None, *, latent_size: int | Sequence[int] | None = None,
                 **side_kwargs: Any) -> None:
        if not isinstance(base, SDEps):
            raise TypeError(f"base must be a minidiff.sd.SDEps (SDEps.from_pipeline(pipe)), got {type(base).__name__}")
        ports = SDPorts(base.unet, latent_size)
        chosen = mode_ports(ports, mode)
        if side is None:
            if "c_add_channels" not in side_kwargs:
                raise TypeError("the default side network needs c_add_channels= (channels of c_add), and unshuffle= "
                                "(the VAE factor, 8 for SD) unless c_add is already at the latent size")
            side_kwargs.setdefault("num_timesteps", base.num_timesteps)
            side = ConvSideNet(port_shapes(ports, chosen), side_kwargs.pop("c_add_channels"), grid=ports.spatial_size,
                               **side_kwargs).to(next(base.unet.parameters()).device)   # float32, beside the U-Net
        elif side_kwargs:
            raise TypeError(f"side_kwargs {sorted(side_kwargs)} are for the default side network; pass them to yours")
        super().__init__(base, side, port_weights(ports, chosen, weights, scale))
        self.ports, self.mode, self.scheme = ports, mode, weights

    @classmethod
    def from_pipeline(cls, pipe: Any, mode: str = "ALL", weights: str | Mapping[str, float] = "uniform",
                      scale: float = 1.0, *, c_add_channels: int, **side_kwargs: Any) -> SDPowerSteering:
        """Steering for ``pipe``'s U-Net with c_add at image resolution (unshuffled by ``pipe.vae_scale_factor``)."""
        side_kwargs.setdefault("unshuffle", pipe.vae_scale_factor)
        return cls(SDEps.from_pipeline(pipe), mode, weights, scale, c_add_channels=c_add_channels, **side_kwargs)

    def set_scale(self, scale: float) -> SDPowerSteering:
        """Re-weight the residuals with a new global scale (same scheme); returns self."""
        self.weights = port_weights(self.ports, list(self.weights), self.scheme, scale)
        return self

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        base_cond, c_add = split_c_add(cond)
        side_dtype = next(self.side.parameters()).dtype      # an fp32 side net beside an fp16 U-Net: cast c_add
        cond = {**cond, "c_add": c_add.to(side_dtype) if c_add.is_floating_point() else c_add}
        with add_sd_residuals(self.base.unet, self.ports, self.residuals(x_t, t, cond)):
            return self.base(x_t, t, base_cond)

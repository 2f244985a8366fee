r"""The baselines power steering is compared with, on the same frozen U-Net and the same mechanism (chapter 7).

* **ControlNet-style** (Zhang et al. 2023): a trainable copy of the base's encoder and middle reads z_t, t and
  the text *plus* the condition — a hint encoder maps c_add to the first feature map and is added after the
  copy's input conv through a zero convolution — and zero-initialised 1×1 convs carry every copied skip
  feature into the base's skip ports (``skip.k``) and the copied middle into ``mid``. At initialisation the
  steered model is the base exactly.
* **T2I-Adapter-style** (Mou et al. 2023): a light multi-scale extractor of c_add alone — no z_t, no t — whose
  features are added to the encoder's block outputs (the last ``down.i.j`` of each level).
* **Fine-tuning with the condition**: the whole base is trained; c_add enters through a zero-initialised
  conv at the input port ``in``.

Each returns a :class:`~minidiff.bps.steer.Steered` eps-model; only its side network (and, for fine-tuning,
the base) has trainable parameters.
"""
from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from ..checks import check_int, check_tensor
from ..nets.attention import group_norm
from ..nets.unet import UNet
from .side import ConvSideNet, _zero, pixel_unshuffle
from .steer import Steered

__all__ = ["ControlNetBranch", "controlnet", "finetune_with_condition", "t2i_adapter"]


def _check_unet(base: Any) -> UNet:
    if not isinstance(base, UNet):
        raise TypeError(f"this baseline is built for minidiff.UNet, got {type(base).__name__}")
    return base


class ControlNetBranch(nn.Module):
    """Trainable copy of a U-Net's encoder + middle with a hint encoder and zero 1×1 convs to the base's ports.

    (x_t, t, base_cond, c_add) -> {"skip.k": (B, c_k, h_k, w_k), "mid": (B, c, h, w)}. c_add: (B, in_channels,
    f·H, f·W), pixel-unshuffled by ``unshuffle`` = f to the base's input grid (H, W).
    """

    def __init__(self, base: UNet, in_channels: int, unshuffle: int = 1, hint_width: int = 16, groups: int = 8) -> None:
        super().__init__()
        base = _check_unet(base)
        self.copy = copy.deepcopy(base).requires_grad_(True).train()     # the trainable copy (ControlNet Sec. 3.2)
        self.in_channels, self.unshuffle = check_int(in_channels, "in_channels", 1), check_int(unshuffle, "unshuffle", 1)
        width = check_int(hint_width, "hint_width", 1)
        c_in = base.ports["in"][0]
        self.hint = nn.Sequential(nn.Conv2d(self.in_channels * self.unshuffle ** 2, width, 3, padding=1),
                                  group_norm(width, groups), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.SiLU(), _zero(nn.Conv2d(width, c_in, 3, padding=1)))
        skips = [name for name in base.ports if name.startswith("skip.")]
        self.skip_names = skips
        self.zero_skips = nn.ModuleList(_zero(nn.Conv2d(base.ports[n][0], base.ports[n][0], 1)) for n in skips)
        self.zero_mid = _zero(nn.Conv2d(base.ports["mid"][0], base.ports["mid"][0], 1))
        self.grid = tuple(base.spatial_size)

    def forward(self, x_t: Tensor, t: Tensor, base_cond: Any, c_add: Tensor) -> dict[str, Tensor]:
        check_tensor(c_add, "c_add", floating=True)
        want = (self.in_channels, *(g * self.unshuffle for g in self.grid))
        if c_add.ndim != 4 or tuple(c_add.shape[1:]) != want:
            raise ValueError(f"c_add must have shape (B, {', '.join(map(str, want))}), got {tuple(c_add.shape)}")
        hint = self.hint(pixel_unshuffle(c_add, self.unshuffle) if self.unshuffle > 1 else c_add)
        handle = self.copy.port_in.register_forward_hook(lambda module, inputs, out: out + hint)
        try:
            skips, mid = self.copy.encode(x_t, t, base_cond)
        finally:
            handle.remove()
        out = {name: conv(feature) for name, conv, feature in zip(self.skip_names, self.zero_skips, skips)}
        out["mid"] = self.zero_mid(mid)
        return out


def controlnet(base: UNet, in_channels: int, unshuffle: int = 1, scale: float = 1.0, **kwargs: Any) -> Steered:
    """The ControlNet-style baseline: ``base`` frozen, a :class:`ControlNetBranch` into its skips and middle."""
    branch = ControlNetBranch(base, in_channels, unshuffle, **kwargs)
    return Steered(base, branch, {name: float(scale) for name in [*branch.skip_names, "mid"]}, reads_x_t=True)


def t2i_adapter(base: UNet, in_channels: int, unshuffle: int = 1, width: int = 32, scale: float = 1.0) -> Steered:
    """The T2I-Adapter-style baseline: a time-free extractor of c_add added to each encoder level's last block."""
    base = _check_unet(base)
    last = {}
    for name in base.ports:                              # down.i.j: keep the largest j per level i
        if name.startswith("down.") and not name.endswith(".pool"):
            last[name.split(".")[1]] = name
    ports = list(last.values())
    side = ConvSideNet({p: base.port_shape(p) for p in ports}, in_channels, unshuffle, width=width,
                       num_timesteps=base.num_timesteps, constant_t=0,      # no time input: one fixed step
                       grid=tuple(base.spatial_size))
    return Steered(base, side, {p: float(scale) for p in ports})


def finetune_with_condition(base: UNet, in_channels: int, unshuffle: int = 1, width: int = 32) -> Steered:
    """Full fine-tuning: every base weight trains; c_add enters through a zero conv at the input port."""
    base = _check_unet(base)
    side = ConvSideNet({"in": base.port_shape("in")}, in_channels, unshuffle, width=width,
                       num_timesteps=base.num_timesteps)
    return Steered(base.requires_grad_(True), side, {"in": 1.0}, train_base=True)

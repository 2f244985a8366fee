"""Chapter 7 — Bayesian power steering (Huang, Li & Huang, ICML 2024) and its baselines.

* :mod:`~minidiff.bps.modes`: port groups (E, M, D, E-D), the nine integration modes, the weights ω;
* :mod:`~minidiff.bps.side`: side networks B_φ(t, c_add) for U-Net and MLP ports (zero-initialised heads);
* :mod:`~minidiff.bps.steer`: :class:`Steered` (any side network on a frozen base, an eps-model) and
  :class:`PowerSteering`;
* :mod:`~minidiff.bps.baselines`: ControlNet-style, T2I-Adapter-style and fine-tuning baselines.

    steer = PowerSteering(unet, mode="ALL", weights="head-heavy", c_add_channels=1, unshuffle=4)
    train(steer, diffusion_loss(schedule), (latents, {"context": ctx, "c_add": edges}), steps=...)
    x = sample(steer, schedule, shape, cond={"context": ctx, "c_add": edges})
"""
from .baselines import (
           ControlNetBranch,
           controlnet,
           finetune_with_condition,
           t2i_adapter,
)
from .modes import (
           GROUPS,
           MODES,
           WEIGHT_SCHEMES,
           mode_ports,
           port_groups,
           port_shapes,
           port_weights,
)
from .side import ConvSideNet, MLPSideNet, pixel_unshuffle
from .steer import PowerSteering, Steered, split_c_add

__all__ = ["GROUPS", "MODES", "WEIGHT_SCHEMES", "ControlNetBranch", "ConvSideNet", "MLPSideNet", "PowerSteering",
           "Steered", "controlnet", "finetune_with_condition", "mode_ports", "pixel_unshuffle", "port_groups",
           "port_shapes", "port_weights", "split_c_add", "t2i_adapter"]

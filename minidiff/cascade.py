r"""Chapter 4 — cascaded diffusion: a low-resolution model, then a super-resolution model.

Cascaded Diffusion Models (Ho, Saharia, Chan, Fleet, Norouzi & Salimans 2021/2022) generate an
image in stages: a (class-conditional) base model samples a small image; each following model
is an ordinary diffusion model at a higher resolution whose denoiser also sees the previous
stage's output, upsampled and concatenated to x_t as extra input channels (their Fig. 3–4;
SR3, Saharia et al. 2021). Its eps-model is

.. math:: \varepsilon_\theta\big(x_t,\ t,\ \mathrm{cond}=(\tilde z,\ a,\ y)\big),\qquad
   \tilde z = \sqrt{\bar\alpha_a}\,\mathrm{up}(z_\text{low}) + \sqrt{1-\bar\alpha_a}\,\xi

with **noise conditioning augmentation** (CDM Sec. 3.2): during training the upsampled low-res
image is corrupted by the forward process at a random level a and the model is told a; at
sampling the base model's output is corrupted at one fixed level. The super-resolution model
then never relies on details that the base model gets wrong, which is what makes the stages
compose (their Table 4: augmentation is the single most important ingredient).

Here the stages are 4×4 → 8×8 digits (real 8×8 digits, average-pooled for the low-res stage).
:class:`SuperResolutionUNet` wraps :class:`~minidiff.nets.UNet` (extra input channels: the
conditioning image and a constant map holding the augmentation noise std √(1−ᾱ_a)) and stays an
eps-model whose ``cond`` is a :class:`LowResCondition`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import record_config
from .eps import EpsModel
from .forward import l_simple, q_sample
from .nets.unet import UNet
from .samplers import sample
from .schedules import NoiseSchedule

__all__ = ["downsample", "upsample", "augment_low_res", "LowResCondition", "SuperResolutionUNet",
           "super_resolution_loss", "cascade_sample"]


def downsample(x: Tensor, factor: int) -> Tensor:
    """Average-pool images (B, C, H, W) by an integer factor -> (B, C, H/f, W/f)."""
    if x.ndim != 4:
        raise ValueError(f"x must be images (B, C, H, W), got {tuple(x.shape)}")
    if not isinstance(factor, int) or factor < 1 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"factor must be a positive int dividing the image size {tuple(x.shape[-2:])}, got {factor!r}")
    return F.avg_pool2d(x, factor)


def upsample(x: Tensor, size: int) -> Tensor:
    """Bilinear upsampling of images (B, C, h, w) to (B, C, size, size)."""
    if x.ndim != 4:
        raise ValueError(f"x must be images (B, C, H, W), got {tuple(x.shape)}")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def augment_low_res(low_res: Tensor, size: int, schedule: NoiseSchedule, aug_level: Tensor | int,
                    noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Noise conditioning augmentation (CDM Sec. 3.2): up(low_res) corrupted by q(z_a | up(low_res)).

    low_res: (B, C, h, w); aug_level: int or (B,) step index in [0, T) of ``schedule`` ->
    (B, C, size, size) = √ᾱ_a up(low_res) + √(1−ᾱ_a) ξ.
    """
    up = upsample(low_res, size)
    return q_sample(schedule, up, aug_level, noise=noise, generator=generator)


@dataclass
class LowResCondition:
    """What the super-resolution eps-model is conditioned on.

    image: (B, C, H, W) the low-res image, upsampled to the output size and augmented
    (:func:`augment_low_res`); aug_level: (B,) long, the augmentation step index a;
    labels: (B,) class labels for a class-conditional SR model, else None.
    """

    image: Tensor
    aug_level: Tensor
    labels: Tensor | None = None


@record_config
class SuperResolutionUNet(nn.Module):
    """Super-resolution eps-model: x_t (B, C, H, W), t (B,), cond: :class:`LowResCondition` -> (B, C, H, W).

    The wrapped :class:`~minidiff.nets.UNet` reads ``[x_t, cond.image, σ_a]`` stacked as 2C + 1
    channels, with σ_a = √(1−ᾱ_a) of ``aug_schedule`` as a constant map (the aug level as an input,
    since the U-Net's embedding only takes t and a class), and returns the C channels of ε̂.
    """

    def __init__(self, image_size: int = 8, low_res_size: int = 4, in_channels: int = 1,
                 aug_schedule: NoiseSchedule | None = None, num_classes: int | None = None,
                 num_timesteps: int = 1000, **unet_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(low_res_size, int) or not 1 <= low_res_size < image_size or image_size % low_res_size:
            raise ValueError(f"low_res_size must divide image_size={image_size} and be smaller, got {low_res_size!r}")
        self.image_size, self.low_res_size, self.channels = image_size, low_res_size, in_channels
        self.num_classes, self.num_timesteps = num_classes, num_timesteps
        self.aug_schedule = aug_schedule or NoiseSchedule.linear(num_timesteps)
        self.unet = UNet(image_size=image_size, in_channels=2 * in_channels + 1, num_timesteps=num_timesteps,
                         num_classes=num_classes, out_channels=in_channels, **unet_kwargs)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if not isinstance(cond, LowResCondition):
            raise ValueError("a super-resolution model needs cond=LowResCondition(image, aug_level, labels) "
                             f"(see minidiff.cascade.augment_low_res), got {type(cond).__name__}")
        want = (x.shape[0], self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape) != want:
            raise ValueError(f"x must have shape (B, {want[1]}, {want[2]}, {want[3]}), got {tuple(x.shape)}")
        if tuple(cond.image.shape) != want:
            raise ValueError(f"cond.image must be the upsampled low-res image {want}, got {tuple(cond.image.shape)}")
        level = self.aug_schedule.check_t(cond.aug_level, batch=x.shape[0])
        sigma = (1 - self.aug_schedule.alpha_bar[level.cpu()]).sqrt().to(x)                  # (B,)
        inp = torch.cat([x, cond.image.to(x), sigma[:, None, None, None].expand(-1, 1, *x.shape[2:])], dim=1)
        return self.unet(inp, t, cond.labels)


def super_resolution_loss(schedule: NoiseSchedule, factor: int, max_aug_level: int):
    """L_simple for a :class:`SuperResolutionUNet` as a ``loss_fn`` for :func:`minidiff.train.fit`.

    A batch is x_hr (B, C, H, W) or (x_hr, labels). The low-res input is ``downsample(x_hr, factor)``,
    upsampled and augmented at a ~ U{0 .. max_aug_level − 1} (index into ``schedule``; 1 means
    essentially no augmentation: level 0 has σ = √β_1 ≈ 0.01 for the linear schedule).
    """
    if not isinstance(max_aug_level, int) or not 1 <= max_aug_level <= schedule.T:
        raise ValueError(f"max_aug_level must be an int in [1, T]=[1, {schedule.T}], got {max_aug_level!r}")

    def loss_fn(model: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        x_hr, labels = (batch[0], batch[1]) if isinstance(batch, tuple) else (batch, None)
        low = downsample(x_hr, factor)
        level = torch.randint(0, max_aug_level, (x_hr.shape[0],), generator=generator).to(x_hr.device)
        noise = torch.randn(x_hr.shape, generator=generator, dtype=x_hr.dtype).to(x_hr.device)
        cond = LowResCondition(augment_low_res(low, x_hr.shape[-1], schedule, level, noise=noise), level, labels)
        return l_simple(model, schedule, x_hr, cond=cond, generator=generator)

    return loss_fn


@torch.no_grad()
def cascade_sample(base_model: EpsModel, sr_model: SuperResolutionUNet, schedule: NoiseSchedule,
                   labels: Tensor, low_shape: Sequence[int], aug_level: int = 0, method: str = "ddim",
                   steps: int | None = 50, generator: torch.Generator | None = None,
                   x_T_low: Tensor | None = None, x_T_high: Tensor | None = None,
                   sr_schedule: NoiseSchedule | None = None) -> tuple[Tensor, Tensor]:
    """Two-stage sampling (CDM Fig. 3): z_low ~ base_model(·|y), clipped to [-1, 1]; then
    x ~ sr_model(·| aug(up(z_low)), a, y) with a fixed aug level a.

    base_model: eps-model on (B, *low_shape) taking cond=labels (e.g. a CFG wrapper);
    labels: (B,); low_shape: (C, h, w). Returns (low (B, C, h, w), high (B, C, H, W)).
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    B, size = labels.shape[0], sr_model.image_size
    sr_schedule = sr_schedule or schedule
    steps = steps if method == "ddim" else None
    low = sample(base_model, schedule, (B, *low_shape), method=method, steps=steps, cond=labels,
                 generator=generator, x_T=x_T_low, progress=False).clamp(-1, 1)
    level = torch.full((B,), int(aug_level), dtype=torch.long)
    image = augment_low_res(low, size, sr_model.aug_schedule, level, generator=generator)
    cond = LowResCondition(image, level, labels if sr_model.num_classes else None)
    high = sample(sr_model, sr_schedule, (B, sr_model.channels, size, size), method=method, steps=steps,
                  cond=cond, generator=generator, x_T=x_T_high, progress=False)
    return low, high

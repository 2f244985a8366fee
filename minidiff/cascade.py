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
eps-model. Its condition is data (:mod:`minidiff.cond`), a mapping

    {"low_res": (B, C, H, W) the augmented upsampled image z̃, "aug_level": (B,) long a,
     "label": (B,) long y — only for a class-conditional model}

so classifier-free guidance on it nulls the label and passes z̃ and a to both halves.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cond as C
from .checkpoint import record_config
from .checks import check_int
from .eps import EpsModel
from .forward import l_simple, q_sample
from .guidance import ClassifierFreeGuidance, check_guidance_scale
from .nets.unet import UNet
from .samplers import METHODS, sample
from .schedules import NoiseSchedule

__all__ = ["downsample", "upsample", "augment_low_res", "LowResCondition", "SuperResolutionUNet",
           "super_resolution_loss", "cascade_sample", "SR_KEYS"]

#: the entries of a super-resolution condition
SR_KEYS = ("low_res", "aug_level", "label")


def _positive_int(value: Any, name: str, hint: str = "") -> int:
    return check_int(value, name, 1, hint=hint)


def _images(x: Any, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be images (B, C, H, W), got {got}")


def downsample(x: Tensor, factor: int) -> Tensor:
    """Average-pool images (B, C, H, W) by an integer factor -> (B, C, H/f, W/f)."""
    _images(x)
    hint = f" dividing the image size {tuple(x.shape[-2:])}"
    factor = _positive_int(factor, "factor", hint)
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"factor must be an int >= 1{hint}, got {factor!r}")
    return F.avg_pool2d(x, factor)


def upsample(x: Tensor, size: int) -> Tensor:
    """Bilinear upsampling (``align_corners=False``) of images (B, C, h, w) to (B, C, size, size)."""
    _images(x)
    size = _positive_int(size, "size", " (the output height = width)")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def augment_low_res(low_res: Tensor, size: int, schedule: NoiseSchedule, aug_level: Tensor | int,
                    noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Noise conditioning augmentation (CDM Sec. 3.2): up(low_res) corrupted by q(z_a | up(low_res)).

    low_res: (B, C, h, w); aug_level: int or (B,) step index in [0, T) of ``schedule`` ->
    (B, C, size, size) = √ᾱ_a up(low_res) + √(1−ᾱ_a) ξ.
    """
    up = upsample(low_res, size)
    return q_sample(schedule, up, aug_level, noise=noise, generator=generator)


def LowResCondition(image: Tensor, aug_level: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
    """Deprecated: the super-resolution condition is now the mapping this returns,
    ``{"low_res": image, "aug_level": aug_level[, "label": labels]}`` — build it directly.

    image: (B, C, H, W) the low-res image upsampled to the output size and augmented
    (:func:`augment_low_res`); aug_level: (B,) long, the augmentation step index a;
    labels: (B,) class labels for a class-conditional SR model, else None.
    """
    cond = {"low_res": image, "aug_level": aug_level}
    return cond if labels is None else {**cond, "label": labels}


@record_config
class SuperResolutionUNet(nn.Module):
    """Super-resolution eps-model: x_t (B, C, H, W), t (B,), cond (module docstring) -> (B, C, H, W).

    The wrapped :class:`~minidiff.nets.UNet` reads ``[x_t, cond["low_res"], σ_a]`` stacked as 2C + 1
    channels, with σ_a = √(1−ᾱ_a) of ``aug_schedule`` as a constant map (the aug level as an input,
    since the U-Net's embedding only takes t and a class) and ``cond["label"]`` as its class, and
    returns the C channels of ε̂.
    """

    def __init__(self, image_size: int = 8, low_res_size: int = 4, in_channels: int = 1,
                 aug_schedule: NoiseSchedule | None = None, num_classes: int | None = None,
                 num_timesteps: int = 1000, **unet_kwargs: Any) -> None:
        super().__init__()
        image_size = _positive_int(image_size, "image_size")
        in_channels = _positive_int(in_channels, "in_channels")
        if isinstance(low_res_size, bool) or not isinstance(low_res_size, int) or not 1 <= low_res_size < image_size \
                or image_size % low_res_size:
            raise ValueError(f"low_res_size must divide image_size={image_size} and be smaller, got {low_res_size!r}")
        if aug_schedule is not None and not isinstance(aug_schedule, NoiseSchedule):
            raise TypeError(f"aug_schedule must be a NoiseSchedule or None, got {type(aug_schedule).__name__}")
        self.image_size, self.low_res_size, self.channels = image_size, low_res_size, in_channels
        self.num_classes, self.num_timesteps = num_classes, num_timesteps
        self.aug_schedule = aug_schedule or NoiseSchedule.linear(num_timesteps)
        self.unet = UNet(image_size=image_size, in_channels=2 * in_channels + 1, num_timesteps=num_timesteps,
                         num_classes=num_classes, out_channels=in_channels, **unet_kwargs)

    @property
    def null_cond(self) -> dict[str, int] | None:
        """{"label": the null token} for a class-conditional model (CFG nulls only the label), else None."""
        return {"label": int(self.num_classes)} if self.num_classes else None    # ClassEmbedding's null token

    def check_condition(self, cond: Any, batch: int) -> dict[str, Tensor]:
        """Validate a super-resolution condition for a batch of ``batch`` and return it as a dict."""
        if not isinstance(cond, Mapping) or not {"low_res", "aug_level"} <= set(cond) or not set(cond) <= set(SR_KEYS):
            got = sorted(cond) if isinstance(cond, Mapping) else type(cond).__name__
            label = ', "label": (B,)' if self.num_classes else ""
            raise ValueError('a super-resolution model needs cond={"low_res": (B, C, H, W), "aug_level": (B,)'
                             f"{label}}} (see augment_low_res), got {got}")
        cond = C.check_cond(cond, batch=batch)
        want = (batch, self.channels, self.image_size, self.image_size)
        if tuple(cond["low_res"].shape) != want:
            raise ValueError(f"cond['low_res'] must be the upsampled low-res image {want}, got "
                             f"{tuple(cond['low_res'].shape)}")
        return cond

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        want = (x.shape[0], self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape) != want:
            raise ValueError(f"x must have shape (B, {want[1]}, {want[2]}, {want[3]}), got {tuple(x.shape)}")
        cond = self.check_condition(cond, x.shape[0])
        level = self.aug_schedule.check_t(cond["aug_level"], batch=x.shape[0])
        sigma = (1 - self.aug_schedule.alpha_bar[level.cpu()]).sqrt().to(x)                  # (B,)
        inp = torch.cat([x, cond["low_res"].to(x), sigma[:, None, None, None].expand(-1, 1, *x.shape[2:])], dim=1)
        return self.unet(inp, t, cond.get("label"))


def super_resolution_loss(schedule: NoiseSchedule, factor: int, max_aug_level: int):
    """L_simple for a :class:`SuperResolutionUNet` as a ``loss_fn`` for :func:`minidiff.train.fit`.

    A batch is x_hr (B, C, H, W) or (x_hr, labels). The low-res input is ``downsample(x_hr, factor)``,
    upsampled and augmented at a ~ U{0 .. max_aug_level − 1} (index into ``schedule``; 1 means
    essentially no augmentation: level 0 has σ = √β_1 ≈ 0.01 for the linear schedule).
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    factor = _positive_int(factor, "factor", " (the downsampling factor)")
    if isinstance(max_aug_level, bool) or not isinstance(max_aug_level, int) or not 1 <= max_aug_level <= schedule.T:
        raise ValueError(f"max_aug_level must be an int in [1, T]=[1, {schedule.T}], got {max_aug_level!r}")

    def loss_fn(model: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        x_hr, labels = (batch[0], batch[1]) if isinstance(batch, tuple) else (batch, None)
        low = downsample(x_hr, factor)
        level = torch.randint(0, max_aug_level, (x_hr.shape[0],), generator=generator).to(x_hr.device)
        noise = torch.randn(x_hr.shape, generator=generator, dtype=x_hr.dtype).to(x_hr.device)
        cond = {"low_res": augment_low_res(low, x_hr.shape[-1], schedule, level, noise=noise), "aug_level": level}
        if labels is not None:
            cond["label"] = labels
        return l_simple(model, schedule, x_hr, cond=cond, generator=generator)

    return loss_fn


def _check_cascade_args(sr_model: SuperResolutionUNet, labels: Any, low_shape: Any, aug_level: Any,
                        method: Any, steps: Any) -> Tensor:
    if not isinstance(sr_model, SuperResolutionUNet):
        raise TypeError(f"sr_model must be a SuperResolutionUNet, got {type(sr_model).__name__}")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must have shape (B,) and hold integer classes, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    want = (sr_model.channels, sr_model.low_res_size, sr_model.low_res_size)
    if not isinstance(low_shape, Sequence) or tuple(low_shape) != want:
        raise ValueError(f"low_shape must be the base model's image shape (C, h, w)={want} that sr_model expects, "
                         f"got {low_shape!r}")
    T_aug = sr_model.aug_schedule.T
    if isinstance(aug_level, bool) or not isinstance(aug_level, numbers.Integral) or not 0 <= aug_level < T_aug:
        raise ValueError(f"aug_level must be an int step index in [0, T)=[0, {T_aug}) of sr_model.aug_schedule, "
                         f"got {aug_level!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if steps is not None:
        _positive_int(steps, "steps", " (DDIM model calls per stage) or None")
        if method == "ddpm":                              # silently ignoring a step count would mislead
            raise ValueError(f"method='ddpm' takes all T steps; got steps={steps} (use method='ddim' for fewer, "
                             "or steps=None)")
    return labels


@torch.no_grad()
def cascade_sample(base_model: EpsModel, sr_model: SuperResolutionUNet, schedule: NoiseSchedule,
                   labels: Tensor, low_shape: Sequence[int], aug_level: int = 0, method: str = "ddim",
                   steps: int | None = None, generator: torch.Generator | None = None,
                   x_T_low: Tensor | None = None, x_T_high: Tensor | None = None,
                   sr_schedule: NoiseSchedule | None = None, sr_w: float = 0.0,
                   device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Two-stage sampling (CDM Fig. 3): z_low ~ base_model(·|y), clipped to [-1, 1]; then
    x ~ sr_model(·| aug(up(z_low)), a, y) with a fixed aug level a.

    base_model: eps-model on (B, *low_shape) taking cond=labels (e.g. a CFG wrapper);
    labels: (B,); low_shape: (C, h, w) = (sr_model.channels, low_res_size, low_res_size);
    aug_level: a, a step index of ``sr_model.aug_schedule``; steps: DDIM model calls per stage
    (None: 50; DDPM takes all T and refuses another count, as :func:`minidiff.samplers.sample` does); sr_w: classifier-free guidance weight of the SR stage (w >= 0; needs a
    class-conditional SR model trained with label dropout; CFG nulls the label only).
    The generator draws, in order, the x_T's not given, any sampler noise of stage 1, the
    augmentation noise ξ and the rest. Returns (low (B, C, h, w), high (B, C, H, W)).
    """
    labels = _check_cascade_args(sr_model, labels, low_shape, aug_level, method, steps)
    sr_w = check_guidance_scale(sr_w, "sr_w")
    sr = ClassifierFreeGuidance(sr_model, sr_w) if sr_w > 0 else sr_model          # before any sampling: fail early
    B, size = labels.shape[0], sr_model.image_size
    sr_schedule = sr_schedule or schedule
    low = sample(base_model, schedule, (B, *low_shape), method=method, steps=steps, cond=labels,
                 generator=generator, x_T=x_T_low, device=device, progress=False).clamp(-1, 1)
    level = torch.full((B,), int(aug_level), dtype=torch.long, device=low.device)
    z = augment_low_res(low, size, sr_model.aug_schedule, level, generator=generator)      # CDM Sec. 3.2
    cond = {"low_res": z, "aug_level": level}
    if sr_model.num_classes:
        cond["label"] = labels.to(low.device)
    high = sample(sr, sr_schedule, (B, sr_model.channels, size, size), method=method, steps=steps,
                  cond=cond, generator=generator, x_T=x_T_high, device=device, progress=False)
    return low, high

r"""Stable Diffusion's U-Net as a minidiff eps-model (chapter 10).

A diffusers ``UNet2DConditionModel`` is called as ``unet(latents, t, encoder_hidden_states=context).sample``;
minidiff's contract is ``eps_model(x_t, t, cond)``. :class:`SDEps` is the whole bridge: ``cond = {"context":
(B, L, D)}`` (the CLIP text encoder's last hidden states, :mod:`minidiff.sd.prompts`) goes to the
cross-attention, and the output is ε. Because the condition is a mapping with a ``"context"`` entry and the
adapter announces its null condition (the empty prompt's context), minidiff's DDPM / DDIM samplers and
:class:`~minidiff.guidance.ClassifierFreeGuidance` drive Stable Diffusion unchanged — the same code that
sampled chapter 5's mini Stable Diffusion. Fractional (float) steps are accepted too, so chapter 3's
``ContinuousTime.from_ddpm`` bridge and PF-ODE solvers run on it (given a VP-SDE for its schedule: minidiff's
``VPSDE.from_schedule`` covers linear β schedules only, not SD's ``scaled_linear``).

**What the U-Net predicts.** SD 1.x predicts ε; SD 2.x's 768-px checkpoints predict the velocity
:math:`v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0` (Salimans & Ho 2022, App. D), which
the adapter turns into ε with :func:`minidiff.eps.v_to_eps`, :math:`\varepsilon = \sqrt{1-\bar\alpha_t}\,x_t +
\sqrt{\bar\alpha_t}\,v`. The scheduler's config says which (``prediction_type``).

**The schedule.** :func:`sd_schedule` reads the pipeline's scheduler config into a
:class:`~minidiff.schedules.NoiseSchedule` (SD: ``scaled_linear``, β from 0.00085 to 0.012, T = 1000) and
:func:`ddim_options` the DDIM settings that make minidiff's loop visit the same steps as diffusers'
``DDIMScheduler`` ("leading" spacing with ``steps_offset`` = 1, ᾱ_final = ᾱ_0 when ``set_alpha_to_one`` is off).

SDXL-style U-Nets (``addition_embed_type``: extra pooled-text and size conditioning) are out of scope and
refused with a clear error.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .. import cond as C
from ..checks import check_tensor
from ..eps import v_to_eps, x0_to_eps
from ..schedules import NoiseSchedule

__all__ = ["SDEps", "check_unet", "ddim_options", "prediction_of", "sd_schedule"]

#: diffusers' ``prediction_type`` -> minidiff's name (:data:`minidiff.eps.PREDICTIONS`)
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def check_unet(unet: Any) -> nn.Module:
    """``unet`` if it is a diffusers ``UNet2DConditionModel`` of the Stable Diffusion 1.x / 2.x kind."""
    config = getattr(unet, "config", None)
    if not isinstance(unet, nn.Module) or config is None or not hasattr(config, "cross_attention_dim"):
        raise TypeError(f"unet must be a diffusers UNet2DConditionModel (pipe.unet), got {type(unet).__name__}")
    extra = getattr(config, "addition_embed_type", None)
    if extra is not None or getattr(config, "class_embed_type", None) is not None:
        raise ValueError(f"this U-Net takes extra conditioning (addition_embed_type={extra!r}, class_embed_type="
                         f"{getattr(config, 'class_embed_type', None)!r}), as SDXL and the upscalers do: minidiff.sd "
                         "covers Stable Diffusion 1.x / 2.x (text context only). SDXL's added_cond_kwargs "
                         "(pooled text embeddings, size/crop ids) are out of scope; use its diffusers pipeline.")
    return unet


def _config(scheduler: Any) -> Mapping[str, Any]:
    """The config mapping of a pipeline, a scheduler or a config."""
    scheduler = getattr(scheduler, "scheduler", scheduler)          # a pipeline: its scheduler
    config = getattr(scheduler, "config", scheduler)
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a diffusers pipeline, scheduler or scheduler config, got {type(scheduler).__name__}")
    return config


def prediction_of(scheduler: Any) -> str:
    """What the U-Net predicts, from the scheduler config's ``prediction_type``: "eps", "v" or "x0"."""
    kind = _config(scheduler).get("prediction_type", "epsilon")
    if kind not in _PREDICTIONS:
        raise ValueError(f"prediction_type={kind!r} is not one of {sorted(_PREDICTIONS)}")
    return _PREDICTIONS[kind]


def sd_schedule(scheduler: Any) -> NoiseSchedule:
    """The :class:`NoiseSchedule` of a pipeline / scheduler / config (``NoiseSchedule.from_diffusers``: a scheduler
    object gives its very float32 betas)."""
    scheduler = getattr(scheduler, "scheduler", scheduler)
    return NoiseSchedule.from_diffusers(scheduler if hasattr(scheduler, "betas") else _config(scheduler))


def ddim_options(scheduler: Any) -> dict[str, Any]:
    """``{"spacing", "steps_offset", "final_alpha_bar"}`` for :func:`minidiff.samplers.ddim_loop` /
    :func:`~minidiff.samplers.sample` so they step like diffusers' ``DDIMScheduler`` built from this config.

    ``final_alpha_bar`` is 1 with ``set_alpha_to_one=True``, else ᾱ at index 0 (SD 1.5: 0.99915). "linspace"
    spacing is refused: there diffusers' DDIM steps to t − T/steps, not to the next visited index
    (:func:`minidiff.samplers.ddim_timesteps` explains), so no sub-sequence sampler can match it.
    """
    config = _config(scheduler)
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing"):
        raise ValueError(f"timestep_spacing={spacing!r}: minidiff's DDIM matches diffusers' for 'leading' and "
                         "'trailing' only; build the scheduler with timestep_spacing='leading' (SD 1.x) or 'trailing'")
    if config.get("thresholding", False) or config.get("clip_sample", False):
        raise ValueError("the scheduler clips or thresholds x0 (clip_sample / thresholding): SD latents are not in "
                         "[-1, 1]; build it with clip_sample=False, thresholding=False as SD's own config does")
    schedule = sd_schedule(scheduler)
    final = 1.0 if config.get("set_alpha_to_one", True) else float(schedule.alpha_bar[0])
    return {"spacing": spacing, "steps_offset": int(config.get("steps_offset", 0)), "final_alpha_bar": final}


class SDEps(nn.Module):
    """ε̂(z_t, t, cond) of a Stable Diffusion U-Net: z_t (B, 4, h, w) latents, t (B,) long in [0, T),
    cond ``{"context": (B, L, D)}`` (or the (B, L, D) tensor itself) -> ε̂ (B, 4, h, w) in z_t's dtype.

    Args:
        unet: ``pipe.unet`` (its weights are used as they are; LoRA and BPS adapt it in place or by hooks).
        schedule: the training schedule (:func:`sd_schedule`); needed for v- and x0-prediction checkpoints.
        prediction: "eps", "v" or "x0" (:func:`prediction_of` of the scheduler).
        null_context: the empty prompt's context (1, L, D), announced as ``null_cond`` for classifier-free
            guidance (:func:`minidiff.sd.prompts.null_context`).
    Build it from a pipeline with :meth:`from_pipeline`.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction: str = "eps",
                 null_context: Tensor | None = None) -> None:
        super().__init__()
        self.unet = check_unet(unet)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule (minidiff.sd.sd_schedule(pipe)), got "
                            f"{type(schedule).__name__}")
        if prediction not in _PREDICTIONS.values():
            raise ValueError(f"prediction must be one of {tuple(_PREDICTIONS.values())}, got {prediction!r}")
        self.schedule, self.prediction = schedule, prediction
        self.context_dim = int(unet.config.cross_attention_dim)
        self.null_context = None if null_context is None else self._check_context(null_context, "null_context")

    @classmethod
    def from_pipeline(cls, pipe: Any, null_context: Tensor | None = None) -> SDEps:
        """The adapter of ``pipe.unet`` with the pipeline's schedule, prediction type and (by default) the empty
        prompt's context as the null condition."""
        from .prompts import null_context as empty_context
        if null_context is None:
            null_context = empty_context(pipe)
        return cls(pipe.unet, sd_schedule(pipe), prediction_of(pipe), null_context)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.T

    @property
    def null_cond(self) -> dict[str, Tensor] | None:
        """``{"context": empty prompt's context (1, L, D)}``: what CFG and condition dropout put in for ∅."""
        return None if self.null_context is None else {"context": self.null_context}

    def _check_context(self, context: Any, name: str) -> Tensor:
        check_tensor(context, name, floating=True)
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(f"{name} must be text-encoder states (B, L, {self.context_dim}) (the U-Net's "
                             f"cross_attention_dim), got {tuple(context.shape)}; encode prompts with "
                             "minidiff.sd.encode_prompts(pipe, prompts)")
        return context

    def context_of(self, cond: Any, batch: int) -> Tensor:
        """The (B, L, D) context in ``cond`` (a mapping with "context", or the tensor itself)."""
        if isinstance(cond, Mapping):
            unknown = set(cond) - {"context"}
            if "context" not in cond or unknown:
                raise ValueError(f"Stable Diffusion's condition is {{'context': (B, L, {self.context_dim})}}, got keys "
                                 f"{sorted(cond)}" + ("; c_add belongs to a steered model (SDPowerSteering)"
                                                      if "c_add" in unknown else ""))
            cond = cond["context"]
        if cond is None:
            raise ValueError("Stable Diffusion needs a text context: cond={'context': encode_prompts(pipe, prompts)} "
                             "(the empty prompt's context for unconditional samples)")
        context = self._check_context(cond, "cond['context']")
        C.check_cond(context, batch=batch, name="cond['context']")
        return context

    def forward(self, z_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """z_t (B, 4, h, w); t (B,) step indices in [0, T) — long, or float for fractional steps (chapter 3's
        continuous-time bridge, ``ContinuousTime.from_ddpm``; the U-Net embeds any real t); cond as above."""
        check_tensor(z_t, "z_t", floating=True)
        if z_t.ndim != 4 or z_t.shape[1] != self.unet.config.in_channels:
            raise ValueError(f"z_t must be latents (B, {self.unet.config.in_channels}, h, w), got {tuple(z_t.shape)}")
        batch = z_t.shape[0]
        context = self.context_of(cond, batch)
        fractional = isinstance(t, Tensor) and t.is_floating_point()
        if fractional:
            alpha_bar = self.schedule.alpha_bar_at(t, batch)      # checks t in [0, T−1]; ᾱ interpolated in log
            t = t.expand(batch).to(z_t.device)
        else:
            t = self.schedule.check_t(t, batch=batch).to(z_t.device)
        dtype = next(self.unet.parameters()).dtype      # not unet.dtype: diffusers walks every module for it
        out = self.unet(z_t.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.to(z_t.dtype)
        if self.prediction == "eps":
            return out
        if fractional:
            alpha_bar = alpha_bar.to(z_t).reshape(-1, 1, 1, 1)
        else:
            alpha_bar = self.schedule.gather(self.schedule.alpha_bar, t, z_t)
        # SD 2.x: ε = √(1−ᾱ) z_t + √ᾱ v (Salimans & Ho 2022, App. D), minidiff.eps' one home for it
        return v_to_eps(z_t, out, alpha_bar) if self.prediction == "v" else x0_to_eps(z_t, out, alpha_bar)

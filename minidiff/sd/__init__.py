"""Chapter 10 — minidiff inside Stable Diffusion: the real (or a tiny offline) diffusers pipeline, driven by
minidiff's samplers and guidance, adapted with minidiff's LoRA and power steering.

* :mod:`~minidiff.sd.pipeline`: :func:`load_pipeline` (hub id or folder, fp16 on CUDA, offline-safe);
* :mod:`~minidiff.sd.tiny`: :func:`tiny_pipeline`, the SD-architecture stand-in built offline;
* :mod:`~minidiff.sd.unet`: :class:`SDEps`, the U-Net as an eps-model; the scheduler -> NoiseSchedule mapping;
* :mod:`~minidiff.sd.prompts`: prompts -> cross-attention context, the null context;
* :mod:`~minidiff.sd.sample`: :func:`text_to_latents` (minidiff DDIM + CFG), :func:`decode_latents`;
* :mod:`~minidiff.sd.steer`: power steering on the SD U-Net through forward hooks;
* :mod:`~minidiff.sd.blend`: blended latent diffusion (local edits that keep the background);
* :mod:`~minidiff.sd.train`: a DreamBooth / LoRA / BPS training loop that runs unchanged under ``accelerate``.
"""
from .blend import blended_ddim_loop, blended_edit, check_mask, latent_mask
from .pipeline import (
           DEFAULT_MODEL,
           MODEL_ENV,
           SAFETY_NOTE,
           default_model,
           load_pipeline,
           offline,
           pipeline_dtype,
)
from .prompts import check_prompts, encode_prompts, null_context, prompt_condition
from .sample import decode_latents, latent_shape, text_to_latents
from .steer import SDPorts, SDPowerSteering, add_sd_residuals
from .tiny import WORDS, tiny_pipeline, tiny_unet_config, write_tiny_tokenizer
from .train import NoisedExamples, dreambooth_examples, train_sd, weighted_eps_loss
from .unet import SDEps, check_unet, ddim_options, prediction_of, sd_schedule

__all__ = [
           "DEFAULT_MODEL",
           "MODEL_ENV",
           "SAFETY_NOTE",
           "WORDS",
           "NoisedExamples",
           "SDEps",
           "SDPorts",
           "SDPowerSteering",
           "add_sd_residuals",
           "blended_ddim_loop",
           "blended_edit",
           "check_mask",
           "check_prompts",
           "check_unet",
           "ddim_options",
           "decode_latents",
           "default_model",
           "dreambooth_examples",
           "encode_prompts",
           "latent_mask",
           "latent_shape",
           "load_pipeline",
           "null_context",
           "offline",
           "pipeline_dtype",
           "prediction_of",
           "prompt_condition",
           "sd_schedule",
           "text_to_latents",
           "tiny_pipeline",
           "tiny_unet_config",
           "train_sd",
           "weighted_eps_loss",
           "write_tiny_tokenizer",
]

"""minidiff — a small, tested diffusion library built chapter by chapter in the course notebooks.

The one contract: every model is an eps-model ``eps(x_t, t, cond=None) -> Tensor`` (see
:mod:`minidiff.eps`); samplers consume it and guidance wraps it.
"""
from .config import default_device, is_quick, pick, resolve_device, seed_everything
from .eps import call_eps, eps_to_score, eps_to_x0, score_to_eps, x0_to_eps
from .eps import PREDICTIONS, PredictionEps, eps_to_v, v_target, v_to_eps, v_to_x0
from .forward import (bits_per_dim, discretized_gaussian_log_likelihood, elbo_terms, gaussian_kl,
                      gaussian_log_likelihood, interpolated_variance, l_simple, l_t_weight, model_mean, model_variance,
                      posterior_mean_var, predicted_x0, q_sample, q_step)
from .nets import MLPDenoiser, UNet
from .samplers import (DynamicThreshold, ddim_loop, ddim_step, ddim_timesteps, ddpm_loop, ddpm_step,
                       dynamic_threshold, sample)
from .schedules import NoiseSchedule
from .sde import SDE, VESDE, VPSDE, ContinuousTime, SubVPSDE, dsm_loss, make_sde, sample_sde
from .clock import DiscreteTime
from .exact import tilted_weights
from .ode import ode_log_likelihood, ode_loop
from .flow import (EpsVelocity, FlowPath, MixtureVelocity, VelocityEps, eps_to_velocity, flow_loop, flow_matching_loss,
                   flow_sample, velocity_to_eps, velocity_to_x0, x0_to_velocity)
from .guidance import ClassifierFreeGuidance, ClassifierGuidance, cfg_combine, classifier_loss
from .cascade import SuperResolutionUNet, cascade_sample
from .checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from .train import EMA, diffusion_loss, fit, random_batches, train, zip_batches
from .text import ImageEncoder, TextEncoder, TinyCLIP, clip_loss, clip_score, clip_train_loss, freeze, zero_shot_accuracy
from .data.shapes import Scenes, WordTokenizer, make_scenes, plot_scenes
from .tgdp import DensityRatioGuidance, MixtureDensityRatio
from .bps import PowerSteering, Steered
from .lora import (LoRAConv2d, LoRALinear, inject_lora, load_lora, lora_parameters, merge_lora, remove_lora, save_lora,
                   set_lora_scale, trainable_parameter_count, unmerge_lora)
from .latent import (Codec, DiagonalGaussian, DiffusersCodec, KLAutoencoder, LatentDiffusion, estimate_scaling_factor,
                     evaluate_autoencoder, train_autoencoder, vae_loss)
from .report import md_table, stopwatch
from .shapes_eval import ShapesEvaluator, caption_accuracy, shapes_evaluator, shapes_frechet
from .sd import SDEps, SDPowerSteering, blended_edit, load_pipeline, text_to_latents, tiny_pipeline

__version__ = "0.1.0"
__all__ = [
    "SDEps", "SDPowerSteering", "blended_edit", "load_pipeline", "text_to_latents", "tiny_pipeline",
    "md_table", "stopwatch", "PowerSteering", "Steered", "LoRAConv2d", "LoRALinear", "inject_lora", "load_lora",
    "lora_parameters", "merge_lora", "remove_lora", "save_lora", "set_lora_scale", "trainable_parameter_count", "unmerge_lora",
    "default_device", "is_quick", "pick", "resolve_device", "seed_everything",
    "call_eps", "eps_to_score", "eps_to_x0", "score_to_eps", "x0_to_eps",
    "bits_per_dim", "discretized_gaussian_log_likelihood", "elbo_terms", "gaussian_kl",
    "gaussian_log_likelihood", "interpolated_variance", "l_simple", "l_t_weight", "model_mean", "model_variance",
    "posterior_mean_var", "predicted_x0", "q_sample", "q_step",
    "MLPDenoiser", "UNet",
    "DynamicThreshold", "ddim_loop", "ddim_step", "ddim_timesteps", "ddpm_loop", "ddpm_step", "dynamic_threshold",
    "sample",
    "NoiseSchedule",
    "SDE", "VESDE", "VPSDE", "ContinuousTime", "DiscreteTime", "tilted_weights", "PREDICTIONS", "PredictionEps", "eps_to_v", "v_target",
    "v_to_eps", "v_to_x0", "SubVPSDE", "dsm_loss", "make_sde", "sample_sde",
    "ode_log_likelihood", "ode_loop",
    "EpsVelocity", "FlowPath", "MixtureVelocity", "VelocityEps", "eps_to_velocity", "flow_loop", "flow_matching_loss",
    "flow_sample", "velocity_to_eps", "velocity_to_x0", "x0_to_velocity",
    "ClassifierFreeGuidance", "ClassifierGuidance", "cfg_combine", "classifier_loss",
    "SuperResolutionUNet", "cascade_sample",
    "EMA", "diffusion_loss", "fit", "random_batches", "train", "zip_batches",
    "load_checkpoint", "load_model", "save_checkpoint", "save_model",
    "ImageEncoder", "TextEncoder", "TinyCLIP", "clip_loss", "clip_score", "clip_train_loss", "freeze",
    "zero_shot_accuracy",
    "Scenes", "WordTokenizer", "make_scenes", "plot_scenes",
    "ShapesEvaluator", "caption_accuracy", "shapes_evaluator", "shapes_frechet",
    "DensityRatioGuidance", "MixtureDensityRatio",
    "Codec", "DiagonalGaussian", "DiffusersCodec", "KLAutoencoder", "LatentDiffusion", "estimate_scaling_factor",
    "evaluate_autoencoder", "train_autoencoder", "vae_loss",
]

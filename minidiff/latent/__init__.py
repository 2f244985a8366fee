"""Chapter 5 — latent diffusion: a KL-regularised autoencoder, the codec interface (also for diffusers'
``AutoencoderKL``) and :class:`LatentDiffusion` (Rombach et al. 2022).

* :mod:`~minidiff.latent.posterior`: the diagonal Gaussian posterior q(z|x) and its closed forms;
* :mod:`~minidiff.latent.autoencoder`: :class:`KLAutoencoder` (f ∈ {2, 4, 8}), the β-VAE loss;
* :mod:`~minidiff.latent.codec`: the :class:`Codec` protocol, batched encode/decode, the scaling factor;
* :mod:`~minidiff.latent.diffusers_codec`: :class:`DiffusersCodec` (Stable Diffusion's VAE);
* :mod:`~minidiff.latent.diffusion`: :class:`LatentDiffusion`, an eps-model on latents that decodes its samples.
"""
from .autoencoder import FACTORS, KLAutoencoder, evaluate_autoencoder, train_autoencoder, vae_loss
from .codec import Codec, decode_in_batches, encode_in_batches, estimate_scaling_factor
from .diffusers_codec import DiffusersCodec
from .diffusion import LatentDiffusion
from .posterior import DiagonalGaussian

__all__ = ["FACTORS", "Codec", "DiagonalGaussian", "DiffusersCodec", "KLAutoencoder", "LatentDiffusion",
           "decode_in_batches", "encode_in_batches", "estimate_scaling_factor", "evaluate_autoencoder",
           "train_autoencoder", "vae_loss"]

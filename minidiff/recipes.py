"""The course's trained models that several chapters share, built once and cached.

**Chapter 2's digit DDPM** (:func:`digits_ddpm`): chapter 2 trains it for the linear and the cosine schedule,
chapter 3 loads the linear one to sample it with SDE and ODE solvers — one recipe, one cache entry.

**Chapter 5's text-to-image parts**: chapter 5 trains them, 6, 7 and 10 reuse them.

Chapter 5 builds a mini Stable Diffusion on the shapes world — a KL autoencoder, a tiny CLIP and a
cross-attention U-Net on latents. Later chapters adapt that *same* model (LoRA, DreamBooth, power steering),
so its recipe lives here rather than in a notebook: each function trains its part with fixed data, seeds and
hyper-parameters through :func:`minidiff.cache.load_or_train`, and every chapter that calls it with the same
arguments gets the same weights from the cache. Budgets follow the course's two modes (``pick(quick, full)``).

    scenes, tokens = shapes_training_set()
    ae = shapes_autoencoder()                       # f = 4, β = 1e-3: 32×32×3 -> 8×8×4
    clip = shapes_clip()                            # frozen; clip.token_features(tokens) is the U-Net's context
    ld = shapes_latent_diffusion(ae, clip)          # LatentDiffusion with the empty caption as CFG's null
    images = ld.sample(8, {"context": clip.token_features(tokens[:8])}, w=3.0)
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from .cache import load_or_train, load_or_train_logged
from .checks import check_int, check_real
from .config import pick
from .data.digits import digits
from .data.shapes import Scenes, WordTokenizer, make_scenes
from .latent import KLAutoencoder, LatentDiffusion, train_autoencoder
from .nets import UNet
from .report import stopwatch
from .schedules import NoiseSchedule
from .text import TinyCLIP, clip_train_loss, freeze
from .train import EMA, diffusion_loss, fit, train

__all__ = [
    "DIGITS_UNET",
    "HELD_OUT_PAIRS",
    "TRAIN_SEED",
    "digits_ddpm",
    "digits_recipe",
    "fingerprint",
    "shapes_autoencoder",
    "shapes_clip",
    "shapes_latent_diffusion",
    "shapes_latent_unet",
    "shapes_training_set",
    "text_to_image_config",
]

HELD_OUT_PAIRS = (("green", "triangle"), ("blue", "cross"), ("magenta", "circle"))   # never in the training scenes
TRAIN_SEED = 0


# --------------------------------------------------------------------------- chapter 2's digit DDPM
DIGITS_UNET = {"image_size": 8, "base_channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1}


def digits_recipe(schedule: NoiseSchedule, steps: int | None = None) -> dict[str, Any]:
    """The hyper-parameters of :func:`digits_ddpm` (the cache key, with the U-Net's config)."""
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    return {"data": "digits-train", "schedule": schedule.to_dict(), "loss": "L_simple",
            "steps": pick(200, 6_000) if steps is None else check_int(steps, "steps", 1), "batch_size": 128,
            "lr": 2e-3, "warmup": pick(20, 200), "ema_decay": 0.999, "seed": 0}


def digits_ddpm(schedule: NoiseSchedule, steps: int | None = None) -> tuple[UNet, dict[str, Any]]:
    """Chapter 2's digit model: ``UNet(**DIGITS_UNET)`` trained with L_simple (Ho et al. 2020, eq. 14) on the 8×8
    training digits under ``schedule``, AdamW with warm-up, EMA weights (decay 0.999, diffusers' warm-up).
    Returns (model in eval mode, log) with log = {"losses": [per step], "seconds": training time}, the same
    whether it trained now or came from the cache."""
    recipe = digits_recipe(schedule, steps)
    torch.manual_seed(recipe["seed"])                     # the initial weights

    def train_fn(net: UNet) -> dict[str, Any]:
        x_train, _ = digits("train")
        ema = EMA(net, decay=recipe["ema_decay"])
        with stopwatch() as sw:
            losses = fit(net, diffusion_loss(schedule), x_train, steps=recipe["steps"], batch_size=recipe["batch_size"],
                         lr=recipe["lr"], warmup=recipe["warmup"], ema=ema, seed=recipe["seed"], desc="digits DDPM")
        ema.copy_to(net)
        return {"losses": losses, "seconds": sw.seconds}

    return load_or_train_logged("digits-ddpm", recipe, UNet(**DIGITS_UNET), train_fn)


# --------------------------------------------------------------------------- chapter 5's text-to-image parts
def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's parameters and buffers: cache keys of models trained on top of it."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _n_train(n: int | None) -> int:
    return pick(2_000, 10_000) if n is None else check_int(n, "n", 2)


def shapes_training_set(n: int | None = None) -> tuple[Scenes, Tensor]:
    """The training scenes (base shapes, held-out pairs excluded, seed 0) and their caption tokens (N, 16)."""
    scenes = make_scenes(_n_train(n), seed=TRAIN_SEED, exclude_pairs=list(HELD_OUT_PAIRS))
    return scenes, WordTokenizer().encode(scenes.captions)


def _data_key(n: int) -> str:
    return f"shapes n={n} seed={TRAIN_SEED} held-out={HELD_OUT_PAIRS} v2"


def shapes_autoencoder(f: int = 4, beta: float = 1e-3, steps: int | None = None, n: int | None = None,
                       base_channels: int = 8) -> KLAutoencoder:
    """A KL autoencoder (4 latent channels) trained on the training scenes, scaling factor fitted; frozen."""
    n, steps = _n_train(n), pick(25, 1_500) if steps is None else check_int(steps, "steps", 1)
    beta = check_real(beta, "beta", 0.0)
    cfg = {"f": f, "beta": beta, "steps": steps, "batch": 32, "lr": 2e-3, "data": _data_key(n)}
    torch.manual_seed(0)
    model = KLAutoencoder(f=f, z_channels=4, base_channels=base_channels)

    def train_fn(m: KLAutoencoder) -> None:
        scenes, _ = shapes_training_set(n)
        train_autoencoder(m, scenes.images, beta=beta, steps=steps, batch_size=32, lr=2e-3, warmup=20, seed=0)

    return freeze(load_or_train("shapes-autoencoder", cfg, model, train_fn))


def shapes_clip(steps: int | None = None, n: int | None = None, records: list | None = None) -> TinyCLIP:
    """A TinyCLIP trained contrastively on (training scene, caption) pairs; frozen. ``records``: a list that
    receives the training records when it trains (stays empty on a cache hit)."""
    n, steps = _n_train(n), pick(60, 3_000) if steps is None else check_int(steps, "steps", 1)
    cfg = {"steps": steps, "batch": 64, "lr": 2e-3, "data": _data_key(n)}
    torch.manual_seed(0)
    model = TinyCLIP.build(WordTokenizer().vocab_size)

    def train_fn(m: TinyCLIP) -> None:
        scenes, tokens = shapes_training_set(n)
        out = train(m, clip_train_loss, (scenes.images, tokens), steps=steps, batch_size=64, lr=2e-3, warmup=50,
                    seed=0, desc="tiny CLIP")
        for record in out:
            if records is not None:
                records.append(record)

    return freeze(load_or_train("shapes-tiny-clip", cfg, model, train_fn))


def shapes_latent_unet(context_dim: int = 64, num_timesteps: int = 1000) -> UNet:
    """The latent U-Net's architecture (8×8×4 latents, cross-attention at both levels), freshly initialised."""
    torch.manual_seed(0)
    return UNet(image_size=8, in_channels=4, base_channels=32, channel_mults=(1, 2), attention_levels=(0, 1),
                context_dim=context_dim, num_timesteps=num_timesteps)


def text_to_image_config(steps: int | None = None, n: int | None = None) -> dict[str, Any]:
    """The hyper-parameters of :func:`shapes_latent_diffusion` (steps, batch, lr, condition dropout, data)."""
    return {"steps": pick(30, 3_000) if steps is None else check_int(steps, "steps", 1), "batch": 32, "lr": 1e-3,
            "p_uncond": 0.1, "data": _data_key(_n_train(n))}


def shapes_latent_diffusion(autoencoder: KLAutoencoder | None = None, clip: TinyCLIP | None = None,
                            steps: int | None = None, n: int | None = None) -> LatentDiffusion:
    """The text-to-image model: :func:`shapes_latent_unet` trained with L_simple on the scaled latents of the
    training scenes, conditioned on CLIP's token features, 10 % condition dropout to the empty caption, EMA
    weights; returned as a frozen :class:`LatentDiffusion` whose null condition is the empty caption."""
    ae = shapes_autoencoder(n=n) if autoencoder is None else autoencoder
    clip = shapes_clip(n=n) if clip is None else clip
    cfg = {**text_to_image_config(steps, n), "autoencoder": fingerprint(ae), "clip": fingerprint(clip)}
    schedule = NoiseSchedule.linear(1000)
    with torch.no_grad():
        null = {"context": clip.null_context()}
    ld = LatentDiffusion(shapes_latent_unet(clip.context_dim, schedule.T), ae, schedule, null_cond=null)

    def train_fn(unet: UNet) -> None:
        scenes, tokens = shapes_training_set(n)
        with torch.no_grad():
            data = (ld.encode_dataset(scenes.images), {"context": clip.token_features(tokens)})
        ema = EMA(unet)
        for _ in train(unet, ld.loss(p_uncond=cfg["p_uncond"]), data, steps=cfg["steps"], batch_size=cfg["batch"],
                       lr=cfg["lr"], warmup=min(100, cfg["steps"] // 10), ema=ema, seed=0, desc="latent U-Net"):
            pass
        ema.copy_to(unet)

    freeze(load_or_train("shapes-latent-unet", cfg, ld.unet, train_fn))
    return ld

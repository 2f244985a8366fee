r"""A tiny Stable Diffusion, built offline (chapter 10's stand-in for tests, CI and quick mode).

Every part has Stable Diffusion's *architecture* — ``UNet2DConditionModel`` with cross-attention down, middle
and up blocks, ``AutoencoderKL``, ``CLIPTextModel`` + ``CLIPTokenizer``, a ``DDIMScheduler`` with SD 1.5's
schedule settings — at a size that runs in milliseconds on a CPU, with random weights. It is written with
``save_pretrained`` and read back through :func:`~minidiff.sd.load_pipeline` with ``HF_HUB_OFFLINE=1``, so the
code path is the one a real checkpoint takes; only the weights differ.

The tokenizer's vocabulary is written locally: the 26 letters (alone and word-final, ``"a</w>"``) so that any
lowercase word tokenises, plus BPE merges that make each word of :data:`WORDS` one token. Images are 16×16,
latents 4×8×8 (VAE factor f = 2), the context (B, 16, 32).
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from string import ascii_lowercase
from typing import Any

import torch

from ..checks import check_int

__all__ = ["WORDS", "tiny_pipeline", "tiny_unet_config", "write_tiny_tokenizer"]

#: words that are single tokens of the tiny tokenizer (captions of chapter 5's shapes world, DreamBooth's "sks")
WORDS = ("a", "an", "the", "of", "and", "photo", "shape", "sks", "dog", "cat",
         "red", "green", "blue", "yellow", "cyan", "magenta", "circle", "square", "triangle", "cross", "star",
         "small", "large", "above", "below", "left", "right", "on", "top", "bottom")
MAX_LEN = 16
CONTEXT_DIM = 32


def tiny_unet_config() -> dict[str, Any]:
    """The tiny U-Net: SD's block types (cross-attention down, plain down / plain up, cross-attention up, a
    cross-attention middle) at widths 32 and 64, one layer per block, 8×8 latents."""
    return {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "block_out_channels": (32, 64),
                "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
                "cross_attention_dim": CONTEXT_DIM, "attention_head_dim": 8, "norm_num_groups": 8}


def _merges(words: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(vocabulary, merges) of a byte-pair encoder trained on ``words`` until each is one token (Sennrich et al.
    2016, Alg. 1: merge the most frequent adjacent pair, ties by first occurrence). Merges are applied by rank at
    encoding time, so they must be *learned* like this: per-word merges would fire inside other words."""
    vocab = ["<|startoftext|>", "<|endoftext|>", *ascii_lowercase, *(c + "</w>" for c in ascii_lowercase)]
    split = [[*w[:-1], w[-1] + "</w>"] for w in dict.fromkeys(words)]
    merges: list[str] = []
    while any(len(parts) > 1 for parts in split):
        counts: dict[tuple[str, str], int] = {}
        for parts in split:
            for pair in itertools.pairwise(parts):
                counts[pair] = counts.get(pair, 0) + 1
        a, b = max(counts, key=counts.get)               # max keeps the first of equal counts
        merges.append(f"{a} {b}")
        vocab.append(a + b)
        split = [_merge_pair(parts, a, b) for parts in split]
    return list(dict.fromkeys(vocab)), merges


def _merge_pair(parts: list[str], a: str, b: str) -> list[str]:
    """``parts`` with every adjacent (a, b) joined, left to right."""
    out: list[str] = []
    for part in parts:
        if out and out[-1] == a and part == b:
            out[-1] = a + b
        else:
            out.append(part)
    return out


def write_tiny_tokenizer(folder: str | os.PathLike, words: tuple[str, ...] = WORDS, max_len: int = MAX_LEN) -> Any:
    """A ``CLIPTokenizer`` from a vocabulary and merges written to ``folder`` (vocab.json, merges.txt)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _merges(tuple(words))
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_len)


def _build(seed: int, folder: Path) -> Any:
    """The tiny pipeline's parts from configs, random weights drawn after ``torch.manual_seed(seed)``."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = write_tiny_tokenizer(folder / "vocab")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with _fork_rng(seed):                               # the global RNG of the caller is left as it was
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                            sample_size=16)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=CONTEXT_DIM, intermediate_size=37,
                                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LEN,
                                            bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                                            eos_token_id=eos, pad_token_id=eos))
    # SD 1.5's scheduler settings (its checkpoint ships a PNDM scheduler with these; DDIM reads the same config)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@contextmanager
def _fork_rng(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def _hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 inside the block (restored after)."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def tiny_pipeline(seed: int = 0, path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> Any:
    """The tiny Stable Diffusion (module docstring): built with random weights from ``seed``, saved to ``path``
    (default: a fresh temporary folder, removed at exit) with ``save_pretrained``, and loaded back from it by
    :func:`~minidiff.sd.load_pipeline` under ``HF_HUB_OFFLINE=1`` — in float32 on ``device`` (default CPU).
    The same seed gives the same weights on every call; the caller's global RNG is not touched. Under
    ``torch.distributed``, build it before the process group starts (or on rank 0 into a shared ``path``):
    transformers' ``save_pretrained`` writes on rank 0 only."""
    from .pipeline import load_pipeline

    seed = check_int(seed, "seed", 0)
    if path is None:
        folder = Path(tempfile.mkdtemp(prefix="minidiff-tiny-sd-"))
        atexit.register(shutil.rmtree, folder, True)     # a temporary stand-in leaves nothing behind
    else:
        folder = Path(path)
    pipe = _build(seed, folder)
    pipe.save_pretrained(folder / "pipeline")
    with _hub_offline():
        return load_pipeline(folder / "pipeline", device=device, dtype=torch.float32)

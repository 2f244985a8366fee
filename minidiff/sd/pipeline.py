r"""Loading a real Stable Diffusion checkpoint (chapter 10), offline-safe.

:func:`load_pipeline` takes a hub id or a local folder of any diffusers Stable Diffusion checkpoint (1.x / 2.x):
fp16 on CUDA, fp32 on the CPU. It never hangs on a machine without network: with ``HF_HUB_OFFLINE=1`` (or
``download=False``) only the local folder / Hugging Face cache is read, and a missing checkpoint raises a
:class:`FileNotFoundError` that says how to get it. The default id lives in one place, :data:`DEFAULT_MODEL`,
and the environment variable :data:`MODEL_ENV` overrides it (a folder path works too).

**The safety checker is off.** diffusers' SD pipelines run a CLIP-based NSFW classifier on every image and black
out what it flags; it costs a second model (~1.2 GB) and, on the tiny images of a course, flags noise. We load
without it (``safety_checker=None``) and say so with a warning — keep it on (``safety_checker=True``) for
anything you publish or share with others.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import resolve_device
from .unet import check_unet

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "SAFETY_NOTE",
    "default_model",
    "load_pipeline",
    "offline",
    "pipeline_dtype",
]

#: the checkpoint chapter 10 uses when none is named (Stable Diffusion 1.5, ~4 GB in fp16)
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: environment variable that overrides :data:`DEFAULT_MODEL` (a hub id or a local folder)
MODEL_ENV = "MINIDIFF_SD_MODEL"
SAFETY_NOTE = ("minidiff.sd loads Stable Diffusion without its NSFW safety checker (safety_checker=None) to save "
               "memory in a course setting; pass safety_checker=True to keep it for images you share.")


def default_model() -> str:
    """The checkpoint to load: ``$MINIDIFF_SD_MODEL`` if set, else :data:`DEFAULT_MODEL`."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` set to 1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def pipeline_dtype(device: torch.device, dtype: torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given, else float16 on CUDA (half the memory, tensor cores) and float32 elsewhere (CPU
    half-precision kernels are slow or missing)."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (torch.float16, torch.bfloat16, torch.float32) or None, "
                        f"got {dtype!r}")
    return dtype


def _how_to_get(model: str) -> str:
    return (f"Get it once with network access: `huggingface-cli download {model}` (or `hf download {model}`), "
            f"or in Python diffusers.StableDiffusionPipeline.from_pretrained({model!r}).save_pretrained('sd'); "
            f"then point {MODEL_ENV} (or model=) at the folder. Without a checkpoint, chapter 10 runs on "
            "minidiff.sd.tiny_pipeline().")


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None, *, safety_checker: bool = False,
                  download: bool | None = None, **kwargs: Any) -> Any:
    """A diffusers ``StableDiffusionPipeline`` on ``device`` (default CPU) in ``dtype`` (fp16 on CUDA, fp32 on CPU).

    model: a hub id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``) or a folder written by
        ``save_pretrained``; default :func:`default_model`.
    safety_checker: keep the NSFW checker (default off, with a warning; see the module docstring).
    download: allow a download from the hub. Default: yes unless ``HF_HUB_OFFLINE`` is set, so a machine
        without network fails fast (:class:`FileNotFoundError` saying how to get the checkpoint) instead of hanging.
    kwargs: passed to ``from_pretrained`` (e.g. ``variant="fp16"``, ``revision=``).
    Raises ValueError when ``device`` is CUDA but no GPU is available.
    """
    from diffusers import StableDiffusionPipeline

    dev = resolve_device(device)                       # CUDA without a GPU: a ValueError that says what to do
    dtype = pipeline_dtype(dev, dtype)
    model = default_model() if model is None else model
    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise TypeError(f"model must be a hub id or a folder path (str), got {type(model).__name__} {model!r}")
    model = str(Path(model).expanduser()) if str(model).startswith("~") else str(model)
    if not isinstance(safety_checker, bool):
        raise TypeError(f"safety_checker must be True or False, got {safety_checker!r}")
    if download is None:
        download = not offline()
    is_folder = Path(model).is_dir()
    if not is_folder and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise FileNotFoundError(f"model={model!r} looks like a path but is not a folder. {_how_to_get(DEFAULT_MODEL)}")
    if not safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    local = is_folder or not download
    try:
        index = StableDiffusionPipeline.load_config(model, local_files_only=local)     # model_index.json
        pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype, local_files_only=local, **kwargs)
    except (OSError, ValueError) as err:               # LocalEntryNotFoundError, RepositoryNotFoundError are OSErrors
        where = "in the folder" if is_folder else ("in the local Hugging Face cache (downloads are off: "
                                                   "HF_HUB_OFFLINE=1 or download=False)" if not download
                                                   else "on the hub or in the cache")
        raise FileNotFoundError(f"could not load the Stable Diffusion checkpoint {model!r} {where}: "
                                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                                f"{_how_to_get(model if not is_folder else DEFAULT_MODEL)}") from err
    check_unet(pipe.unet)                              # SDXL-style U-Nets: a clear error here, not at sampling
    if not safety_checker and (index.get("safety_checker") or [None])[0] is not None:
        warnings.warn(SAFETY_NOTE, stacklevel=2)       # the checkpoint ships a checker that we dropped
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)

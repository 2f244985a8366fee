"""One training loop for every chapter: a generator of step records, with EMA and checkpoints.

``train`` yields ``{"step", "loss", "lr"}`` after each optimiser step, so a notebook can plot the
loss live or stop early without callbacks. What is learnt is decided by ``loss_fn(model, batch,
generator) -> scalar``: :func:`diffusion_loss` gives DDPM's L_simple (Alg. 1); classifiers
(chapter 4, metrics) pass a cross-entropy. Randomness (minibatches, t, ε) comes from one seeded
CPU generator, so a run is reproducible on any device.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import resolve_device, show_progress
from .forward import l_simple
from .schedules import NoiseSchedule

__all__ = ["EMA", "train", "fit", "diffusion_loss", "random_batches", "save_checkpoint", "load_checkpoint"]

Batch = Tensor | tuple[Tensor, ...]
LossFn = Callable[[nn.Module, Batch, torch.Generator], Tensor]


class EMA:
    """Exponential moving average of a model's weights, θ_ema ← d θ_ema + (1 − d) θ (DDPM App. B).

    ``ema.model`` is a frozen copy in eval mode: sample from it, not from the raw weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def random_batches(data: Batch, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """An endless stream of random minibatches (with replacement across batches) of a tensor
    (N, ...) or a tuple of tensors sharing their first dimension."""
    tensors = data if isinstance(data, tuple) else (data,)
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"all data tensors must share their first dimension, got {[t.shape[0] for t in tensors]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    while True:
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        batch = tuple(t[idx] for t in tensors)
        yield batch if isinstance(data, tuple) else batch[0]


def diffusion_loss(schedule: NoiseSchedule, p_uncond: float = 0.0, null_label: int | None = None) -> LossFn:
    """L_simple as a ``loss_fn`` (DDPM Alg. 1). A batch is x0 or (x0, labels).

    With labels, each one is replaced by ``null_label`` with probability ``p_uncond`` — the
    condition dropout that classifier-free guidance trains with (chapter 4).
    """
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    if p_uncond > 0 and null_label is None:
        raise ValueError("p_uncond > 0 needs null_label (e.g. model.class_embed.null_label)")

    def loss_fn(model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        x0, cond = (batch[0], batch[1]) if isinstance(batch, tuple) else (batch, None)
        if cond is not None and p_uncond > 0:
            drop = (torch.rand(cond.shape[0], generator=generator) < p_uncond).to(cond.device)
            cond = torch.where(drop, torch.full_like(cond, null_label), cond)
        return l_simple(model, schedule, x0, cond=cond, generator=generator)

    return loss_fn


def train(model: nn.Module, loss_fn: LossFn, data: Batch, *, steps: int, batch_size: int = 128,
          lr: float = 1e-3, weight_decay: float = 0.0, ema: EMA | None = None, grad_clip: float | None = 1.0,
          warmup: int = 0, seed: int = 0, device: str | torch.device | None = None,
          progress: bool = True, desc: str = "train") -> Iterator[dict[str, Any]]:
    """Optimise ``model`` with AdamW for ``steps`` steps; yield ``{"step", "loss", "lr"}`` after each.

    data: (N, ...) or a tuple of tensors (e.g. images and labels), kept on the CPU and moved to
    ``device`` one minibatch at a time. ``warmup`` linearly ramps the learning rate from 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dev = resolve_device(device)
    model.to(dev).train()
    if ema is not None:
        ema.model.to(dev)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batches = random_batches(data, batch_size, generator)
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not show_progress(progress), leave=False):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / warmup) if warmup else lr
        batch = _to(next(batches), dev)
        loss = loss_fn(model, batch, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model)
        yield {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"]}
    model.eval()


def fit(model: nn.Module, loss_fn: LossFn, data: Batch, **kwargs: Any) -> list[float]:
    """Run :func:`train` to the end and return the loss of every step."""
    return [record["loss"] for record in train(model, loss_fn, data, **kwargs)]


def _to(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device) for t in batch) if isinstance(batch, tuple) else batch.to(device)


def save_checkpoint(path: str | Path, model: nn.Module, ema: EMA | None = None, meta: dict | None = None) -> Path:
    """Save weights (and EMA weights) with JSON-able ``meta`` (e.g. the config that built the model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "ema": ema.model.state_dict() if ema else None,
             "meta": json.loads(json.dumps(meta or {}))}
    torch.save(state, path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module, ema: EMA | None = None) -> dict:
    """Load weights saved by :func:`save_checkpoint` into ``model`` (and ``ema``); return ``meta``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train the model first (or check the path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if ema is not None:
        if state["ema"] is None:
            raise ValueError(f"{path} holds no EMA weights")
        ema.model.load_state_dict(state["ema"])
    return state["meta"]

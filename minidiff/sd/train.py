r"""Training Stable Diffusion adapters — LoRA, DreamBooth, power steering — on one process or many (chapter 10).

The loss is chapter 2's L_simple on latents (LDM eq. 2) with per-example weights:

.. math:: \mathcal L = \frac1B\sum_{i=1}^B w_i\,\big\|\varepsilon_i - \hat\varepsilon_\theta(\sqrt{\bar\alpha_{t_i}}z_i
          + \sqrt{1-\bar\alpha_{t_i}}\varepsilon_i,\ t_i,\ c_i)\big\|^2 / d

(d = entries per latent). DreamBooth's prior preservation (Ruiz et al. 2023, eq. 2) is the case where half the
batch are instance examples (w = 1, "a sks dog") and half the frozen model's own samples of the class prompt
(w = λ, "a dog"): the batch mean is then ½(L_inst + λ L_prior), eq. 2 up to the factor ½ (a learning-rate
matter). What trains is whatever requires grad: LoRA factors (:func:`minidiff.lora.inject_lora` on
``pipe.unet``), or the side network of :class:`~minidiff.sd.SDPowerSteering`.

**Many processes, same result.** The randomness of the loss (t_i, ε_i) is drawn *per example*, from a seed and
the example's position in the stream (:class:`NoisedExamples`), not from a per-process generator. So a global
batch gives the same loss and gradient however it is split over processes, and :func:`train_sd` — a plain loop
written against Hugging Face ``accelerate`` (``prepare``, ``accumulate``, ``backward``) — runs unchanged on
one CPU, one GPU, or N GPUs with DDP, with gradient accumulation and mixed precision where the
``Accelerator`` says so. tests/test_sd_accelerate.py checks that 2 CPU processes (gloo) end with identical weights,
equal to one process with the doubled batch. On a multi-GPU machine, put the training in a script and run::

    accelerate launch --multi_gpu --num_processes 4 --mixed_precision fp16 train_lora.py

(``--gradient_accumulation_steps k`` for larger effective batches; ``accelerate config`` saves these once).
The global batch is ``batch_size × num_processes × k``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checks import check_int, check_real, check_tensor
from ..config import show_progress
from ..eps import call_eps
from ..forward import q_sample
from ..schedules import NoiseSchedule
from ..train import set_train_modes

__all__ = ["NoisedExamples", "dreambooth_examples", "train_sd", "weighted_eps_loss"]

Source = tuple[Tensor, Mapping[str, Tensor], float]


class NoisedExamples(Dataset):
    """A stream of ``num_items`` training examples ``{"z0", "t", "noise", "weight", <condition entries>}``.

    sources: ``[(latents (N, c, h, w), {"context": (N, L, D), ...}, weight), ...]``; item k comes from source
    k mod S (round robin, so every S consecutive items hold one of each), cycling through that source's rows in
    order. t ~ U{0..T−1} and ε ~ N(0, I) of item k are drawn from a generator seeded by (seed, k): they depend on
    the item only, not on which process or batch reads it.
    """

    def __init__(self, sources: Sequence[Source], schedule: NoiseSchedule, num_items: int, seed: int = 0) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule (minidiff.sd.sd_schedule(pipe)), got {type(schedule).__name__}")
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence) or not sources:
            raise ValueError("sources must be a non-empty list of (latents, {name: condition}, weight)")
        self.sources = [self._check_source(s, i) for i, s in enumerate(sources)]
        self.schedule, self.num_items = schedule, check_int(num_items, "num_items", 1)
        self.seed = check_int(seed, "seed", 0)

    @staticmethod
    def _check_source(source: Any, i: int) -> Source:
        if not isinstance(source, (tuple, list)) or len(source) != 3:
            raise ValueError(f"sources[{i}] must be (latents, {{name: condition}}, weight), got {type(source).__name__}")
        latents, cond, weight = source
        check_tensor(latents, f"sources[{i}] latents", floating=True, min_ndim=2, nonempty=True)
        if not isinstance(cond, Mapping) or any(not isinstance(v, Tensor) or v.shape[0] != latents.shape[0]
                                                 for v in cond.values()):
            raise ValueError(f"sources[{i}] condition must map names to tensors with the latents' {latents.shape[0]} rows")
        reserved = {"z0", "t", "noise", "weight"} & set(cond)
        if reserved:
            raise ValueError(f"condition names {sorted(reserved)} are reserved; rename them")
        return latents, dict(cond), check_real(weight, f"sources[{i}] weight", 0.0)

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, k: int) -> dict[str, Tensor]:
        latents, cond, weight = self.sources[k % len(self.sources)]
        row = (k // len(self.sources)) % latents.shape[0]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)   # this item's own draws
        t = torch.randint(0, self.schedule.T, (), generator=g)
        noise = torch.randn(latents.shape[1:], generator=g)
        return {"z0": latents[row], "t": t, "noise": noise.to(latents.dtype),
                "weight": torch.tensor(weight, dtype=latents.dtype), **{name: v[row] for name, v in cond.items()}}


def dreambooth_examples(instance: tuple[Tensor, Mapping[str, Tensor]], prior: tuple[Tensor, Mapping[str, Tensor]] | None,
                        schedule: NoiseSchedule, num_items: int, prior_weight: float = 1.0,
                        seed: int = 0) -> NoisedExamples:
    """DreamBooth's stream: instance latents with their prompt's condition ("a sks dog"), alternating with the frozen
    model's samples of the class prompt ("a dog") weighted λ = ``prior_weight`` (module docstring). prior=None:
    plain fine-tuning on the instances."""
    sources = [(instance[0], instance[1], 1.0)]
    if prior is not None:
        sources.append((prior[0], prior[1], check_real(prior_weight, "prior_weight (λ)", 0.0)))
    return NoisedExamples(sources, schedule, num_items, seed)


def weighted_eps_loss(model: Any, schedule: NoiseSchedule, batch: Mapping[str, Tensor]) -> Tensor:
    """The weighted ε-loss of a batch of :class:`NoisedExamples` (module docstring); the condition is every entry
    other than z0, t, noise and weight."""
    z0, t, noise, weight = batch["z0"], batch["t"], batch["noise"], batch["weight"]
    cond = {k: v for k, v in batch.items() if k not in ("z0", "t", "noise", "weight")} or None
    z_t = q_sample(schedule, z0, t, noise)                                  # DDPM eq. 4
    per_example = (noise - call_eps(model, z_t, t, cond)).pow(2).flatten(1).mean(1)
    return (weight * per_example).mean()


def train_sd(model: nn.Module, examples: NoisedExamples, *, steps: int, batch_size: int = 4, lr: float = 1e-4,
             weight_decay: float = 0.0, grad_clip: float | None = 1.0, accelerator: Any = None,
             progress: bool = True) -> Iterator[dict[str, float]]:
    """Train ``model``'s trainable parameters (an eps-model: a LoRA-injected :class:`~minidiff.sd.SDEps` or an
    :class:`~minidiff.sd.SDPowerSteering`) with AdamW on :func:`weighted_eps_loss`; yields ``{"step", "loss"}``
    per optimiser step (loss averaged over processes).

    accelerator: an ``accelerate.Accelerator`` (default ``Accelerator()``: the device, process group, mixed
    precision and gradient accumulation of the launch). Each process reads ``batch_size`` examples per micro-step,
    consecutive slices of the stream; ``examples`` must hold steps × batch_size × processes × accumulation items.
    At the end (or on an error) the model's ``forward`` is restored (mixed precision wraps it in autocast) and the
    model is left in eval mode; it stays on the accelerator's device.
    """
    from accelerate import Accelerator

    acc = Accelerator() if accelerator is None else accelerator
    steps, batch_size = check_int(steps, "steps", 1), check_int(batch_size, "batch_size", 1)
    lr, weight_decay = check_real(lr, "lr", 0.0, low_open=True), check_real(weight_decay, "weight_decay", 0.0)
    if grad_clip is not None:
        grad_clip = check_real(grad_clip, "grad_clip", 0.0, low_open=True)
    if not isinstance(examples, NoisedExamples):
        raise TypeError(f"examples must be NoisedExamples (or dreambooth_examples(...)), got {type(examples).__name__}")
    micro = steps * acc.gradient_accumulation_steps
    need = micro * batch_size * acc.num_processes
    if len(examples) < need:
        raise ValueError(f"examples has {len(examples)} items but {steps} steps x batch_size {batch_size} x "
                         f"{acc.num_processes} processes x {acc.gradient_accumulation_steps} accumulation need {need}; "
                         f"build it with num_items={need}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: inject a LoRA or use SDPowerSteering")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loader = DataLoader(examples, batch_size=batch_size, shuffle=False)
    wrapped, opt, loader = acc.prepare(model, opt, loader)
    set_train_modes(model)
    return _loop(acc, wrapped, model, opt, loader, examples.schedule, micro, grad_clip, params, progress)


def _loop(acc: Any, wrapped: nn.Module, model: nn.Module, opt: Any, loader: DataLoader, schedule: NoiseSchedule,
          micro: int, grad_clip: float | None, params: list[nn.Parameter], progress: bool) -> Iterator[dict[str, float]]:
    batches, step = iter(loader), 0
    bar = tqdm(range(micro), desc="train", disable=not (show_progress(progress) and acc.is_main_process), leave=False)
    try:
        for _ in bar:
            with acc.accumulate(wrapped):
                loss = weighted_eps_loss(wrapped, schedule, next(batches))
                acc.backward(loss)
                if acc.sync_gradients and grad_clip is not None:
                    acc.clip_grad_norm_(params, grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                step += 1
                yield {"step": step, "loss": float(acc.reduce(loss.detach(), "mean"))}
    finally:
        acc.unwrap_model(wrapped, keep_fp32_wrapper=False)   # mixed precision wrapped model.forward in autocast: undo
        model.eval()

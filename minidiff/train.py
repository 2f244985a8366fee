"""One training loop for every chapter: a generator of step records, with EMA (chapter 2 on).

``train`` yields ``{"step", "loss", "lr", ...}`` after each optimiser step, so a notebook can plot the
loss live or stop early without callbacks. What is learnt is decided by ``loss_fn(model, batch,
generator)``, which returns a scalar loss or ``(loss, {name: value})`` whose terms join the record:
:func:`diffusion_loss` gives DDPM's L_simple (Alg. 1) with condition dropout (CFG, chapter 4);
classifiers pass a cross-entropy. Randomness (minibatches, t, ε) comes from one seeded CPU generator,
so a run is reproducible on any device.

**Adapters** (chapters 6–9). Only parameters with ``requires_grad`` are optimised, optionally in named
groups with their own learning rates. A submodule whose parameters are all frozen stays in eval mode
(its dropout is off and its BatchNorm statistics do not move), so a frozen base leaves training
bit-identical. ``data`` is a dataset (tensors, sampled by :func:`random_batches`) or any stream of
batches, e.g. :func:`zip_batches` of a large source set and a small target set (TGDP, chapter 8).
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import cond as cond_ops
from .checks import check_choice, check_int, check_real
from .checkpoint import load_checkpoint, save_checkpoint
from .config import resolve_device, show_progress
from .eps import PREDICTIONS, call_eps, v_target
from .forward import l_simple, noise_like, q_sample
from .schedules import NoiseSchedule

__all__ = ["EMA", "train", "fit", "diffusion_loss", "drop_conditions", "split_batch", "random_batches", "zip_batches", "move_batch",
           "set_train_modes", "save_checkpoint", "load_checkpoint"]

Batch = Union[Tensor, tuple, Mapping[str, Any]]
LossOutput = Union[Tensor, tuple[Tensor, Mapping[str, Any]]]
LossFn = Callable[[nn.Module, Batch, torch.Generator], LossOutput]
GroupSpec = Mapping[str, Mapping[str, Any]]
_GROUP_KEYS = {"params", "lr", "weight_decay"}


# --------------------------------------------------------------------------- argument checks
def _int(value: Any, name: str, low: int) -> int:
    return check_int(value, name, low)


def _real(value: Any, name: str, low: float, high: float = math.inf, *, low_open: bool = False,
          high_open: bool = False) -> float:
    return check_real(value, name, low, None if math.isinf(high) else high, low_open=low_open, high_open=high_open)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- EMA
class EMA:
    r"""Exponential moving average of the *trainable* weights, θ_ema ← d θ_ema + (1 − d) θ (DDPM App. B).

    ``decay`` d is warmed up as in diffusers' ``EMAModel`` (``get_decay``): with n updates done so far,
    d_n = 0 for n = 0 (the first update copies the weights), else min(decay, (1 + n) / (10 + n)), so a
    short run is not dominated by the random initial weights. ``warmup=False`` uses d_n = decay.

    ``ema.model`` is a usable eval-mode copy to sample from. It is cheap: frozen parameters (a frozen
    base under an adapter) are *shared* with the trained model, not copied; only the trainable ones
    (and buffers, copied at each update) have their own storage. Parameters are matched by **name**:
    if the set of trainable parameters changes after the EMA was made (LoRA layers injected, a part
    unfrozen), :meth:`update` raises instead of averaging the wrong tensors — create the EMA after
    adapting the model. ``ema.copy_to(model)`` writes the averaged weights into the model itself.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        self.decay = _real(decay, "EMA decay", 0.0, 1.0, high_open=True)
        if not isinstance(warmup, bool):
            raise TypeError(f"warmup must be True or False, got {warmup!r}")
        self.warmup, self.num_updates = warmup, 0
        named = _trainable(model)
        if not named:
            raise ValueError("the model has no trainable parameters (requires_grad=True): nothing to average")
        self.names = tuple(n for n, _ in named)
        shared = {id(p): p for p in model.parameters() if not p.requires_grad}   # deepcopy keeps these as they are
        self.model = copy.deepcopy(model, memo=shared).eval()
        own = dict(self.model.named_parameters())
        self._shadow = [own[n].requires_grad_(False) for n in self.names]

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses: 0 if n = 0, else min(decay, (1 + n) / (10 + n))."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return 0.0 if n == 0 else min(self.decay, (1 + n) / (10 + n))

    def _match(self, model: nn.Module) -> list[Tensor]:
        """``model``'s trainable parameters in the EMA's order, checked by name and shape."""
        named = _trainable(model)
        names = tuple(n for n, _ in named)
        if names != self.names:
            new, gone = sorted(set(names) - set(self.names)), sorted(set(self.names) - set(names))
            raise ValueError(f"the model's trainable parameters changed since the EMA was created (matched by "
                             f"name): new {new[:4]}, no longer trainable {gone[:4]}. Create the EMA after "
                             "injecting adapters or freezing: ema = EMA(model)")
        for (n, p), s in zip(named, self._shadow):
            if p.shape != s.shape:
                raise ValueError(f"parameter {n!r} has shape {tuple(p.shape)} but the EMA holds {tuple(s.shape)}")
        return [p.detach() for _, p in named]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ_ema ← d θ_ema + (1 − d) θ for every trainable parameter; buffers are copied."""
        params = self._match(model)
        torch._foreach_lerp_(self._shadow, params, 1.0 - self.current_decay())
        own = dict(self.model.named_buffers())
        for name, b in model.named_buffers():
            if name in own and own[name] is not b:
                own[name].copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged weights into ``model``'s trainable parameters (matched by name)."""
        torch._foreach_copy_(self._match(model), self._shadow)
        return model

    def state_dict(self) -> dict[str, Tensor]:
        """``{name: averaged weight}`` of the trainable parameters."""
        return dict(zip(self.names, self._shadow))

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor], num_updates: int | None = None) -> None:
        """Load :meth:`state_dict`'s output (names and shapes must match); optionally set ``num_updates``."""
        if set(state) != set(self.names):
            raise ValueError(f"EMA weights do not match: expected {len(self.names)} parameters, missing "
                             f"{sorted(set(self.names) - set(state))[:4]}, unexpected {sorted(set(state) - set(self.names))[:4]}")
        for name, s in zip(self.names, self._shadow):
            if state[name].shape != s.shape:
                raise ValueError(f"EMA weight {name!r} has shape {tuple(state[name].shape)} in the checkpoint "
                                 f"but {tuple(s.shape)} in this model")
            s.copy_(state[name])
        if num_updates is not None:
            self.num_updates = _int(num_updates, "num_updates", 0)


# --------------------------------------------------------------------------- batches
def _rows(value: Any) -> int:
    if isinstance(value, Tensor) and value.ndim >= 1:
        return value.shape[0]
    if isinstance(value, Mapping) and value and all(isinstance(v, Tensor) and v.ndim >= 1 for v in value.values()):
        sizes = {v.shape[0] for v in value.values()}
        if len(sizes) == 1:
            return sizes.pop()
        raise ValueError(f"the tensors of a mapping in data must share their first dimension, got "
                         f"{ {k: v.shape[0] for k, v in value.items()} }")
    raise TypeError(f"data entries must be tensors (N, ...) or mappings of named tensors, got {type(value).__name__}")


def random_batches(data: Tensor | tuple, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """An endless stream of random minibatches (with replacement across batches) of a tensor (N, ...)
    or a tuple whose entries — tensors or mappings of tensors such as ``{"label", "context"}`` — share N."""
    batch_size = _int(batch_size, "batch_size", 1)
    entries = data if isinstance(data, tuple) else (data,)
    if not entries:
        raise ValueError("data is an empty tuple; pass x0 (N, ...) or (x0, cond, ...)")
    sizes = [_rows(e) for e in entries]
    if len(set(sizes)) != 1:
        raise ValueError(f"all data tensors must share their first dimension, got {sizes}")
    if sizes[0] == 0:
        raise ValueError("data is empty (0 examples); nothing to train on")
    return _sample_rows(data, entries, sizes[0], batch_size, generator)


def _sample_rows(data: Any, entries: tuple, n: int, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    while True:
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        batch = tuple(e[idx] if isinstance(e, Tensor) else {k: v[idx] for k, v in e.items()} for e in entries)
        yield batch if isinstance(data, tuple) else batch[0]


def zip_batches(**streams: Iterable[Batch]) -> Iterator[dict[str, Batch]]:
    """Named streams side by side: ``{"source": next(a), "target": next(b)}`` per step (TGDP trains on a
    large source set and a small target set). Stops when the first stream stops.

    Example: ``zip_batches(source=random_batches(x_src, 256, g), target=random_batches(x_tgt, 64, g))``.
    """
    if not streams:
        raise ValueError("zip_batches needs at least one named stream, e.g. zip_batches(source=..., target=...)")
    its = {name: iter(s) for name, s in streams.items()}
    return (dict(zip(its, batches)) for batches in zip(*its.values()))


def move_batch(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor in a (nested) batch — tensors, tuples, lists, mappings — to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: move_batch(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):       # a namedtuple keeps its type
        return type(batch)(*(move_batch(v, device) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_batch(v, device) for v in batch)
    return batch


def _is_dataset(data: Any) -> bool:
    return isinstance(data, Tensor) or (isinstance(data, tuple) and all(isinstance(e, (Tensor, Mapping)) for e in data))


def _stream(data: Any, batch_size: int, generator: torch.Generator, steps: int) -> Iterator[Batch]:
    """Endless batches: a dataset is sampled; an iterator is read once; an iterable is re-read per epoch."""
    if _is_dataset(data):
        return random_batches(data, batch_size, generator)
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise TypeError("data must be a tensor (N, ...), a tuple of tensors / condition mappings, or an iterable "
                        f"of batches, got {type(data).__name__}")
    return _read(data, steps)


def _read(data: Iterable, steps: int) -> Iterator[Batch]:
    once = iter(data) is data
    total = 0
    while True:
        count = 0
        for batch in data:
            count += 1
            yield batch
        total += count
        if once:
            raise ValueError(f"data (an iterator) ran out after {total} batches but steps={steps}: pass an endless "
                             "stream (random_batches, zip_batches of random_batches) or fewer steps")
        if count == 0:
            raise ValueError("data is empty: iterating it gave no batches")


# --------------------------------------------------------------------------- the diffusion loss
def split_batch(batch: Batch) -> tuple[Tensor, Any]:
    """(x0, cond) of a diffusion batch: x0 alone (cond None), (x0,) or (x0, cond)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    kind = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise ValueError(f"a diffusion batch is x0 or (x0, cond), got {kind}")


def drop_conditions(model: Any, cond: Any, p_uncond: float, null: cond_ops.NullSpec | None, keys: Sequence[str],
                    generator: torch.Generator, batch: int, loss_name: str = "diffusion_loss") -> Any:
    """Condition dropout (Ho & Salimans 2022, Alg. 1): each of the ``batch`` rows of ``cond`` is replaced by the
    null condition with probability ``p_uncond`` (:func:`minidiff.cond.drop`, only the entries in ``keys``).
    ``null`` defaults to the model's own (:func:`minidiff.cond.model_null`); one uniform draw per row from
    ``generator``, none when ``cond`` is None or ``p_uncond`` is 0."""
    if cond is None or p_uncond == 0:
        return cond
    spec = null if null is not None else cond_ops.model_null(model)
    if spec is None:
        raise ValueError(f"p_uncond={p_uncond} needs a null condition, and {type(model).__name__} has no null_cond: "
                         f"pass {loss_name}(..., null=...) (e.g. null=model.class_embed.null_label)")
    return cond_ops.drop(cond, torch.rand(batch, generator=generator) < p_uncond, spec, keys)


def diffusion_loss(schedule: NoiseSchedule, p_uncond: float = 0.0, null_label: int | None = None, *,
                   null: cond_ops.NullSpec | None = None, keys: Sequence[str] = cond_ops.NULL_KEYS,
                   prediction: str = "eps") -> LossFn:
    """L_simple as a ``loss_fn`` (DDPM Alg. 1). A batch is x0 or (x0, cond); cond a label tensor or a mapping.

    ``prediction`` says what the network outputs and is regressed on, with the same (t, ε) draws: ``"eps"``
    (the noise, DDPM eq. 14), ``"x0"`` (the clean data) or ``"v"`` (the velocity √ᾱ ε − √(1−ᾱ) x_0, Salimans & Ho
    2022, App. D; :func:`minidiff.eps.v_target`). Sample an x0- or v-model through
    :class:`minidiff.eps.PredictionEps`, which turns it into an eps-model.

    With probability ``p_uncond`` each example's condition is replaced by the null condition (the
    condition dropout classifier-free guidance trains with, Ho & Salimans 2022 Alg. 1) through
    :func:`minidiff.cond.drop`: for a mapping only the entries in ``keys`` are nulled. ``null``
    defaults to the model's own ``null_cond`` (:func:`minidiff.cond.model_null`), read at call time;
    ``null_label=`` is the older spelling of ``null=``.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    p_uncond = _real(p_uncond, "p_uncond", 0.0, 1.0)
    if null is not None and null_label is not None:
        raise ValueError("pass the null condition once: null= (null_label= is its older spelling)")
    null = null if null is not None else null_label
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"keys must be a sequence of condition names, e.g. ('label', 'context'), got {keys!r}")
    prediction = check_choice(prediction, "prediction", PREDICTIONS)

    def loss_fn(model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        x0, cond = split_batch(batch)
        cond = drop_conditions(model, cond, p_uncond, null, keys, generator, x0.shape[0])
        if prediction == "eps":
            return l_simple(model, schedule, x0, cond=cond, generator=generator)
        return _regression_loss(model, schedule, x0, cond, generator, prediction)

    return loss_fn


def _regression_loss(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, cond: Any, generator: torch.Generator,
                     prediction: str) -> Tensor:
    """‖target − model(x_t, t)‖² averaged, target x_0 or v; t and ε drawn in :func:`l_simple`'s order, so a
    v-model and an ε-model trained with one seed see the very same (x_0, t, ε)."""
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator).to(x0.device)
    noise = noise_like(x0, None, generator)
    x_t = q_sample(schedule, x0, t, noise)
    target = x0 if prediction == "x0" else v_target(x0, noise, schedule.gather(schedule.alpha_bar, t, x0))
    return (target - call_eps(model, x_t, t, cond)).pow(2).mean()


# --------------------------------------------------------------------------- the loop
def set_train_modes(model: nn.Module) -> nn.Module:
    """Train mode for modules with a trainable parameter, eval mode for those whose parameters are all
    frozen; a module without parameters (dropout, activations) follows its parent."""
    def visit(module: nn.Module, parent_frozen: bool) -> None:
        params = list(module.parameters())
        frozen = not any(p.requires_grad for p in params) if params else parent_frozen
        module.training = not frozen
        for child in module.children():
            visit(child, frozen)
    visit(model, False)
    return model


def _groups(model: nn.Module, spec: GroupSpec | None, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser groups over the trainable parameters: the named ones of ``spec``, the rest in a default group."""
    named = _trainable(model)
    if not named:
        raise ValueError("the model has no trainable parameters (all requires_grad=False): nothing to train")
    if spec is None:
        return [{"params": [p for _, p in named], "lr": lr, "weight_decay": weight_decay, "name": None}]
    if not isinstance(spec, Mapping):
        raise TypeError("param_groups must map group names to {'params': parameters or a predicate on "
                        f"parameter names, 'lr': ..., 'weight_decay': ...}}, got {type(spec).__name__}")
    trainable = {id(p): n for n, p in named}
    frozen = {id(p): n for n, p in model.named_parameters() if not p.requires_grad}
    owner: dict[str, str] = {}
    groups = []
    for gname, opts in spec.items():
        if not isinstance(gname, str) or not isinstance(opts, Mapping) or "params" not in opts:
            raise TypeError(f"param_groups[{gname!r}] must be a mapping with 'params' (and optionally 'lr', "
                            f"'weight_decay'), got {opts!r}")
        unknown = set(opts) - _GROUP_KEYS
        if unknown:
            raise ValueError(f"param_groups[{gname!r}] has unknown options {sorted(unknown)}; allowed: {sorted(_GROUP_KEYS)}")
        sel = opts["params"]
        if callable(sel):
            names = [n for n, _ in named if sel(n)]
        elif isinstance(sel, (Tensor, str)) or not isinstance(sel, Iterable):
            raise TypeError(f"param_groups[{gname!r}]['params'] must be an iterable of parameters or a predicate "
                            f"name -> bool, got {type(sel).__name__}")
        else:
            names = []
            for p in sel:
                if id(p) in frozen:
                    raise ValueError(f"param_groups[{gname!r}] lists the frozen parameter {frozen[id(p)]!r}: "
                                     "unfreeze it (requires_grad_(True)) or leave it out")
                if id(p) not in trainable:
                    raise ValueError(f"param_groups[{gname!r}] lists a parameter that is not in the model")
                names.append(trainable[id(p)])
        if not names:
            raise ValueError(f"param_groups[{gname!r}] matches no trainable parameter of the model")
        for n in names:
            if n in owner:
                raise ValueError(f"parameter {n!r} is in two groups: {owner[n]!r} and {gname!r}")
            owner[n] = gname
        groups.append({"params": [p for n, p in named if owner.get(n) == gname], "name": gname,
                       "lr": _real(opts.get("lr", lr), f"param_groups[{gname!r}]['lr']", 0.0, low_open=True),
                       "weight_decay": _real(opts.get("weight_decay", weight_decay),
                                             f"param_groups[{gname!r}]['weight_decay']", 0.0)})
    rest = [p for n, p in named if n not in owner]
    return groups + ([{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": None}] if rest else [])


def _split_loss(out: Any, step: int) -> tuple[Tensor, dict[str, float]]:
    """``loss`` or ``(loss, {name: value})`` -> (scalar loss tensor, {name: float})."""
    loss, terms = (out[0], out[1]) if isinstance(out, tuple) and len(out) == 2 else (out, {})
    if not isinstance(loss, Tensor) or not isinstance(terms, Mapping):
        raise TypeError(f"loss_fn must return a scalar tensor or (loss, {{name: value}}), got {type(out).__name__} "
                        f"at step {step}")
    if loss.ndim != 0:
        raise ValueError(f"loss_fn returned a loss of shape {tuple(loss.shape)} at step {step}; reduce it to a "
                         "scalar (e.g. .mean())")
    if not loss.requires_grad:
        raise ValueError(f"the loss at step {step} does not depend on any trainable parameter")
    values = {}
    for name, v in terms.items():
        if not isinstance(name, str) or name in ("step", "loss", "lr") or name.startswith("lr/"):
            raise ValueError(f"loss term names must be str other than 'step', 'loss', 'lr', got {name!r}")
        if isinstance(v, Tensor) and v.numel() != 1 or not isinstance(v, (Tensor, numbers.Real)):
            raise ValueError(f"loss term {name!r} must be a number or a one-element tensor at step {step}, got "
                             f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
        values[name] = float(v.detach()) if isinstance(v, Tensor) else float(v)
    return loss, values


def train(model: nn.Module, loss_fn: LossFn, data: Any, *, steps: int, batch_size: int = 128,
          lr: float = 1e-3, weight_decay: float = 0.0, ema: EMA | None = None, grad_clip: float | None = 1.0,
          warmup: int = 0, seed: int = 0, device: str | torch.device | None = None,
          progress: bool = True, desc: str = "train", param_groups: GroupSpec | None = None) -> Iterator[dict[str, Any]]:
    """Optimise the trainable parameters of ``model`` with AdamW for ``steps`` steps; yield a record per step.

    data: a dataset — a tensor (N, ...) or a tuple of tensors / condition mappings sharing N, kept where it
        is and moved to ``device`` one minibatch of ``batch_size`` at a time — or any iterable of batches
        (an iterator is read once; a list or DataLoader is re-read each epoch; ``batch_size`` is unused).
    loss_fn(model, batch, generator) -> loss or (loss, {name: value}); terms join the records and tqdm.
    param_groups: ``{"lora": {"params": [...] or (lambda name: "lora" in name), "lr": 1e-3}, ...}``;
        trainable parameters in no group use ``lr`` and ``weight_decay``. Frozen ones are never touched.
    warmup: steps over which every group's learning rate ramps linearly from 0. grad_clip: max global
        gradient norm (None: no clipping).
    Records: ``{"step", "loss", "lr"}`` (+ ``"lr/<group>"`` per named group, + the loss terms). Errors
    in the arguments are raised here, before the first step; the model is left in eval mode.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (model, batch, generator) -> loss, got {type(loss_fn).__name__}")
    steps, warmup, seed = _int(steps, "steps", 1), _int(warmup, "warmup", 0), _int(seed, "seed", 0)
    batch_size = _int(batch_size, "batch_size", 1)
    lr = _real(lr, "lr", 0.0, low_open=True)
    weight_decay = _real(weight_decay, "weight_decay", 0.0)
    if grad_clip is not None:
        grad_clip = _real(grad_clip, "grad_clip", 0.0, low_open=True)
    if ema is not None and not isinstance(ema, EMA):
        raise TypeError(f"ema must be a minidiff.EMA or None, got {type(ema).__name__}")
    if ema is not None:
        ema._match(model)
    groups = _groups(model, param_groups, lr, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    batches = _stream(data, batch_size, generator, steps)
    return _loop(model, loss_fn, batches, groups, generator, steps=steps, lr=lr, ema=ema, grad_clip=grad_clip,
                 warmup=warmup, device=resolve_device(device), progress=show_progress(progress), desc=desc)


def _loop(model: nn.Module, loss_fn: LossFn, batches: Iterator[Batch], groups: list[dict], generator: torch.Generator,
          *, steps: int, lr: float, ema: EMA | None, grad_clip: float | None, warmup: int, device: torch.device,
          progress: bool, desc: str) -> Iterator[dict[str, Any]]:
    model.to(device)
    if ema is not None:
        ema.model.to(device)
    opt = torch.optim.AdamW(groups, lr=lr)
    base_lrs = [g["lr"] for g in opt.param_groups]
    params = [p for g in groups for p in g["params"]]
    set_train_modes(model)
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    try:
        for step in bar:
            factor = min(1.0, step / warmup) if warmup else 1.0
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * factor
            loss, terms = _split_loss(loss_fn(model, move_batch(next(batches), device), generator), step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            value = loss.item()
            if not math.isfinite(value):
                raise ValueError(f"the loss is {value} at step {step}; nothing was updated at this step. Lower lr, "
                                 "raise warmup or check the data for NaN/inf")
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            if ema is not None:
                ema.update(model)
            record = {"step": step, "loss": value, "lr": lr * factor,
                      **{f"lr/{g['name']}": g["lr"] for g in opt.param_groups if g["name"] is not None}, **terms}
            if progress:
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"}, refresh=False)
            yield record
    finally:
        model.eval()


def fit(model: nn.Module, loss_fn: LossFn, data: Any, **kwargs: Any) -> list[float]:
    """Run :func:`train` to the end and return the loss of every step."""
    return [record["loss"] for record in train(model, loss_fn, data, **kwargs)]

r"""Conditioning as data (chapter 4 on): what a ``cond`` is and the batch operations on it.

An eps-model's third argument ``cond`` is one of

* ``None`` — an unconditional call;
* a tensor whose first dimension is the batch — class labels (B,), or prompt embeddings (B, L, D);
* a mapping of named tensors, each with the batch first, e.g. ``{"label": (B,), "context": (B, L, D)
  token features for cross-attention, "c_add": (B, C, H, W) an extra condition}``.

Every wrapper that touches a condition (classifier-free guidance doubles the batch, the ELBO repeats
it per timestep, training drops it, a sampler moves it to the device) does so through this module,
so a new kind of condition never needs a new code path.

**Null conditions.** Classifier-free guidance (Ho & Salimans 2022) needs ε(x, t, ∅), and its training
(Alg. 1) replaces the condition by ∅ with probability p_uncond. What ∅ *is* belongs to the model:
a learned null token for labels (:class:`~minidiff.nets.ClassEmbedding`), the empty prompt's
embedding for text. A *null spec* says it:

* for a tensor ``cond``: an int/float (fills the tensor) or a tensor shaped like one row
  (``cond.shape[1:]``, optionally with a leading 1) that is broadcast over the batch;
* for a mapping ``cond``: a mapping ``{key: int | float | tensor}`` of the same kinds. Only the
  entries named in ``keys`` (default :data:`NULL_KEYS`: the label and the context) are nulled; the
  others — e.g. power steering's ``c_add`` — pass through untouched. A plain int/float/tensor spec
  given for a mapping ``cond`` means ``{"label": spec}``.

Models announce their spec as ``model.null_cond`` (see :func:`model_null`); wrappers forward it.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence, Union

import torch
from torch import Tensor

from .checks import check_int

__all__ = ["Cond", "NullSpec", "NULL_KEYS", "check_cond", "batch_size", "cat", "repeat", "index",
           "to", "null_like", "drop", "model_null", "is_cond"]

Cond = Union[None, Tensor, Mapping[str, Tensor]]
NullSpec = Union[int, float, Tensor, Mapping[str, Union[int, float, Tensor]]]

#: entries of a mapping condition that guidance and condition dropout null by default
NULL_KEYS: tuple[str, ...] = ("label", "context")


def is_cond(cond: Any) -> bool:
    """True for the three kinds of condition: None, a tensor, a mapping of str -> tensor."""
    if cond is None or isinstance(cond, Tensor):
        return True
    return isinstance(cond, Mapping) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in cond.items())


def check_cond(cond: Any, batch: int | None = None, name: str = "cond") -> Cond:
    """Validate a condition and return it (a mapping as a plain dict).

    Every tensor must be batched (ndim >= 1) with the same first dimension, equal to ``batch`` if given.
    """
    if not is_cond(cond):
        kind = type(cond).__name__
        if isinstance(cond, Mapping):
            bad = {k: type(v).__name__ for k, v in cond.items() if not (isinstance(k, str) and isinstance(v, Tensor))}
            raise TypeError(f"{name} must map names (str) to tensors, got {bad}")
        raise TypeError(f"{name} must be None, a tensor (B, ...) or a mapping of names to tensors, got {kind}")
    if cond is None:
        return None
    items = {"": cond} if isinstance(cond, Tensor) else dict(cond)
    if not items:
        raise ValueError(f"{name} is an empty mapping; pass None for an unconditional call")
    for key, value in items.items():
        label = name if key == "" else f"{name}[{key!r}]"
        if value.ndim == 0:
            raise ValueError(f"{label} must be batched, shape (B, ...), got a 0-d tensor; "
                             "use value.expand(B) to give every example the same condition")
        want = batch if batch is not None else next(iter(items.values())).shape[0]
        if value.shape[0] != want:
            sizes = {k or name: tuple(v.shape) for k, v in items.items()}
            raise ValueError(f"{label} has batch size {value.shape[0]}, expected {want} "
                             f"(every condition tensor needs the batch first; got shapes {sizes})")
    return cond if isinstance(cond, Tensor) else items


def batch_size(cond: Cond) -> int | None:
    """The batch size B of a condition (None for ``None``)."""
    cond = check_cond(cond)
    if cond is None:
        return None
    first = cond if isinstance(cond, Tensor) else next(iter(cond.values()))
    return first.shape[0]


def _map(cond: Cond, fn) -> Cond:
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return fn(cond)
    return {k: fn(v) for k, v in cond.items()}


def cat(conds: Sequence[Cond]) -> Cond:
    """Concatenate conditions along the batch: [(B1, ...), (B2, ...)] -> (B1 + B2, ...). All must be
    of one kind (all None, all tensors, or mappings with the same keys)."""
    conds = [check_cond(c, name=f"conds[{i}]") for i, c in enumerate(conds)]
    if not conds:
        raise ValueError("cat needs at least one condition")
    if all(c is None for c in conds):
        return None
    if all(isinstance(c, Tensor) for c in conds):
        return torch.cat(conds)
    if all(isinstance(c, dict) for c in conds):
        keys = list(conds[0])
        if any(set(c) != set(keys) for c in conds):
            raise ValueError(f"cannot concatenate mappings with different keys: {[sorted(c) for c in conds]}")
        return {k: torch.cat([c[k] for c in conds]) for k in keys}
    raise TypeError(f"cannot concatenate conditions of different kinds: {[type(c).__name__ for c in conds]}")


def repeat(cond: Cond, k: int) -> Cond:
    """k copies stacked along the batch, block by block like ``x.repeat(k, 1, ...)``: row j·B + b is row b."""
    check_int(k, "k (number of copies)", 1)
    return _map(check_cond(cond), lambda v: v.repeat(k, *([1] * (v.ndim - 1))))


def index(cond: Cond, idx: Tensor | slice | Sequence[int]) -> Cond:
    """Select rows: a boolean mask (B,), integer indices, or a slice -> the same kind of condition."""
    return _map(check_cond(cond), lambda v: v[idx])


def to(cond: Cond, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Cond:
    """Move every tensor to ``device``; ``dtype`` converts floating tensors only (labels stay integers)."""
    def move(v: Tensor) -> Tensor:
        return v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
    return _map(check_cond(cond), move)


def _null_value(value: Tensor, spec: Any, label: str) -> Tensor:
    """A null tensor shaped like ``value`` (B, ...) from a scalar or a one-row tensor spec."""
    if isinstance(spec, Tensor):
        row = tuple(value.shape[1:])
        if tuple(spec.shape) == row:
            spec = spec[None]
        if spec.ndim != value.ndim or spec.shape[0] not in (1, value.shape[0]) or tuple(spec.shape[1:]) != row:
            raise ValueError(f"the null value for {label} must have shape {row} or (1, {', '.join(map(str, row))})"
                             f" to match the condition {tuple(value.shape)}, got {tuple(spec.shape)}")
        return spec.to(device=value.device, dtype=value.dtype).expand_as(value)
    if isinstance(spec, bool) or not isinstance(spec, numbers.Number):
        raise TypeError(f"the null value for {label} must be an int, a float or a tensor, got {type(spec).__name__}")
    return torch.full_like(value, spec)


def _spec_for(cond: Mapping[str, Tensor], null: NullSpec, keys: Sequence[str]) -> dict[str, Any]:
    spec = dict(null) if isinstance(null, Mapping) else {"label": null}
    missing = [k for k in keys if k in cond and k not in spec]
    if missing:
        raise ValueError(f"no null value for cond entries {missing}: pass null={{{', '.join(repr(k) + ': …' for k in missing)}}} "
                         "(e.g. the empty prompt's embedding for 'context'), or leave them out of keys="
                         f"{tuple(keys)}")
    return spec


def null_like(cond: Cond, null: NullSpec, keys: Sequence[str] = NULL_KEYS) -> Cond:
    """The null condition for every row of ``cond`` (entries outside ``keys`` are kept as they are)."""
    cond = check_cond(cond)
    if cond is None:
        raise ValueError("there is no null of an unconditional call (cond=None)")
    if isinstance(cond, Tensor):
        if isinstance(null, Mapping):
            raise TypeError("cond is a plain tensor, so its null must be an int, a float or a tensor, "
                            f"got a mapping with keys {sorted(null)}")
        return _null_value(cond, null, "cond")
    spec = _spec_for(cond, null, keys)
    return {k: _null_value(v, spec[k], f"cond[{k!r}]") if k in keys else v for k, v in cond.items()}


def drop(cond: Cond, mask: Tensor, null: NullSpec, keys: Sequence[str] = NULL_KEYS) -> Cond:
    """Replace the rows where ``mask`` (B,) bool is True by the null condition (condition dropout,
    CFG Alg. 1); other rows, and entries outside ``keys``, are unchanged."""
    cond = check_cond(cond)
    if cond is None:
        return None
    b = batch_size(cond)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (b,):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape (B,)=({b},), got {got}")
    nulled = null_like(cond, null, keys)

    def pick(v: Tensor, n: Tensor) -> Tensor:
        m = mask.to(v.device).reshape(-1, *([1] * (v.ndim - 1)))
        return torch.where(m, n, v)
    if isinstance(cond, Tensor):
        return pick(cond, nulled)
    return {k: pick(v, nulled[k]) for k, v in cond.items()}


def model_null(model: Any) -> NullSpec | None:
    """The null spec a model announces as ``model.null_cond`` (None if it has none).

    minidiff's nets give their learned null label; wrappers (guidance, :class:`~minidiff.sde.ContinuousTime`,
    adapters) forward the spec of the model they wrap.
    """
    return getattr(model, "null_cond", None)

r"""Why low rank works (chapter 6): the singular values of a fine-tuning update ΔW = W_tuned − W₀.

Hu et al. (2021, Sec. 7) measure that the update full fine-tuning makes has a small "intrinsic rank": most of
its energy sits in a few singular directions. With the SVD ΔW = Σ_i σ_i u_i v_iᵀ (σ₁ ≥ σ₂ ≥ …), the best
rank-r approximation in Frobenius norm is the truncated sum ΔW_r = Σ_{i≤r} σ_i u_i v_iᵀ (Eckart–Young), and

.. math:: \frac{\|\Delta W - \Delta W_r\|_F^2}{\|\Delta W\|_F^2} = 1 - \frac{\sum_{i\le r}\sigma_i^2}{\sum_i \sigma_i^2},

so :func:`energy_share` — the share of ‖ΔW‖²_F in the top r singular values — says how much of the update
a rank-r LoRA could at best reproduce. :func:`weight_deltas` reads ΔW layer by layer from two models with
the same layers (a LoRA layer counts with its effective weight W₀ + Σ s (α/r) B A).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_int, check_tensor
from .inject import Target, find_targets
from .layers import LoRALayer

__all__ = ["best_rank_r", "effective_weight", "energy_share", "weight_deltas"]


def effective_weight(module: nn.Module) -> Tensor:
    """The weight a Linear/Conv2d computes with, flattened to (d, k): a LoRA layer's W₀ + Σ_n s_n (α_n/r_n) B_n A_n
    (its W₀ alone when merged, since merging already folded the update in)."""
    if isinstance(module, LoRALayer):
        w = module.base.weight.detach()
        if not module.merged:
            w = w + sum((module.delta_weight(n).detach() for n in module.adapters), torch.zeros_like(w))
    elif isinstance(module, (nn.Linear, nn.Conv2d)):
        w = module.weight.detach()
    else:
        raise TypeError(f"expected an nn.Linear, nn.Conv2d or LoRA layer, got {type(module).__name__}")
    return w.flatten(1)


def weight_deltas(base: nn.Module, tuned: nn.Module, target: Target) -> dict[str, Tensor]:
    """``{path: ΔW (d, k)}`` = tuned − base weight of every layer ``target`` selects (names or patterns, as
    :func:`~minidiff.lora.inject_lora`); the two models must have these layers with the same shapes."""
    if not isinstance(base, nn.Module) or not isinstance(tuned, nn.Module):
        raise TypeError(f"base and tuned must be nn.Modules, got {type(base).__name__} and {type(tuned).__name__}")
    deltas = {}
    for path in find_targets(base, target):
        try:
            other = tuned.get_submodule(path)
        except AttributeError:
            raise ValueError(f"tuned has no layer {path!r}: pass two copies of the same network") from None
        w0, w1 = effective_weight(base.get_submodule(path)), effective_weight(other)
        if w0.shape != w1.shape:
            raise ValueError(f"layer {path!r} has weight {tuple(w0.shape)} in base but {tuple(w1.shape)} in tuned")
        deltas[path] = (w1 - w0).to(w0.device)
    return deltas


def _check_matrix(delta: Tensor, r: int) -> tuple[Tensor, int]:
    check_tensor(delta, "delta (ΔW)", floating=True)
    if delta.ndim != 2 or 0 in delta.shape:
        raise ValueError(f"delta (ΔW) must be a non-empty (d, k) matrix (flatten conv kernels with .flatten(1)), "
                         f"got shape {tuple(delta.shape)}")
    r = check_int(r, "r (rank)", 1, min(delta.shape), hint=f" (r <= min(d, k) for a {tuple(delta.shape)} matrix)")
    return delta, r


def energy_share(delta: Tensor, r: int) -> float:
    """Σ_{i≤r} σ_i² / Σ_i σ_i² of ΔW (d, k): the share of ‖ΔW‖²_F its best rank-r approximation keeps (module
    docstring, Eckart–Young). NaN for ΔW = 0 (no update, no direction)."""
    delta, r = _check_matrix(delta, r)
    s2 = torch.linalg.svdvals(delta.double()).square()
    total = s2.sum()
    return float(s2[:r].sum() / total) if total > 0 else float("nan")


def best_rank_r(delta: Tensor, r: int) -> Tensor:
    """ΔW_r = Σ_{i≤r} σ_i u_i v_iᵀ (d, k): the best rank-r approximation of ΔW (d, k) in Frobenius norm."""
    delta, r = _check_matrix(delta, r)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]

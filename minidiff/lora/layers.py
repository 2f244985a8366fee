r"""LoRA layers (chapter 6): a frozen ``nn.Linear`` / ``nn.Conv2d`` plus named low-rank updates.

LoRA (Hu et al. 2021, eq. 3) freezes a pretrained weight W₀ ∈ ℝ^{d×k} and learns its update as a
product of two thin matrices:

.. math:: h = W_0 x + \Delta W x = W_0 x + \tfrac{\alpha}{r} B A x,
   \qquad B \in \mathbb R^{d\times r},\; A \in \mathbb R^{r\times k},\; r \ll \min(d, k).

A starts like an ``nn.Linear`` weight (Kaiming-uniform, bound 1/√k, as in Hu et al.'s ``loralib`` and
peft) and B at zero, so ΔW = BA = 0 and the adapted model starts *equal* to the base (Sec. 4.1). Only
r(d + k) numbers are trained instead of dk. α/r is Hu et al.'s scaling (Sec. 4.1: "we then scale ΔWx by
α/r ... we simply set α to the first r we try and do not tune it"): it keeps the size of the update
roughly independent of r, so the learning rate need not be re-tuned when r changes.

For a k_h×k_w convolution (c_in -> c_out) the same update is a rank-r factorisation of the flattened
kernel: A is a conv c_in -> r with the base's kernel, stride, padding and dilation, B a 1×1 conv
r -> c_out, so k = c_in·k_h·k_w and ΔW[o, i, :, :] = Σ_j B[o, j] A[j, i, :, :] (peft's ``Conv2d``).

**Adapter arithmetic.** A layer holds any number of *named* adapters, each with its own r, α and a
run-time ``scale`` s (diffusers' ``set_adapters`` weights); the layer computes

.. math:: h = W_0 x + \sum_{n} s_n \tfrac{\alpha_n}{r_n} B_n A_n x ,

so s = 0 switches an adapter off, s = −1 subtracts it and a slider is applied with any real s.

**Merging** folds the update into the base weight, W₀ ← W₀ + Σ s_n (α_n/r_n) B_n A_n (Hu et al.
Sec. 4.1: "no additional inference latency"); ``unmerge`` subtracts the same update again. Both refuse
to run twice in a row, and scales cannot change while merged (the unmerge would subtract the wrong ΔW).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_real

__all__ = ["SUPPORTED", "LoRAConv2d", "LoRALayer", "LoRALinear", "wrap"]


def _check_name(name: Any) -> str:
    """Adapter names become state-dict keys and ParameterDict attributes: identifiers that are not
    ParameterDict methods (``keys``, ``copy``, …)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"adapter name must be a Python identifier (no '.' or spaces), e.g. 'default' or 'star', "
                         f"got {name!r}")
    if hasattr(nn.ParameterDict, name) or hasattr(nn.ModuleDict, name):
        raise ValueError(f"adapter name {name!r} is reserved (a ParameterDict method); pick another, "
                         f"e.g. '{name}_lora'")
    return name


class LoRALayer(nn.Module):
    """Common part of :class:`LoRALinear` and :class:`LoRAConv2d`: the frozen ``base`` and the adapters.

    Parameters: ``lora_A[name]`` (r, k) — (r, c_in, k_h, k_w) for a conv — and ``lora_B[name]`` (d, r).
    Per adapter: ``r[name]``, ``alpha[name]``, ``scale[name]`` (run time, default 1) and a dropout on the
    input of A (Hu et al. apply dropout to the LoRA branch only). ``base`` keeps its own module, so
    :func:`~minidiff.lora.remove_lora` can put it back untouched.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)             # W₀ is frozen (Hu et al. Sec. 4.1)
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scale: dict[str, float] = {}
        self.merged_scales: dict[str, float] | None = None   # the scales folded into W₀, or None
        self.disabled = False                                # True: the base alone (see lora_disabled)

    # ------------------------------------------------------------------ shapes (subclasses)
    @property
    def d(self) -> int:
        """Output width d of W₀ (out_features / out_channels)."""
        raise NotImplementedError

    @property
    def k(self) -> int:
        """Input width k of the flattened W₀ (in_features / c_in·k_h·k_w)."""
        raise NotImplementedError

    def _a_shape(self, r: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _lora_branch(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """B A x for one adapter (without the scaling)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the adapters on this layer, in the order they were added."""
        return tuple(self.r)

    @property
    def merged(self) -> bool:
        return self.merged_scales is not None

    def scaling(self, name: str) -> float:
        """s · α / r of one adapter: the factor in front of B A x."""
        self._check_adapter(name)
        return self.scale[name] * self.alpha[name] / self.r[name]

    def add_adapter(self, name: str = "default", r: int = 4, alpha: float | None = None, dropout: float = 0.0,
                    *, generator: torch.Generator | None = None) -> None:
        """Add a rank-``r`` adapter: A Kaiming-uniform (bound 1/√k, from ``generator``), B = 0.

        r: an int in [1, min(d, k)]. alpha: > 0, default r (so α/r = 1). dropout: in [0, 1).
        """
        name = _check_name(name)
        if name in self.r:
            raise ValueError(f"this layer already has an adapter named {name!r} (adapters: {list(self.r)}); "
                             "pick another name or remove it first (remove_lora(model, name))")
        if self.merged:
            raise RuntimeError("cannot add an adapter to a merged layer: unmerge() first")
        r = check_int(r, "r (LoRA rank)", 1, min(self.d, self.k),
                      hint=f" (r <= min(d, k) for a layer with d={self.d} outputs and k={self.k} inputs)")
        alpha = float(r) if alpha is None else check_real(alpha, "alpha (LoRA scaling α)", 0.0, low_open=True)
        dropout = check_real(dropout, "dropout", 0.0, 1.0, high_open=True)
        w = self.base.weight
        a = torch.empty(self._a_shape(r), device=w.device, dtype=w.dtype)
        # A like an nn.Linear weight (Kaiming-uniform, a = √5: bound 1/√k), as loralib and peft do
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A[name] = nn.Parameter(a)
        self.lora_B[name] = nn.Parameter(torch.zeros(self.d, r, device=w.device, dtype=w.dtype))  # ΔW = 0 at start
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r[name], self.alpha[name], self.scale[name] = r, alpha, 1.0

    def remove_adapter(self, name: str) -> None:
        """Delete one adapter (unmerge first if the layer is merged)."""
        self._check_adapter(name)
        if self.merged:
            raise RuntimeError("cannot remove an adapter from a merged layer: unmerge() first")
        for table in (self.lora_A, self.lora_B, self.lora_dropout):
            del table[name]
        for table in (self.r, self.alpha, self.scale):
            del table[name]

    def set_scale(self, name: str, scale: float) -> None:
        """Set the run-time scale s of one adapter (any finite real; 0 switches it off)."""
        self._check_adapter(name)
        scale = check_real(scale, f"scale of adapter {name!r}")
        if self.merged:
            raise RuntimeError(f"cannot change the scale of {name!r} while the layer is merged: unmerge() first")
        self.scale[name] = scale

    def _check_adapter(self, name: str) -> None:
        if name not in self.r:
            raise KeyError(f"no adapter named {name!r} on this layer; it has {list(self.r)}")

    # ------------------------------------------------------------------ ΔW and merging
    def delta_weight(self, name: str) -> Tensor:
        """ΔW = s (α/r) B A of one adapter, shaped like the base weight: (d, k) or (c_out, c_in, k_h, k_w)."""
        a, b = self.lora_A[name], self.lora_B[name]
        delta = b @ a.flatten(1)                                   # (d, r) @ (r, k): the rank-r product BA
        return self.scaling(name) * delta.reshape(self.base.weight.shape)

    @torch.no_grad()
    def merge(self) -> None:
        """W₀ ← W₀ + Σ_n s_n (α_n/r_n) B_n A_n; the forward pass then costs what the base layer costs."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; merging twice would add ΔW twice "
                               "(call unmerge() first)")
        for name in self.r:
            self.base.weight += self.delta_weight(name)
        self.merged_scales = dict(self.scale)

    @torch.no_grad()
    def unmerge(self) -> None:
        """W₀ ← W₀ − Σ_n s_n (α_n/r_n) B_n A_n with the scales used by :meth:`merge`."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged: there is nothing to unmerge")
        for name in self.r:
            self.base.weight -= self.delta_weight(name)
        self.merged_scales = None

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """h = W₀x + Σ_n s_n (α_n/r_n) B_n A_n dropout(x)  (Hu et al. eq. 3); the base alone when merged/disabled."""
        h = self.base(x)
        if self.merged or self.disabled:
            return h
        for name in self.r:
            s = self.scaling(name)
            if s != 0.0:
                h = h + s * self._lora_branch(self.lora_dropout[name](x), self.lora_A[name], self.lora_B[name])
        return h

    def extra_repr(self) -> str:
        parts = [f"{n}: r={self.r[n]}, alpha={self.alpha[n]:g}, scale={self.scale[n]:g}" for n in self.r]
        return f"adapters=[{'; '.join(parts)}], merged={self.merged}"


class LoRALinear(LoRALayer):
    """``nn.Linear`` W₀ (d = out_features, k = in_features) + LoRA. x: (..., k) -> (..., d).

    ``LoRALinear(base, r, alpha, dropout)`` wraps ``base`` with one adapter named ``name``; more are added
    with :meth:`add_adapter`.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float | None = None, dropout: float = 0.0, *,
                 name: str = "default", generator: torch.Generator | None = None) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__(base)
        self.add_adapter(name, r, alpha, dropout, generator=generator)

    @property
    def d(self) -> int:
        return self.base.out_features

    @property
    def k(self) -> int:
        return self.base.in_features

    def _a_shape(self, r: int) -> tuple[int, ...]:
        return (r, self.k)

    def _lora_branch(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return F.linear(F.linear(x, a), b)                         # (x Aᵀ) Bᵀ = (B A x)ᵀ row by row


class LoRAConv2d(LoRALayer):
    """``nn.Conv2d`` W₀ (c_out, c_in, k_h, k_w) + LoRA; d = c_out, k = c_in·k_h·k_w.

    x: (B, c_in, H, W) -> (B, c_out, H', W').

    A is a conv c_in -> r with the base's kernel, stride, padding and dilation; B a 1×1 conv r -> c_out.
    Grouped convolutions are refused (their weight is not one d×k matrix).
    """

    def __init__(self, base: nn.Conv2d, r: int = 4, alpha: float | None = None, dropout: float = 0.0, *,
                 name: str = "default", generator: torch.Generator | None = None) -> None:
        if not isinstance(base, nn.Conv2d):
            raise TypeError(f"LoRAConv2d wraps an nn.Conv2d, got {type(base).__name__}")
        if base.groups != 1:
            raise ValueError(f"LoRAConv2d needs groups=1, got a conv with groups={base.groups}: a grouped kernel "
                             "is not one d×k matrix; leave this layer out of the targets")
        if base.padding_mode != "zeros":
            raise ValueError(f"LoRAConv2d supports padding_mode='zeros', got {base.padding_mode!r}")
        super().__init__(base)
        self.add_adapter(name, r, alpha, dropout, generator=generator)

    @property
    def d(self) -> int:
        return self.base.out_channels

    @property
    def k(self) -> int:
        kh, kw = self.base.kernel_size
        return self.base.in_channels * kh * kw

    def _a_shape(self, r: int) -> tuple[int, ...]:
        return (r, self.base.in_channels, *self.base.kernel_size)

    def _lora_branch(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        conv = self.base
        h = F.conv2d(x, a, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)   # A: c_in -> r
        return F.conv2d(h, b[:, :, None, None])                                               # B: 1×1, r -> c_out


#: the layer types LoRA can wrap, and their LoRA class
SUPPORTED: dict[type, type[LoRALayer]] = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}


def wrap(module: nn.Module, r: int, alpha: float | None, dropout: float, name: str,
         generator: torch.Generator | None = None) -> LoRALayer:
    """A LoRA layer around ``module`` (an nn.Linear or nn.Conv2d), or ``module`` itself with a new adapter
    if it is a LoRA layer already."""
    if isinstance(module, LoRALayer):
        module.add_adapter(name, r, alpha, dropout, generator=generator)
        return module
    for kind, cls in SUPPORTED.items():
        if isinstance(module, kind):
            return cls(module, r, alpha, dropout, name=name, generator=generator)
    raise TypeError(f"LoRA supports {[k.__name__ for k in SUPPORTED]} layers, got {type(module).__name__}")

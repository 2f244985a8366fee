r"""Chapter 3 — the continuous clock and the bridge to the discrete one (DESIGN.md, "two clocks, one bridge").

* **Discrete**: ``t`` is a step index in [0, T) (chapters 1, 2, 4–9); validated by
  :meth:`minidiff.schedules.NoiseSchedule.check_t`, and :meth:`~minidiff.schedules.NoiseSchedule.alpha_bar_at`
  reads ᾱ at integer or fractional indices.
* **Continuous**: ``t ∈ [0, 1]`` (the SDEs of :mod:`minidiff.sde`); validated by :func:`check_time`, the one
  check every continuous-time function calls.

**A model declares its clock.** ``model.clock`` is ``"discrete"`` or ``"continuous"``; a model with a
``num_timesteps`` (every minidiff net) is discrete; a wrapper that keeps its base model as ``.eps_model``
(guidance, :class:`CountCalls`) has the clock of that model; a plain function declares nothing and is trusted.
:func:`score_fn` — the door through which the SDE and ODE solvers read any eps-model — refuses a discrete
model: fed t ∈ [0, 1], it would see the first step indices, i.e. almost no noise, and sample garbage.

**The bridge** :class:`ContinuousTime` turns a discrete model into a continuous one: ``from_ddpm`` feeds the
index t·T − 1, the step whose noise level the VP-SDE of :meth:`minidiff.sde.VPSDE.from_schedule` has at t.
:class:`DiscreteTime` is the same bridge the other way round: a continuous-time model seen by chapter 2's DDPM /
DDIM loops, index i ↦ t = (i + 1)/T, so ``DiscreteTime(ContinuousTime.from_ddpm(net))`` is ``net`` again.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .checks import check_int, check_real
from .cond import model_null
from .eps import EpsModel, call_eps, eps_to_score

__all__ = ["CLOCKS", "check_time", "time_grid", "model_clock", "check_continuous_model", "ContinuousTime",
           "DiscreteTime", "CountCalls", "score_fn"]

CLOCKS = ("discrete", "continuous")
Score = Callable[[Tensor, Tensor], Tensor]


# ------------------------------------------------------------------------------ continuous times
def check_time(t: Tensor | float, batch: int | None = None, name: str = "t") -> Tensor:
    """Validate continuous times: a float or a (B,) float tensor in [0, 1]; returns a float64 tensor,
    broadcast to (batch,) when ``batch`` is given."""
    if isinstance(t, bool) or (isinstance(t, Tensor) and t.dtype == torch.bool):
        raise ValueError(f"{name} must be a float or a (B,) float tensor in [0, 1], got a bool")
    if not isinstance(t, Tensor):
        check_real(t, name, hint=" (a continuous time in [0, 1])")
        t = torch.tensor(float(t), dtype=torch.float64)   # a Python 0.3 stays 0.3
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)) or t.ndim > 1:
        raise ValueError(f"{name} must be a float or a (B,) float tensor in [0, 1], got {t.dtype} {tuple(t.shape)}")
    t = t.double()                       # coefficients are computed in float64, cast where they multiply x
    if t.numel() and (torch.isnan(t).any() or t.min() < 0 or t.max() > 1):
        raise ValueError(f"{name} must be in [0, 1], got min {float(t.min()):g}, max {float(t.max()):g}"
                         " (the continuous clock; discrete step indices belong to NoiseSchedule)")
    if batch is not None:
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape[0] != batch:
            raise ValueError(f"{name} has {t.shape[0]} entries but the batch has {batch}; give {name} shape (B,)")
    return t


def time_grid(steps: int, t_eps: float) -> list[float]:
    """``steps + 1`` evenly spaced times from 1 down to ``t_eps`` (the solvers' grid), as Python floats."""
    check_int(steps, "steps", 1)
    check_real(t_eps, "t_eps", low=0, high=1, high_open=True,
               hint=" (the solvers stop at t_eps; 1e-3 keeps s(t) away from 0)")
    return torch.linspace(1.0, t_eps, steps + 1, dtype=torch.float64).tolist()


# ------------------------------------------------------------------------------ which clock a model runs on
def model_clock(model: Any) -> str | None:
    """``"discrete"``, ``"continuous"`` or None (declares nothing: a plain function).

    Read in this order: ``model.clock``; ``model.num_timesteps`` (set ⇒ discrete); else the clock of
    ``model.eps_model`` (a wrapper inherits its base model's clock)."""
    for _ in range(64):                                    # wrappers of wrappers; bounded against cycles
        clock = getattr(model, "clock", None)
        if clock is not None:
            if clock not in CLOCKS:
                raise ValueError(f"{type(model).__name__}.clock must be one of {CLOCKS}, got {clock!r}")
            return clock
        if getattr(model, "num_timesteps", None) is not None:
            return "discrete"
        model = getattr(model, "eps_model", None)
        if model is None:
            return None
    return None


def check_continuous_model(model: Any, what: str = "score_fn (the SDE and ODE solvers)") -> None:
    """Raise a ValueError that says how to bridge if ``model`` runs on the discrete clock."""
    if model_clock(model) == "discrete":
        T = getattr(model, "num_timesteps", None) or "T"
        raise ValueError(
            f"this {type(model).__name__} was trained on step indices [0, T)=[0, {T}), but {what} calls it with "
            f"continuous times t in [0, 1]; wrap it with ContinuousTime.from_ddpm(model) and sample "
            "VPSDE.from_schedule(schedule), or train a continuous-time model as ContinuousTime(net)")


# ------------------------------------------------------------------------------ the bridge
class ContinuousTime(nn.Module):
    """The one place where a continuous t ∈ [0, 1] becomes the step index a minidiff net embeds.

    ``ContinuousTime(net)`` feeds index = t·(T−1) (T = ``net.num_timesteps``, 1000 by default): use it to
    *train* a continuous-time model with MLPDenoiser/UNet (their sinusoidal embedding takes fractional steps).
    ``ContinuousTime.from_ddpm(model)`` is the *bridge* for a chapter-2 model trained on indices: index =
    t·T − 1 (clamped to [0, T−1]), so that the model sees the noise level it was trained at
    (:meth:`VPSDE.from_schedule`). Either way: eps_model(x: (B, *shape), t: (B,) in [0, 1], cond=None).
    It declares ``clock = "continuous"`` and forwards the wrapped model's ``null_cond`` and ``num_classes``,
    so classifier-free guidance works on a bridged conditional model.
    """

    clock = "continuous"

    def __init__(self, net: nn.Module | EpsModel, scale: float | None = None, shift: float = 0.0) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be an eps-model (callable), got {type(net).__name__}")
        if model_clock(net) == "continuous":
            raise ValueError(f"{type(net).__name__} already runs on the continuous clock t in [0, 1]; "
                             "use it directly instead of wrapping it in ContinuousTime")
        self.net = net
        self.T = check_int(getattr(net, "num_timesteps", None) or 1000, "net.num_timesteps", low=2)
        self.scale = check_real(self.T - 1 if scale is None else scale, "scale", low=0, low_open=True)
        self.shift = check_real(shift, "shift")

    @classmethod
    def from_ddpm(cls, model: nn.Module | EpsModel, T: int | None = None) -> "ContinuousTime":
        """The bridge: index = t·T − 1, the paper's step i = tT at index i − 1 (T: ``model.num_timesteps``)."""
        T = check_int(T if T is not None else getattr(model, "num_timesteps", None) or 1000, "T", low=2)
        return cls(model, scale=T, shift=-1.0)

    @property
    def null_cond(self) -> Any:
        """The wrapped model's null condition (:func:`minidiff.cond.model_null`)."""
        return model_null(self.net)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

    @property
    def class_embed(self) -> Any:
        """The wrapped model's class embedding (where chapter 4's guidance looks up the null label)."""
        return getattr(self.net, "class_embed", None)

    def index(self, t: Tensor) -> Tensor:
        """t: (B,) in [0, 1] -> step indices (B,) in [0, T−1] (fractional)."""
        return (t * self.scale + self.shift).clamp(0, self.T - 1)

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        t = check_time(t, x.shape[0]).to(device=x.device, dtype=x.dtype if x.is_floating_point() else None)
        return call_eps(self.net, x, self.index(t), cond)        # indices in the net's working precision


class DiscreteTime(nn.Module):
    """The inverse bridge: a continuous-time eps-model seen by the discrete samplers (chapter 2's DDPM / DDIM).

    A step index i (the paper's step i + 1) is fed to the model as the continuous time t = (i + 1)/T — where the
    VP-SDE of :meth:`minidiff.sde.VPSDE.from_schedule` has the noise level of step i (DESIGN.md, "two clocks, one
    bridge"). It inverts :meth:`ContinuousTime.from_ddpm` (index = tT − 1), so
    ``DiscreteTime(ContinuousTime.from_ddpm(net))(x, i) == net(x, i)``.
    eps_model(x: (B, *shape), t: (B,) step indices in [0, T − 1] (integer or fractional), cond=None) -> (B, *shape).
    Declares ``clock = "discrete"`` and ``num_timesteps = T`` (the samplers check it against the schedule), and
    forwards the wrapped model's ``null_cond`` and ``num_classes`` like :class:`ContinuousTime`.
    """

    clock = "discrete"

    def __init__(self, model: nn.Module | EpsModel, T: int = 1000) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be an eps-model (callable), got {type(model).__name__}")
        if model_clock(model) == "discrete":
            raise ValueError(f"{type(model).__name__} already runs on step indices [0, T); use it directly with "
                             "the DDPM/DDIM samplers instead of wrapping it in DiscreteTime")
        self.model = model
        self.num_timesteps = check_int(T, "T", low=2, hint=" (the number of steps of the schedule to sample with)")

    @property
    def null_cond(self) -> Any:
        """The wrapped model's null condition (:func:`minidiff.cond.model_null`)."""
        return model_null(self.model)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.model, "num_classes", None)

    def time(self, t: Tensor | float, batch: int | None = None) -> Tensor:
        """Step indices (an int / float, or (B,)) in [0, T − 1] -> continuous times (i + 1)/T, float64 (B,)."""
        if isinstance(t, bool) or (isinstance(t, Tensor) and t.dtype == torch.bool):
            raise TypeError("t must hold step indices in [0, T), got a bool")
        if not isinstance(t, Tensor):
            check_real(t, "t", hint=" (a step index in [0, T))")
        t = torch.as_tensor(t).double()
        if t.ndim > 1 or (batch is not None and t.ndim == 1 and t.shape[0] != batch):
            raise ValueError(f"t must be a step index or have shape (B,)=({batch},), got {tuple(t.shape)}")
        T = self.num_timesteps
        if t.numel() and (torch.isnan(t).any() or t.min() < 0 or t.max() > T - 1):
            raise ValueError(f"t must be a step index in [0, T-1]=[0, {T - 1}], got min {float(t.min()):g} and max "
                             f"{float(t.max()):g} (continuous times in [0, 1] go to the model itself, not to DiscreteTime)")
        if batch is not None and t.ndim == 0:
            t = t.expand(batch)
        return (t + 1) / T

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        return call_eps(self.model, x, self.time(t, x.shape[0]).to(x.device), cond)


class CountCalls:
    """Wrap an eps-model and count its calls (``.calls``) — an honest NFE for any sampler.

    Transparent: any other attribute (``clock``, ``num_timesteps``, ``null_cond``, ...) is read from the
    wrapped model, so the wrapper runs on the same clock and guidance sees the same null condition."""

    def __init__(self, eps_model: EpsModel) -> None:
        if not callable(eps_model):
            raise TypeError(f"eps_model must be callable, got {type(eps_model).__name__}")
        self.eps_model, self.calls = eps_model, 0

    def __getattr__(self, name: str) -> Any:          # only called for attributes CountCalls lacks
        if name in ("eps_model", "calls") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.eps_model, name)

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        self.calls += 1
        return self.eps_model(x, t) if cond is None else self.eps_model(x, t, cond)


# ------------------------------------------------------------------------------ eps -> score on the continuous clock
def score_fn(eps_model: EpsModel, sde: Any, cond: Any = None) -> Score:
    """x: (B, *shape), t: (B,) in [0, 1] -> ∇log p_t(x) = eps_to_score(eps_model(x, t), s(t)) (Tweedie, the one
    conversion of :mod:`minidiff.eps`). Refuses a discrete-time model (see :func:`check_continuous_model`)."""
    if not callable(eps_model):
        raise TypeError(f"eps_model must be callable, got {type(eps_model).__name__}")
    if not (callable(getattr(sde, "std", None)) and callable(getattr(sde, "marginal_coeffs", None))):
        raise ValueError(f"sde must be an SDE of minidiff.sde (e.g. VPSDE()), got {type(sde).__name__}; a "
                         "NoiseSchedule is the discrete clock: sample it with minidiff.sample, or use "
                         "VPSDE.from_schedule(schedule)")
    check_continuous_model(eps_model)

    def score(x: Tensor, t: Tensor) -> Tensor:
        eps = call_eps(eps_model, x, t.to(x.device), cond)
        std = sde.std(t).to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return eps_to_score(eps, std)

    return score

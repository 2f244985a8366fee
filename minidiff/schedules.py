r"""Noise schedules β_1..β_T and the quantities derived from them (chapters 1–2).

Conventions (DESIGN.md, "two clocks"): a schedule holds ``T`` steps; the step *index*
``t ∈ [0, T)`` stored in tensors means the paper's step ``t + 1``. So ``betas[0]`` is Ho et al.'s
β_1 and

.. math:: \alpha_t = 1 - \beta_t, \qquad \bar\alpha_t = \prod_{s \le t} \alpha_s

with ``alpha_bar[t]`` the product up to and including index ``t`` — the same as diffusers'
``alphas_cumprod``, so its schedulers and the Stable Diffusion U-Net plug in unchanged.

Everything is stored in float64 on the CPU (cumulative products over 1000 steps lose digits in
float32) and cast to the dtype/device of the tensor it multiplies by :meth:`NoiseSchedule.gather`.

:meth:`NoiseSchedule.rescale_zero_terminal_snr` (Lin et al. 2024, Alg. 1) makes ᾱ at the last index
exactly 0 (β = 1 there, the one place a beta may be 1); chapter 2 measures what that does to sampling.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import torch
from torch import Tensor

from .checks import check_int, check_real

__all__ = ["NoiseSchedule"]


class NoiseSchedule:
    """A variance schedule ``betas: (T,)`` with every derived coefficient precomputed.

    Build one with :meth:`linear`, :meth:`cosine`, :meth:`scaled_linear` or :meth:`from_diffusers`;
    the constructor accepts any betas strictly inside (0, 1). With ``zero_terminal_snr=True`` the last
    beta must be exactly 1 instead (ᾱ_{T−1} = 0: :meth:`rescale_zero_terminal_snr`).
    """

    def __init__(self, betas: Tensor | list[float], name: str = "custom", *, zero_terminal_snr: bool = False) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if isinstance(betas, Tensor) and (betas.dtype == torch.bool or betas.is_complex()):
            raise TypeError(f"betas must be real numbers, got a {betas.dtype} tensor")
        try:
            betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"betas must be a 1-D tensor or list of floats (T,), got {type(betas).__name__}") from err
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor (T,), got shape {tuple(betas.shape)}")
        if not isinstance(zero_terminal_snr, bool):
            raise TypeError(f"zero_terminal_snr must be a bool, got {type(zero_terminal_snr).__name__}")
        if zero_terminal_snr and (betas.numel() < 2 or betas[-1] != 1):
            raise ValueError(f"zero_terminal_snr=True needs T >= 2 and the last beta exactly 1 (alpha_bar_T = 0), got "
                             f"T={betas.numel()} and last beta {betas[-1].item():.6g}; see rescale_zero_terminal_snr()")
        inner = betas[:-1] if zero_terminal_snr else betas      # only the terminal beta may be 1
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (inner >= 1).any():
            raise ValueError(
                f"betas must lie strictly inside (0, 1); got min {betas.min().item():.3g}, "
                f"max {betas.max().item():.3g}. Clip them (e.g. cosine clips at 0.999)."
            )
        self.name = name
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        # ᾱ_{t-1}, with ᾱ_0 = 1 for the first step (index 0 has no predecessor)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        # Posterior variance β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t   (Ho et al. 2020, eq. 7)
        self.posterior_variance = (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar) * betas

    # ----------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Ho et al. (2020), Sec. 4: β rises linearly from ``beta_start`` to ``beta_end``."""
        _check_T(T)
        _check_beta_range(beta_start, beta_end)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear")

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> "NoiseSchedule":
        """Stable Diffusion's schedule: √β rises linearly (diffusers' ``scaled_linear``)."""
        _check_T(T)
        _check_beta_range(beta_start, beta_end)
        root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
        return cls(root**2, name="scaled_linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        r"""Nichol & Dhariwal (2021), eq. 17: :math:`\bar\alpha(u) = f(u)/f(0)`,
        :math:`f(u) = \cos^2\!\big(\tfrac{u + s}{1 + s}\tfrac{\pi}{2}\big)`, u = t/T, and
        β_t = 1 − ᾱ_t/ᾱ_{t−1} clipped at ``max_beta`` so the last steps stay finite.

        The clip has a price a sampler pays: at the last index β = 0.999 and ᾱ ≈ 2.4e-9, so DDPM's
        first step multiplies the ε-error by β/(√α √(1−ᾱ)) ≈ 31.6 (linear schedule: 0.02). A model
        that is slightly wrong at t = T−1 throws a few samples far out; chapter 2 measures it, and
        starting one step later (``t_start=T−2``) or ``clip_x0`` avoids it.
        """
        _check_T(T)
        s = check_real(s, "s (cosine offset)", 0)
        max_beta = check_real(max_beta, "max_beta", 0, 1, low_open=True, high_open=True)
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas, name="cosine")

    @classmethod
    def from_diffusers(cls, scheduler_or_config: Any) -> "NoiseSchedule":
        """The schedule of a diffusers scheduler (or its ``config`` / a plain dict).

        Supports ``beta_schedule`` in {"linear", "scaled_linear", "squaredcos_cap_v2"}, or
        ``trained_betas``; raises ValueError for anything else rather than guessing.
        """
        config = getattr(scheduler_or_config, "config", scheduler_or_config)
        if isinstance(config, Mapping) and config.get("rescale_betas_zero_snr", False):
            raise ValueError("rescale_betas_zero_snr=True makes the last ᾱ exactly 0 (β_T = 1): build the schedule "
                             "from the config without it and call .rescale_zero_terminal_snr() (an ε-model cannot "
                             "take the step at ᾱ = 0; the samplers then need t_start=T-2)")
        if isinstance(getattr(scheduler_or_config, "betas", None), Tensor):
            # a scheduler object: take its very betas (float32-rounded), not a recomputation
            sched = scheduler_or_config
            return cls(sched.betas, name=str(sched.config.get("beta_schedule", "diffusers")))
        if not isinstance(config, Mapping):
            raise TypeError(
                "from_diffusers expects a diffusers scheduler, its .config or a dict, "
                f"got {type(scheduler_or_config).__name__}"
            )
        T = check_int(config.get("num_train_timesteps", 1000), "config['num_train_timesteps']", 1)
        if config.get("trained_betas") is not None:
            trained = cls(config["trained_betas"], name="trained")
            if "num_train_timesteps" in config and trained.T != T:
                raise ValueError(f"trained_betas has {trained.T} entries but num_train_timesteps={T}; make them agree")
            return trained
        kind = config.get("beta_schedule", "linear")
        start, end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
        if kind == "linear":
            return cls.linear(T, start, end)
        if kind == "scaled_linear":
            return cls.scaled_linear(T, start, end)
        if kind == "squaredcos_cap_v2":
            return cls.cosine(T)
        raise ValueError(
            f"beta_schedule={kind!r} is not supported; use 'linear', 'scaled_linear' or "
            "'squaredcos_cap_v2' (or pass trained_betas)"
        )

    def rescale_zero_terminal_snr(self) -> NoiseSchedule:
        r"""This schedule with zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and
        Sample Steps are Flawed", Alg. 1): shift and scale :math:`\sqrt{\bar\alpha}` so that the last one is 0
        and the first is kept,

        .. math:: \sqrt{\bar\alpha'_t} = \big(\sqrt{\bar\alpha_t}-\sqrt{\bar\alpha_{T-1}}\big)\,
                  \frac{\sqrt{\bar\alpha_0}}{\sqrt{\bar\alpha_0}-\sqrt{\bar\alpha_{T-1}}}, \qquad
                  \beta'_t = 1-\bar\alpha'_t/\bar\alpha'_{t-1}

        (indices as stored; β'_0 = β_0 and β'_{T−1} = 1). Training then sees pure noise at the last index,
        exactly what sampling starts from, so no signal "leaks" through x_T (SD's ᾱ_T = 0.0047 does).
        The same betas as diffusers' ``rescale_betas_zero_snr=True``.

        The price for an ε-model: at ᾱ = 0 it learns ε̂ = x_t and nothing about x_0, so x̂_0 is undefined
        at t = T−1. minidiff's samplers refuse that step (ValueError) and say to start at ``t_start=T-2``;
        Lin et al. train v-prediction instead.
        """
        if self.T < 2:
            raise ValueError(f"rescale_zero_terminal_snr needs T >= 2 steps (it maps the first and last to "
                             f"different values), got T={self.T}")
        root = self.alpha_bar.sqrt()
        first, last = root[0].item(), root[-1].item()
        if last == 0.0:
            return self                                        # already zero terminal SNR
        root = (root - last) * (first / (first - last))        # Lin et al. 2024, Alg. 1: shift, then scale
        alpha_bar = root**2
        alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])   # undo the cumulative product
        return NoiseSchedule(1.0 - alphas, name=f"{self.name}+zero_snr", zero_terminal_snr=True)

    # ----------------------------------------------------------------- derived quantities
    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.numel()

    @property
    def zero_terminal_snr(self) -> bool:
        """Whether ᾱ at the last index is exactly 0 (x_T is pure noise; :meth:`rescale_zero_terminal_snr`)."""
        return bool(self.alpha_bar[-1] == 0)

    @property
    def snr(self) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t), shape (T,) (Kingma et al. 2021, eq. 2)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def log_snr(self) -> Tensor:
        """log SNR, shape (T,): the natural axis for comparing schedules."""
        return torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)

    def check_t(self, t: Tensor | int, batch: int | None = None) -> Tensor:
        """Validate step indices and return them as a long tensor.

        t: int or (B,) integer tensor in [0, T). With ``batch`` given, an int or a 0-d tensor is
        broadcast to (batch,), and a (B,) tensor must have B == batch.
        """
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):
            t = int(t)                 # a NumPy integer is an int too
        if isinstance(t, int) and not isinstance(t, bool) and batch is None:
            if not 0 <= t < self.T:   # the samplers' per-step path: a Python int, no tensor reductions
                raise ValueError(f"t must be in [0, T)=[0, {self.T}), got {t}")
            return torch.tensor(t)
        if isinstance(t, bool) or (not isinstance(t, (int, Tensor))):
            raise TypeError(f"t must be an int or an integer tensor of step indices, got {type(t).__name__}")
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(
                f"t must hold integer step indices in [0, T)=[0, {self.T}), got dtype {t.dtype}; "
                "continuous times t ∈ [0, 1] belong to minidiff.sde"
            )
        if t.ndim > 1:
            raise ValueError(f"t must be a scalar or have shape (B,), got {tuple(t.shape)}")
        if t.numel() and (t.min() < 0 or t.max() >= self.T):
            raise ValueError(
                f"t must be in [0, T)=[0, {self.T}), got min {int(t.min())} and max {int(t.max())}"
            )
        t = t.long()
        if batch is not None:
            batch = check_int(batch, "batch", 0)
            if t.ndim == 0:
                t = t.expand(batch)
            elif t.shape[0] != batch:
                raise ValueError(f"t has {t.shape[0]} entries but the batch has {batch}; give t shape (B,)")
        return t

    def gather(self, values: Tensor, t: Tensor | int, x: Tensor) -> Tensor:
        """``values[t]`` reshaped to broadcast against ``x: (B, *shape)`` -> (B, 1, ..., 1).

        Cast to ``x``'s dtype and device, so coefficients never silently upcast a float32 model.
        """
        if not isinstance(values, Tensor) or tuple(values.shape) != (self.T,):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"values must be a per-step tensor of shape (T,)=({self.T},) such as "
                             f"schedule.alpha_bar, got {got}")
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor (B, *shape) to broadcast against, got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError(f"x must be a batched tensor (B, *shape) to broadcast against, got a 0-d tensor")
        if isinstance(t, int) and not isinstance(t, bool):      # one step for the whole batch
            out = values[int(self.check_t(t))].to(device=x.device, dtype=x.dtype)
            return out.expand(x.shape[0], *([1] * (x.ndim - 1)))
        t = self.check_t(t, batch=x.shape[0])
        out = values[t.cpu()].to(device=x.device, dtype=x.dtype)
        return out.reshape(-1, *([1] * (x.ndim - 1)))

    def check_model(self, model: Any) -> None:
        """Raise when a model declares a number of steps (``num_timesteps``) other than T."""
        model_T = getattr(model, "num_timesteps", None)
        if model_T is not None and (isinstance(model_T, bool) or not isinstance(model_T, numbers.Integral)):
            raise TypeError(f"the model's num_timesteps must be an int (its number of diffusion steps), "
                            f"got {model_T!r}")
        if model_T is not None and int(model_T) != self.T:
            raise ValueError(
                f"the model was built for T={model_T} steps but the schedule has T={self.T}; "
                "use the schedule the model was trained with"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (used as part of cache keys and checkpoint metadata)."""
        return {"name": self.name, "T": self.T, "betas_sum": round(float(self.betas.sum()), 10)}

    def __repr__(self) -> str:
        b = self.betas
        return f"NoiseSchedule({self.name}, T={self.T}, beta=[{b[0]:.2e} … {b[-1]:.2e}], alpha_bar_T={self.alpha_bar[-1]:.2e})"

    def alpha_bar_at(self, t: Tensor | int | float, batch: int) -> Tensor:
        r"""ᾱ at step indices ``t`` -> (batch,) float64 on the CPU.

        Integer t (an int or a (B,) integer tensor) are the indices of :meth:`check_t`. Fractional indices
        — what chapter 3's bridge ``ContinuousTime.from_ddpm`` feeds a discrete model — must lie in
        [0, T−1] and interpolate log ᾱ linearly between the neighbouring steps (log ᾱ is a sum of
        log(1 − β), so this is the continuous-time integral of β with β piecewise constant).
        """
        check_int(batch, "batch", 1, hint=" (the number of examples)")
        if not (isinstance(t, float) or (isinstance(t, Tensor) and t.is_floating_point())):
            return self.alpha_bar[self.check_t(t, batch=batch).cpu()]
        t = torch.as_tensor(t).detach().double().cpu()
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
            raise ValueError(f"t must be a scalar or have shape (B,)=({batch},), got {tuple(t.shape)}")
        t = t.expand(batch)
        T = self.T
        if t.numel() and (torch.isnan(t).any() or t.min() < 0 or t.max() > T - 1):
            raise ValueError(f"t must be a step index in [0, T-1]=[0, {T - 1}], got min {float(t.min()):g} "
                             f"and max {float(t.max()):g} (continuous times in [0, 1] need ContinuousTime.from_ddpm)")
        lo = t.floor().long().clamp(max=T - 1)
        hi, frac = (lo + 1).clamp(max=T - 1), t - lo
        log_ab = self.alpha_bar.log()
        # frac == 0 exactly: take log ᾱ[lo] alone (0 · log ᾱ = 0 · −inf would be NaN on a zero-terminal-SNR schedule)
        return torch.where(frac == 0, log_ab[lo], log_ab[lo] * (1 - frac) + log_ab[hi] * frac).exp()


def _check_T(T: int) -> None:
    check_int(T, "T (number of steps)", 1)


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    start = check_real(beta_start, "beta_start", 0, 1, low_open=True, high_open=True)
    end = check_real(beta_end, "beta_end", 0, 1, low_open=True, high_open=True)
    if start > end:
        raise ValueError(f"beta_start={start:g} > beta_end={end:g}: β must not decrease (noise is added ever "
                         "faster); swap them, or build the betas yourself with NoiseSchedule(betas)")

r"""Chapter 3 — denoising score matching on the continuous clock (Song et al. 2021, eq. 7; Vincent 2011).

The training objective of a continuous-time model for any SDE of :mod:`minidiff.sde`, written in ε form so
that it is chapter 2's L_simple when λ(t) = s(t)².
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .checks import check_real
from .clock import check_continuous_model
from .eps import call_eps
from .forward import noise_like
from .train import Batch, LossFn

if TYPE_CHECKING:
    from .sde import SDE

__all__ = ["WEIGHTINGS", "dsm_loss"]

WEIGHTINGS = ("sigma2", "likelihood")


def dsm_loss(sde: "SDE", weighting: str = "sigma2", t_eps: float = 1e-3) -> LossFn:
    r"""Denoising score matching as a ``loss_fn`` for :func:`minidiff.train.fit` (Song eq. 7, in ε form).

    x_t = m x_0 + s ε with t ~ U[t_eps, 1] (t_eps = 1e-3 avoids s → 0, where the score blows up);
    score error ‖s_θ − ∇log p_{0t}‖² = ‖ε_θ − ε‖²/s², weighted by λ(t):
    ``"sigma2"`` λ = s² ⇒ ‖ε − ε_θ‖² (DDPM's L_simple); ``"likelihood"`` λ = g² ⇒ (g²/s²)‖ε − ε_θ‖²
    (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training", Thm. 1: bounds the KL of the reverse-SDE model).
    Averaged over dimensions and batch. A batch is x_0: (B, *shape) or (x_0, cond). The model must run on
    the continuous clock (e.g. ``ContinuousTime(net)``): a discrete-time net is refused.
    """
    if not callable(getattr(sde, "marginal", None)):
        raise ValueError(f"sde must be an SDE of minidiff.sde (VPSDE(), ...), got {type(sde).__name__}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    t_eps = check_real(t_eps, "t_eps", low=0, high=1, low_open=True, high_open=True,
                       hint=" (training times are drawn from U[t_eps, 1]; 1e-3 is usual)")

    def loss_fn(model: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        check_continuous_model(model, "dsm_loss")
        x0, cond = (batch[0], batch[1]) if isinstance(batch, tuple) else (batch, None)
        t = t_eps + (1 - t_eps) * torch.rand(x0.shape[0], generator=generator)
        noise = noise_like(x0, generator=generator)
        mean, std = sde.marginal(x0, t)
        eps = call_eps(model, mean + std * noise, t.to(x0.device), cond)
        err = (noise - eps).pow(2).reshape(x0.shape[0], -1).mean(1)
        if weighting == "likelihood":
            err = err * (sde.diffusion(t) ** 2 / sde.std(t) ** 2).to(err)
        return err.mean()

    return loss_fn

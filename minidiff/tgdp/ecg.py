r"""TGDP's two small networks for signals (B, C, L) — chapter 9 (ECG), the chapter-8 nets with a 1-D front end.

:class:`~minidiff.tgdp.DomainClassifier` and :class:`~minidiff.tgdp.GuidanceNet` read points (B, D). For
an ECG the property that separates target from source (here: the heart rate) lives in the *timing* of
the beats, wherever they fall in the window, so a position-wise MLP on the raw samples would have to
learn it at every shift from 10–100 records. A small convolutional encoder does it once:

    x (B, C, L) -> [Conv1d k=9, SiLU] -> depth × [Conv1d k=9 stride 2, SiLU] -> mean and max over time -> (B, 2·width)

Mean pooling of a beat-detecting channel is proportional to the number of beats in the window, i.e. to
the heart rate — the feature the classifier needs. The pooled features then go through the unchanged
chapter-8 trunk (residual MLP blocks with the time / class embedding added in each) and its scalar head:
the same logit ℓ = log c/(1 − c) and the same h = softplus(u) ≥ 0 starting at h ≡ 1, so every loss,
:func:`~minidiff.tgdp.fit_domain_classifier` / :func:`~minidiff.tgdp.fit_guidance_net` (``net=``) and
:class:`~minidiff.tgdp.DensityRatioGuidance` apply as they are. The encoder does not see t; the trunk does.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import record_config
from ..checks import check_int
from .nets import DomainClassifier, GuidanceNet

__all__ = ["SignalDomainClassifier", "SignalEncoder", "SignalGuidanceNet"]


class SignalEncoder(nn.Module):
    """x: (B, C, L) -> pooled features (B, 2·width): a strided 1-D conv stack, then mean ‖ max over time."""

    def __init__(self, in_channels: int, width: int = 32, depth: int = 3, kernel: int = 9) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", 1)
        width, depth = check_int(width, "width", 1), check_int(depth, "depth", 0)
        kernel = check_int(kernel, "kernel", 1)
        layers: list[nn.Module] = [nn.Conv1d(self.in_channels, width, kernel, padding=kernel // 2), nn.SiLU()]
        for _ in range(depth):
            layers += [nn.Conv1d(width, width, kernel, stride=2, padding=kernel // 2), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = 2 * width

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be signals of shape (B, {self.in_channels}, L), got {got}")
        h = self.net(x)
        return torch.cat([h.mean(-1), h.amax(-1)], dim=1)


@record_config
class SignalDomainClassifier(DomainClassifier):
    """Source-vs-target classifier for signals: x: (B, C, L) [, t: (B,)] [, cond] -> source logit (B,).

    Args:
        in_channels: C (leads). conv_width, conv_depth: the :class:`SignalEncoder`.
        width, depth, num_timesteps, emb_dim, num_classes: the chapter-8 trunk
            (:class:`~minidiff.tgdp.DomainClassifier`; ``num_timesteps=T`` for the noisy c'(x_t, t)).
    """

    def __init__(self, in_channels: int = 1, conv_width: int = 32, conv_depth: int = 3, width: int = 64,
                 depth: int = 2, num_timesteps: int | None = None, emb_dim: int = 32,
                 num_classes: int | None = None) -> None:
        encoder = SignalEncoder(in_channels, conv_width, conv_depth)
        super().__init__(encoder.out_dim, width, depth, num_timesteps, emb_dim, num_classes)
        self.encoder = encoder

    def forward(self, x: Tensor, t: Tensor | None = None, cond: Any = None) -> Tensor:
        return self._scalar(self.encoder(x), t, cond)


@record_config
class SignalGuidanceNet(GuidanceNet):
    """h_ψ(x_t, t [, y]) > 0 for signals: x_t: (B, C, L), t: (B,) -> (B,); starts at h ≡ 1.

    Args: as :class:`SignalDomainClassifier`; ``num_timesteps`` is the schedule's T (h reads noisy inputs).
    """

    def __init__(self, in_channels: int = 1, conv_width: int = 32, conv_depth: int = 3, width: int = 128,
                 depth: int = 3, num_timesteps: int = 1000, emb_dim: int = 64, num_classes: int | None = None) -> None:
        encoder = SignalEncoder(in_channels, conv_width, conv_depth)
        super().__init__(encoder.out_dim, width, depth, num_timesteps, emb_dim, num_classes)
        self.encoder = encoder

    def raw(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The head's output u, h = softplus(u): (B,)."""
        return self._scalar(self.encoder(x_t), t, cond)

r"""Time-dependent classifiers on *noisy* inputs, p_φ(y | x_t, t) (chapter 4).

Classifier guidance (Dhariwal & Nichol 2021, Sec. 4) needs ∇_{x_t} log p_φ(y | x_t) at every
noise level the sampler visits, so the classifier must read noisy inputs and know how noisy they
are: it is trained on x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε with the time t as an extra input, with a
cross-entropy loss (:func:`minidiff.guidance.classifier_loss`) and the same training loop as the
eps-models (:func:`minidiff.train.fit`). ADM uses the U-Net's downsampling half; the digits
classifier here is the same idea in miniature, built from the U-Net's own :class:`ResBlock` and
the shared :class:`TimeEmbedding`.

Both return *logits* (B, K); ``log_softmax`` of them is log p_φ(y | x_t, t).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..checkpoint import record_config
from .embeddings import TimeEmbedding, check_timesteps
from .mlp import _Block
from .unet import ResBlock, check_image_size

__all__ = ["NoisyClassifier2D", "NoisyDigitClassifier"]


@record_config
class NoisyClassifier2D(nn.Module):
    """p_φ(y | x_t, t) for low-dimensional data: x: (B, D), t: (B,) -> logits (B, K).

    The trunk is the residual MLP of :class:`~minidiff.nets.MLPDenoiser` (its blocks, told the time
    through an added embedding) with a K-way linear head instead of the D-dim ε head.
    """

    def __init__(self, num_classes: int, dim: int = 2, width: int = 128, depth: int = 3,
                 num_timesteps: int = 1000, emb_dim: int = 64) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        self.dim, self.num_classes, self.num_timesteps = dim, num_classes, num_timesteps
        self.time_embed = TimeEmbedding(emb_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        emb = self.time_embed(check_timesteps(t, x.shape[0], self.num_timesteps))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.head(h)


@record_config
class NoisyDigitClassifier(nn.Module):
    """p_φ(y | x_t, t) for images: x: (B, C, H, W), t: (B,) -> logits (B, K).

    conv stem -> [ResBlock(time) -> stride-2 conv] per level -> ResBlock -> global average pool ->
    linear: the encoder half of :class:`~minidiff.nets.UNet` with a classification head (ADM's
    noisy classifier, Dhariwal & Nichol 2021, Sec. 4.1, at 8×8). Uses GroupNorm only, so each
    example's logits depend on that example alone — required for per-example input gradients.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 8, in_channels: int = 1,
                 base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2),
                 num_timesteps: int = 1000, groups: int = 8) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        check_image_size(image_size, channel_mults)
        self.num_classes, self.num_timesteps = num_classes, num_timesteps
        self.image_size, self.in_channels = image_size, in_channels
        emb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(emb_dim, freq_dim=base_channels)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.blocks, self.pools = nn.ModuleList(), nn.ModuleList()
        c = base_channels
        for i, mult in enumerate(channel_mults):
            self.blocks.append(ResBlock(c, base_channels * mult, emb_dim, groups))
            c = base_channels * mult
            last = i == len(channel_mults) - 1
            self.pools.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(c, c, emb_dim, groups)
        self.head = nn.Sequential(nn.GroupNorm(min(groups, c), c), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}")
        emb = self.time_embed(check_timesteps(t, x.shape[0], self.num_timesteps))
        h = self.conv_in(x)
        for block, pool in zip(self.blocks, self.pools):
            h = pool(block(h, emb))
        return self.head(self.mid(h, emb))

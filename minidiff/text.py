r"""A tiny CLIP (chapter 5): a text transformer and an image CNN trained contrastively, then frozen.

CLIP (Radford et al. 2021) maps an image and its caption to the same point of a joint embedding space.
Two encoders give L2-normalised embeddings I_e (B, E) and T_e (B, E); the B×B logits of a batch are

.. math:: \text{logits}_{ij} = e^{t}\, \langle I_{e,i}, T_{e,j} \rangle \qquad\text{(Fig. 3)}

and the loss is the symmetric cross-entropy whose targets are the diagonal (the true pairs):

.. math:: \mathcal{L} = \tfrac12\Big[\mathrm{CE}(\text{logits}, \mathrm{diag})
          + \mathrm{CE}(\text{logits}^\top, \mathrm{diag})\Big] \qquad\text{(Fig. 3)}

with the temperature t learnt, initialised to log(1/0.07) and e^t clipped at 100 (Sec. 2.5).

The text encoder is CLIP's (Sec. 2.4): token + learned position embeddings, pre-LN transformer blocks
with *causal* self-attention, a final LayerNorm, and the feature at the EOS token projected to the
joint space. Its per-token features (B, L, D) are what Stable Diffusion's U-Net reads through
cross-attention (``cond = {"context": ...}``, Rombach et al. 2022, Sec. 3.3); the empty caption's are
the null condition of classifier-free guidance. The pooled cosine gives the CLIP score (Hessel et al.
2021), chapter 7's text-fidelity metric.

Tokens follow the shapes-world contract: ``LongTensor (B, L)``, ``[bos] words… [eos] pad…`` with
``PAD_ID = 0``, ``BOS_ID = 1``, ``EOS_ID = 2``, words from id 3.

Freeze a trained model with :func:`freeze` (``requires_grad=False`` and eval mode) before using it as
the conditioning of a diffusion model or as a metric. In a notebook (``images`` (N, 3, 32, 32), ``tokens``
(N, L) of the same N scenes)::

    clip = TinyCLIP.build(vocab_size)
    train = lambda m: fit(m, clip_train_loss, (images, tokens), steps=pick(400, 3000), batch_size=64, lr=3e-3)
    clip = freeze(load_or_train("tiny-clip", {"steps": pick(400, 3000)}, clip, train))
    context = clip.token_features(tokens[:8])          # cond = {"context": context} for UNet(context_dim=64)
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import record_config
from .checks import check_int, check_real, check_tensor
from .nets.attention import TransformerBlock, group_norm

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "ImageEncoder", "TextEncoder", "TinyCLIP", "attention_mask", "check_tokens",
           "clip_loss", "clip_score", "clip_train_loss", "empty_tokens", "eos_positions", "freeze", "zero_shot_accuracy"]

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


# --------------------------------------------------------------------------- tokens
def check_tokens(tokens: Any, max_len: int, vocab_size: int, name: str = "tokens") -> Tensor:
    """``tokens`` if it is a LongTensor (B, L) of ids in [0, vocab_size), L <= max_len, each row
    ``[bos] … [eos] …`` (BOS first, so no query is left with only pad keys; an EOS to pool at)."""
    check_tensor(tokens, name)
    if tokens.dtype != torch.long:
        raise TypeError(f"{name} must be a LongTensor (B, L) of token ids, got dtype {tokens.dtype}; tokenize the "
                        "captions (the shapes tokenizer returns int64) or call .long()")
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, L) with B, L >= 1, got {tuple(tokens.shape)}; "
                         "a single caption is tokens[None]")
    if tokens.shape[1] > max_len:
        raise ValueError(f"{name} has length L={tokens.shape[1]} but the text encoder has max_len={max_len} "
                         "positions; tokenize with max_len <= that or build the encoder with a larger max_len")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} must hold ids in [0, vocab_size)=[0, {vocab_size}), got min {low} and max {high}; "
                         "build the encoder with the tokenizer's vocabulary size")
    no_bos = (tokens[:, 0] != BOS_ID).nonzero().flatten().tolist()
    if no_bos:
        raise ValueError(f"every row of {name} must start with the BOS token (id {BOS_ID}): [bos] words… [eos] pad…; "
                         f"rows {no_bos[:8]} do not")
    missing = (~(tokens == EOS_ID).any(dim=1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"every row of {name} needs an EOS token (id {EOS_ID}), where the pooled feature is read; "
                         f"rows {missing[:8]} have none (was a caption truncated? use a larger max_len)")
    return tokens


def empty_tokens(batch: int = 1, max_len: int = 16, device: str | torch.device | None = None) -> Tensor:
    """The empty caption ``[bos, eos, pad…]`` as tokens (batch, max_len): the null condition of CFG on text."""
    batch, max_len = check_int(batch, "batch", 1), check_int(max_len, "max_len", 2)
    tokens = torch.full((batch, max_len), PAD_ID, dtype=torch.long, device=device)
    tokens[:, 0], tokens[:, 1] = BOS_ID, EOS_ID
    return tokens


def attention_mask(tokens: Tensor) -> Tensor:
    """Bool (B, L, L), True where query i may attend to key j: j <= i (causal, CLIP Sec. 2.4) and j not PAD."""
    length = tokens.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    keep = (tokens != PAD_ID)[:, None, :]               # (B, 1, L): pad keys are never read
    return causal[None] & keep                         # key 0 (BOS) keeps every row non-empty


def eos_positions(tokens: Tensor) -> Tensor:
    """(B,) index of the first EOS token of each row (CLIP pools at its EOT token)."""
    return (tokens == EOS_ID).int().argmax(dim=1)


# --------------------------------------------------------------------------- encoders
@record_config
class TextEncoder(nn.Module):
    """CLIP's text transformer in miniature: tokens (B, L) -> per-token features (B, L, width) and an embedding.

    ``features(tokens)``: token + position embeddings -> ``depth`` pre-LN :class:`TransformerBlock` s
    (causal, pad keys masked) -> final LayerNorm: the cross-attention context, shape (B, L, width).
    ``forward(tokens)``: the feature at each row's EOS token, projected: (B, embed_dim), not normalised.
    """

    def __init__(self, vocab_size: int, max_len: int = 16, width: int = 64, depth: int = 2, heads: int = 4,
                 embed_dim: int = 64) -> None:
        super().__init__()
        self.vocab_size = check_int(vocab_size, "vocab_size", EOS_ID + 2, hint=" (pad, bos, eos and at least one word)")
        self.max_len = check_int(max_len, "max_len", 2, hint=" (a caption holds at least bos and eos)")
        self.width, self.embed_dim = check_int(width, "width", 1), check_int(embed_dim, "embed_dim", 1)
        heads = check_int(heads, "heads", 1)
        if self.width % heads:
            raise ValueError(f"heads={heads} must divide the text width={self.width}; pick e.g. heads="
                             f"{math.gcd(self.width, 4)}")
        self.token_embedding = nn.Embedding(self.vocab_size, self.width)
        self.position_embedding = nn.Parameter(torch.empty(self.max_len, self.width))
        self.blocks = nn.ModuleList(TransformerBlock(self.width, heads) for _ in range(check_int(depth, "depth", 1)))
        self.final_norm = nn.LayerNorm(self.width)
        self.projection = nn.Linear(self.width, self.embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)       # CLIP's initialisation
        nn.init.normal_(self.position_embedding, std=0.01)

    def features(self, tokens: Tensor) -> Tensor:
        """Per-token features (B, L, width) after the final LayerNorm (SD's ``last_hidden_state``)."""
        tokens = check_tokens(tokens, self.max_len, self.vocab_size)
        h = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        mask = attention_mask(tokens)
        for block in self.blocks:
            h = block(h, mask=mask)
        return self.final_norm(h)

    def pool(self, features: Tensor, tokens: Tensor) -> Tensor:
        """The feature at each row's EOS position: features (B, L, width), tokens (B, L) -> (B, width)."""
        return features[torch.arange(tokens.shape[0], device=tokens.device), eos_positions(tokens)]

    def forward(self, tokens: Tensor) -> Tensor:
        """Joint-space text embedding (B, embed_dim), before normalisation: W_t · feature[EOS]."""
        return self.projection(self.pool(self.features(tokens), tokens))


@record_config
class ImageEncoder(nn.Module):
    """A small CNN: images (B, in_channels, S, S) in [-1, 1] -> joint-space embedding (B, embed_dim).

    [stride-2 conv, GroupNorm, SiLU] per entry of ``channel_mults`` -> flatten -> linear. The
    final flatten (not a global pool) keeps *where* things are, which captions like "above" need.
    """

    def __init__(self, embed_dim: int = 64, image_size: int = 32, in_channels: int = 3, base_channels: int = 16,
                 channel_mults: tuple[int, ...] = (1, 2, 4), groups: int = 8) -> None:
        super().__init__()
        self.embed_dim = check_int(embed_dim, "embed_dim", 1)
        self.image_size, self.in_channels = check_int(image_size, "image_size", 1), check_int(in_channels, "in_channels", 1)
        base, groups = check_int(base_channels, "base_channels", 1), check_int(groups, "groups", 1)
        if not isinstance(channel_mults, (tuple, list)):
            raise TypeError(f"channel_mults must be a tuple of ints, e.g. (1, 2, 4), got {channel_mults!r}")
        mults = tuple(check_int(m, "channel_mults entries", 1) for m in channel_mults)
        if not mults or self.image_size % 2 ** len(mults):
            raise ValueError(f"image_size={self.image_size} must be divisible by 2**len(channel_mults)="
                             f"{2 ** len(mults)} (one stride-2 conv per entry, at least one); change either")
        layers: list[nn.Module] = []
        c = self.in_channels
        for mult in mults:                  # no full-resolution stem: 3x cheaper on a CPU, as accurate here
            layers += [nn.Conv2d(c, base * mult, 3, stride=2, padding=1), group_norm(base * mult, groups), nn.SiLU()]
            c = base * mult
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = self.image_size // 2 ** len(mults)
        self.projection = nn.Linear(c * side * side, self.embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, C, S, S) -> (B, embed_dim), not normalised."""
        check_tensor(images, "images", floating=True)
        want = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want or images.shape[0] == 0:
            raise ValueError(f"images must have shape (B, {want[0]}, {want[1]}, {want[2]}) with B >= 1, "
                             f"got {tuple(images.shape)}")
        return self.projection(self.features(images))


# --------------------------------------------------------------------------- CLIP
@record_config
class TinyCLIP(nn.Module):
    """Image and text encoders with a learnt temperature: the two towers of CLIP (Radford et al. 2021, Fig. 3).

    ``encode_image`` / ``encode_text`` give unit-norm embeddings (B, embed_dim); ``token_features`` the
    per-token text features (B, L, D) for cross-attention; ``logit_scale`` = min(e^t, 100).
    """

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder, embed_dim: int,
                 init_log_scale: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        embed_dim = check_int(embed_dim, "embed_dim", 1)
        for name, enc, cls in (("image_encoder", image_encoder, ImageEncoder), ("text_encoder", text_encoder, TextEncoder)):
            if not isinstance(enc, cls):
                raise TypeError(f"{name} must be a minidiff.text.{cls.__name__}, got {type(enc).__name__}")
            if enc.embed_dim != embed_dim:
                raise ValueError(f"{name} outputs embed_dim={enc.embed_dim} but TinyCLIP has embed_dim={embed_dim}; "
                                 "build both encoders with the same embed_dim")
        self.image_encoder, self.text_encoder, self.embed_dim = image_encoder, text_encoder, embed_dim
        init = check_real(init_log_scale, "init_log_scale", hint=" (log of the initial logit scale, CLIP: log(1/0.07))")
        self.log_scale = nn.Parameter(torch.tensor(init))   # t of CLIP's Fig. 3

    @classmethod
    def build(cls, vocab_size: int, max_len: int = 16, width: int = 64, depth: int = 2, heads: int = 4,
              embed_dim: int = 64, base_channels: int = 16, image_size: int = 32) -> TinyCLIP:
        """A TinyCLIP with default encoders: text transformer (width, depth, heads) and image CNN (base_channels)."""
        return cls(ImageEncoder(embed_dim, image_size=image_size, base_channels=base_channels),
                   TextEncoder(vocab_size, max_len, width, depth, heads, embed_dim), embed_dim)

    @property
    def context_dim(self) -> int:
        """D of the per-token features: the U-Net's ``context_dim``."""
        return self.text_encoder.width

    @property
    def max_len(self) -> int:
        return self.text_encoder.max_len

    @property
    def logit_scale(self) -> Tensor:
        """e^t clipped at 100 so logits are never scaled by more (CLIP Sec. 2.5); 0-d tensor.

        CLIP clips t in place after each step; clipping here needs no hook in the training loop (beyond
        100 the scale gets no gradient and stays pinned there)."""
        return self.log_scale.exp().clamp(max=100.0)

    def _device(self) -> torch.device:
        return self.log_scale.device

    def _here(self, value: Any, name: str) -> Tensor:
        """``value`` checked to be a tensor and moved to the model's device."""
        return check_tensor(value, name).to(self._device())

    def encode_image(self, images: Tensor) -> Tensor:
        """images (B, 3, 32, 32) in [-1, 1] -> unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.image_encoder(self._here(images, "images")), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.text_encoder(self._here(tokens, "tokens")), dim=-1)

    def token_features(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> per-token features (B, L, context_dim): the cross-attention context."""
        return self.text_encoder.features(self._here(tokens, "tokens"))

    def null_context(self) -> Tensor:
        """The empty caption's features (1, max_len, context_dim): the null ``context`` for CFG on text."""
        return self.token_features(empty_tokens(1, self.max_len, self._device()))

    def similarity(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Cosine similarities (B_img, B_txt) of every image with every caption (no temperature)."""
        return self.encode_image(images) @ self.encode_text(tokens).T

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(image embeddings (B, E), text embeddings (B, E)), both unit norm."""
        return self.encode_image(images), self.encode_text(tokens)


def freeze(model: nn.Module) -> nn.Module:
    """Freeze a trained model in place (every ``requires_grad=False``, eval mode) and return it.

    Frozen, a TinyCLIP is a fixed text encoder for a diffusion model (as SD keeps CLIP frozen) and a
    fixed metric; :func:`minidiff.train.train` leaves frozen submodules in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model.requires_grad_(False).eval()


# --------------------------------------------------------------------------- loss and metrics
def _check_embeddings(image_emb: Any, text_emb: Any) -> None:
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        check_tensor(emb, name, floating=True)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"{name} must have shape (B, E) with B >= 1, got {tuple(emb.shape)}")
        norms = emb.detach().norm(dim=-1)
        if not bool(((norms - 1).abs() < 1e-3).all()):
            raise ValueError(f"the rows of {name} must have unit norm (got norms in [{float(norms.min()):.3g}, "
                             f"{float(norms.max()):.3g}]); use TinyCLIP.encode_image/encode_text or F.normalize")
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must pair up row by row with one shape (B, E), got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> tuple[Tensor, dict[str, Tensor]]:
    """CLIP's symmetric contrastive loss (Radford et al. 2021, Fig. 3) and the in-batch retrieval accuracies.

    image_emb, text_emb: (B, E) unit-norm rows, row i of each a true pair. logit_scale: the multiplier
    e^t > 0 (``model.logit_scale``). Returns ``(loss, {"acc_i2t", "acc_t2i"})``: an accuracy is the share
    of rows whose true partner has the highest logit (ties, e.g. a caption twice in the batch, count).
    """
    _check_embeddings(image_emb, text_emb)
    check_real(logit_scale, "logit_scale", 0.0, low_open=True, hint=" (the multiplier e^t, e.g. model.logit_scale)")
    logits = logit_scale * image_emb @ text_emb.T                  # logits_ij = e^t <I_i, T_j>   (Fig. 3)
    labels = torch.arange(logits.shape[0], device=logits.device)   # the true pairs are the diagonal
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2   # symmetric CE (Fig. 3)
    with torch.no_grad():
        diag = logits.diagonal()
        terms = {"acc_i2t": (diag >= logits.max(dim=1).values).float().mean(),
                 "acc_t2i": (diag >= logits.max(dim=0).values).float().mean()}
    return loss, terms


def clip_train_loss(model: TinyCLIP, batch: tuple[Tensor, Tensor], generator: torch.Generator | None = None
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`clip_loss` as a :func:`minidiff.train.train` loss: batch = (images (B, 3, S, S), tokens (B, L))."""
    if not isinstance(model, TinyCLIP):
        raise TypeError(f"model must be a TinyCLIP, got {type(model).__name__}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("a CLIP batch is (images (B, 3, S, S), tokens (B, L)); train on the dataset (images, tokens)")
    images, tokens = batch
    return clip_loss(*model(images, tokens), model.logit_scale)


@torch.no_grad()
def clip_score(model: TinyCLIP, images: Tensor, tokens: Tensor, weight: float = 100.0) -> Tensor:
    """Per-image CLIP score w · max(cos(E_I(image), E_T(caption)), 0) (Hessel et al. 2021, Sec. 3); (B,).

    images (B, 3, S, S) and tokens (B, L) pair up row by row. Hessel et al. use w = 2.5; the default
    w = 100 is torchmetrics' ``CLIPScore`` convention; the seed's table (0.26 for SD) is on the w = 1 scale.
    """
    if not isinstance(model, TinyCLIP):
        raise TypeError(f"model must be a TinyCLIP, got {type(model).__name__}")
    weight = check_real(weight, "weight", 0.0, low_open=True)
    image_emb, text_emb = model(images, tokens)
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"images and tokens must pair up row by row, got {image_emb.shape[0]} images and "
                         f"{text_emb.shape[0]} captions")
    return weight * (image_emb * text_emb).sum(-1).clamp(min=0)


@torch.no_grad()
def zero_shot_accuracy(model: TinyCLIP, images: Tensor, candidate_tokens: Tensor, true_index: Tensor) -> float:
    """"Which caption fits": the share of images whose most similar candidate is the true one (CLIP Sec. 3.1.2).

    images (B, 3, S, S); candidate_tokens (K, L) the captions to choose from; true_index (B,) long in [0, K).
    """
    if not isinstance(model, TinyCLIP):
        raise TypeError(f"model must be a TinyCLIP, got {type(model).__name__}")
    sim = model.similarity(images, candidate_tokens)              # (B, K)
    check_tensor(true_index, "true_index")
    b, k = sim.shape
    if true_index.dtype != torch.long or tuple(true_index.shape) != (b,):
        raise ValueError(f"true_index must be a LongTensor of shape (B,)=({b},), got {true_index.dtype} "
                         f"{tuple(true_index.shape)}")
    if int(true_index.min()) < 0 or int(true_index.max()) >= k:
        raise ValueError(f"true_index must index the K={k} candidates, got values in "
                         f"[{int(true_index.min())}, {int(true_index.max())}]")
    return (sim.argmax(dim=1).cpu() == true_index.cpu()).float().mean().item()

"""minidiff.text: the tiny CLIP — loss vs its formula, masks, EOS pooling, a short training, checkpoints, errors.

The data here is a self-contained synthetic world (one coloured shape per image, caption "a red square"),
tokenized by hand under the shared contract (pad 0, bos 1, eos 2, words from 3).
"""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from minidiff.checkpoint import load_model, save_model
from minidiff.nets import UNet
from minidiff.nets.attention import Attention
from minidiff.text import (BOS_ID, EOS_ID, PAD_ID, ImageEncoder, TextEncoder, TinyCLIP, clip_loss, clip_score,
                           clip_train_loss, empty_tokens, freeze, zero_shot_accuracy)
from minidiff.train import fit

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "yellow": (1.0, 1.0, -1.0)}
SHAPES = ("square", "circle", "cross")
VOCAB = ["<pad>", "<bos>", "<eos>", "a", *COLOURS, *SHAPES]
MAX_LEN = 8


def coloured_shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (n, 3, 32, 32) in [-1, 1] of one shape on black, and labels colour·3 + shape in [0, 12)."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, len(COLOURS), (n,), generator=g)
    shape = torch.randint(0, len(SHAPES), (n,), generator=g)
    cy, cx = torch.randint(8, 24, (2, n, 1, 1), generator=g).float()
    r = torch.randint(4, 8, (n, 1, 1), generator=g).float()
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    dy, dx = (yy - cy).abs(), (xx - cx).abs()
    masks = torch.stack([(dy <= r) & (dx <= r), dy ** 2 + dx ** 2 <= r ** 2,
                         ((dy <= r) & (dx <= r / 3)) | ((dx <= r) & (dy <= r / 3))])    # (3, n, 32, 32)
    mask = masks[shape, torch.arange(n)]
    rgb = torch.tensor(list(COLOURS.values()))[colour]
    images = torch.where(mask[:, None], rgb[:, :, None, None], torch.tensor(-1.0))
    return images, colour * len(SHAPES) + shape


def caption_tokens() -> torch.Tensor:
    """The 12 captions "a <colour> <shape>" as tokens (12, MAX_LEN), row colour·3 + shape."""
    rows = [[BOS_ID, VOCAB.index("a"), VOCAB.index(c), VOCAB.index(s), EOS_ID] for c in COLOURS for s in SHAPES]
    return torch.tensor([r + [PAD_ID] * (MAX_LEN - len(r)) for r in rows])


def small_clip(seed: int = 0) -> TinyCLIP:
    torch.manual_seed(seed)
    return TinyCLIP.build(len(VOCAB), max_len=MAX_LEN, width=32, depth=1, heads=2, embed_dim=32, base_channels=8)


def unit(b: int, e: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, e, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---------------------------------------------------------------- the loss
def test_clip_loss_matches_the_formula():
    """L = ½[−mean_i log softmax_j(l_ij)_i − mean_j log softmax_i(l_ij)_j], l = s·I Tᵀ (CLIP Fig. 3)."""
    img, txt, s = unit(6, 5, 0), unit(6, 5, 1), 3.7
    logits = s * torch.einsum("ie,je->ij", img, txt)
    image_to_text = -(logits.diagonal() - torch.logsumexp(logits, dim=1)).mean()
    text_to_image = -(logits.diagonal() - torch.logsumexp(logits, dim=0)).mean()
    loss, terms = clip_loss(img, txt, s)
    torch.testing.assert_close(loss, (image_to_text + text_to_image) / 2)
    hits_i2t = (logits.argmax(dim=1) == torch.arange(6)).float().mean()
    hits_t2i = (logits.argmax(dim=0) == torch.arange(6)).float().mean()
    assert float(terms["acc_i2t"]) == pytest.approx(float(hits_i2t))
    assert float(terms["acc_t2i"]) == pytest.approx(float(hits_t2i))


def test_clip_loss_known_values():
    eye = torch.eye(8)
    loss, terms = clip_loss(eye, eye, 100.0)      # perfect pairs, orthogonal negatives: log(1 + 7e^{-100})
    assert float(loss) < 1e-30 + 8 * math.exp(-100) and float(terms["acc_i2t"]) == 1.0
    same = F.normalize(torch.ones(8, 4), dim=-1)  # every logit equal: uniform softmax, loss = log B
    loss, terms = clip_loss(same, same, 14.3)
    assert float(loss) == pytest.approx(math.log(8), abs=1e-6)
    assert float(terms["acc_t2i"]) == 1.0          # all tied: ties count as hits


def test_clip_loss_trains_the_temperature():
    model = small_clip()
    images, labels = coloured_shapes(4, 0)
    loss, _ = clip_train_loss(model, (images, caption_tokens()[labels]))
    loss.backward()
    assert model.log_scale.grad is not None and model.log_scale.grad.abs() > 0
    assert model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)   # CLIP's init e^t = 1/0.07
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert model.logit_scale.item() == 100.0                              # clipped at 100 (Sec. 2.5)


# ---------------------------------------------------------------- the text encoder
def _encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(len(VOCAB), max_len=MAX_LEN, width=16, depth=2, heads=2, embed_dim=8).eval()


def test_causal_mask_hides_later_tokens():
    enc, tokens = _encoder(), caption_tokens()[[0, 7]]
    changed = tokens.clone()
    changed[:, 3] = VOCAB.index("circle") if changed[0, 3] != VOCAB.index("circle") else VOCAB.index("square")
    changed[1, 3] = VOCAB.index("square")
    before, after = enc.features(tokens), enc.features(changed)
    torch.testing.assert_close(after[:, :3], before[:, :3])                 # positions 0..2 cannot see token 3
    assert (after[0, 3:5] - before[0, 3:5]).abs().max() > 1e-3               # it and later ones do


def _perturb_pad(enc: TextEncoder, tokens: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features before and after a random change of the input at position ``pad`` (a constant shift
    would be removed by the LayerNorms)."""
    before = enc.features(tokens)
    with torch.no_grad():
        enc.position_embedding[pad] += torch.randn(16, generator=torch.Generator().manual_seed(0))
    return before, enc.features(tokens)


def test_padding_mask_hides_pad_tokens(monkeypatch):
    """Perturb the input at one pad position: only that position's feature changes."""
    tokens, pad = caption_tokens()[:2], 5                                    # eos at 4, pads at 5, 6, 7
    others = [i for i in range(MAX_LEN) if i != pad]
    before, after = _perturb_pad(_encoder(), tokens, pad)
    torch.testing.assert_close(after[:, others], before[:, others])
    assert (after[:, pad] - before[:, pad]).abs().max() > 1e-3
    # the check has teeth: with the causal mask alone, the later pads (6, 7) read position 5
    def causal_only(t: torch.Tensor) -> torch.Tensor:
        return torch.ones(t.shape[1], t.shape[1], dtype=torch.bool).tril().expand(t.shape[0], -1, -1)
    monkeypatch.setattr("minidiff.text.attention_mask", causal_only)
    before, after = _perturb_pad(_encoder(), tokens, pad)
    torch.testing.assert_close(after[:, :pad], before[:, :pad])
    assert (after[:, pad + 1:] - before[:, pad + 1:]).abs().max() > 1e-3


def test_pooled_feature_is_taken_at_eos():
    enc = _encoder()
    tokens = torch.tensor([[BOS_ID, 3, 4, 7, EOS_ID, 0, 0, 0],
                           [BOS_ID, EOS_ID, 0, 0, 0, 0, 0, 0],                # the empty caption
                           [BOS_ID, 3, 5, 8, 3, 6, 9, EOS_ID]])
    feats, pooled = enc.features(tokens), enc(tokens)
    torch.testing.assert_close(pooled, enc.projection(feats[[0, 1, 2], [4, 1, 7]]))
    torch.testing.assert_close(enc(tokens[1:2, :2]), pooled[1:2])             # padding does not change it
    torch.testing.assert_close(enc(tokens[2:]), pooled[2:])                   # nor does the rest of the batch


def test_empty_tokens_and_null_context():
    assert empty_tokens(2, 5).tolist() == [[BOS_ID, EOS_ID, PAD_ID, PAD_ID, PAD_ID]] * 2
    model = small_clip().eval()
    null = model.null_context()
    assert null.shape == (1, MAX_LEN, model.context_dim)
    torch.testing.assert_close(null, model.token_features(empty_tokens(1, MAX_LEN)))


def test_masked_attention_is_softmax_over_allowed_keys():
    torch.manual_seed(0)
    attn, x = Attention(8, heads=1), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, False, True, False]]).expand(4, 4)[None].expand(2, 4, 4)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    scores = (q @ k.transpose(1, 2) / math.sqrt(8)).masked_fill(~mask, -math.inf)
    torch.testing.assert_close(attn(x, mask=mask), attn.to_out[0](scores.softmax(-1) @ v))
    with pytest.raises(ValueError, match=r"mask must be a bool tensor \(B, N, L\)"):
        attn(x, mask=mask.float())


# ---------------------------------------------------------------- the model
def test_embeddings_are_unit_norm_and_similarity_is_cosine():
    model = small_clip().eval()
    images, labels = coloured_shapes(5, 1)
    tokens = caption_tokens()
    img, txt = model.encode_image(images), model.encode_text(tokens)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(12))
    raw_i, raw_t = model.image_encoder(images), model.text_encoder(tokens)
    cos = F.cosine_similarity(raw_i[:, None], raw_t[None], dim=-1)
    torch.testing.assert_close(model.similarity(images, tokens), cos)
    score = clip_score(model, images, tokens[labels])                        # 100 · max(cos, 0), per image
    torch.testing.assert_close(score, 100 * cos[torch.arange(5), labels].clamp(min=0))
    torch.testing.assert_close(clip_score(model, images, tokens[labels], weight=2.5), score / 40)


def test_token_features_feed_the_cross_attention_unet():
    model = freeze(small_clip())
    context = model.token_features(caption_tokens()[:2])
    net = UNet(image_size=8, in_channels=4, base_channels=16, attention_levels=(1,), context_dim=model.context_dim)
    out = net(torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), {"context": context})
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_freeze():
    model = freeze(small_clip())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    images, labels = coloured_shapes(4, 0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, clip_train_loss, (images, caption_tokens()[labels]), steps=1, progress=False)


def test_save_and_load_round_trip(tmp_path):
    model = small_clip().eval()
    with torch.no_grad():
        model.log_scale.fill_(3.0)
    path = save_model(model, tmp_path / "clip")
    loaded = load_model(path)
    assert isinstance(loaded, TinyCLIP) and loaded.text_encoder.max_len == MAX_LEN
    images, _ = coloured_shapes(3, 2)
    torch.testing.assert_close(loaded.similarity(images, caption_tokens()), model.similarity(images, caption_tokens()))
    torch.testing.assert_close(loaded.token_features(caption_tokens()), model.token_features(caption_tokens()))
    assert loaded.logit_scale.item() == pytest.approx(math.exp(3.0))


# ---------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = small_clip()
    images, labels = coloured_shapes(2000, 0)
    start = time.perf_counter()
    losses = fit(model, clip_train_loss, (images, caption_tokens()[labels]), steps=400, batch_size=64, lr=3e-3,
                 progress=False)
    return freeze(model), losses, time.perf_counter() - start


def test_short_training_reaches_high_zero_shot_accuracy(trained):
    model, losses, seconds = trained
    images, labels = coloured_shapes(500, 1)                                 # fresh images
    accuracy = zero_shot_accuracy(model, images, caption_tokens(), labels)
    print(f"TinyCLIP: 400 steps in {seconds:.1f} s, zero-shot accuracy {accuracy:.3f} on 12 captions "
          f"(chance {1 / 12:.3f}), loss {losses[0]:.2f} -> {sum(losses[-20:]) / 20:.2f}")
    assert accuracy >= 0.85                                                  # measured 0.97
    assert sum(losses[-20:]) / 20 < losses[0] - 2


def test_zero_shot_accuracy_and_clip_score_read_the_similarity(trained):
    model = trained[0]
    images, labels = coloured_shapes(60, 3)
    tokens = caption_tokens()
    predicted = model.similarity(images, tokens).argmax(dim=1)
    assert zero_shot_accuracy(model, images, tokens, labels) == pytest.approx((predicted == labels).float().mean().item())
    right = clip_score(model, images, tokens[labels]).mean()
    wrong = clip_score(model, images, tokens[(labels + 1) % 12]).mean()       # same shape class, next colour / shape
    assert right > wrong + 10


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("tokens, error, match", [
    (caption_tokens().float(), TypeError, "tokens must be a LongTensor"),
    (caption_tokens()[0], ValueError, r"shape \(B, L\)"),
    (caption_tokens()[None], ValueError, r"shape \(B, L\)"),
    (torch.ones(2, MAX_LEN + 1, dtype=torch.long).index_fill_(1, torch.tensor([1]), EOS_ID), ValueError, "max_len=8"),
    (caption_tokens().index_fill(1, torch.tensor([3]), len(VOCAB)), ValueError, r"ids in \[0, vocab_size\)"),
    (caption_tokens()[:, :3], ValueError, "needs an EOS token"),
    (caption_tokens()[:, 1:], ValueError, "must start with the BOS token"),
    ([[1, 2]], TypeError, "tokens must be a torch.Tensor"),
])
def test_bad_tokens(tokens, error, match):
    with pytest.raises(error, match=match):
        small_clip().encode_text(tokens)


@pytest.mark.parametrize("images", [torch.zeros(2, 1, 32, 32), torch.zeros(2, 3, 28, 28), torch.zeros(3, 32, 32),
                                    torch.zeros(0, 3, 32, 32)])
def test_bad_images(images):
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 32, 32\)"):
        small_clip().encode_image(images)
    with pytest.raises(TypeError, match="floating-point"):
        small_clip().encode_image(torch.zeros(2, 3, 32, 32, dtype=torch.long))


@pytest.mark.parametrize("build, error, match", [
    (lambda: TextEncoder(len(VOCAB), embed_dim=0), ValueError, "embed_dim must be an int >= 1"),
    (lambda: ImageEncoder(embed_dim=-4), ValueError, "embed_dim must be an int >= 1"),
    (lambda: TinyCLIP(ImageEncoder(8), TextEncoder(len(VOCAB), embed_dim=8), 0), ValueError, "embed_dim must be"),
    (lambda: TextEncoder(len(VOCAB), width=30, heads=4), ValueError, "heads=4 must divide the text width=30"),
    (lambda: TextEncoder(3), ValueError, "vocab_size must be an int >= 4"),
    (lambda: TextEncoder(len(VOCAB), max_len=1.5), TypeError, "max_len must be an int"),
    (lambda: ImageEncoder(image_size=30), ValueError, r"image_size=30 must be divisible by 2\*\*len"),
    (lambda: TinyCLIP(ImageEncoder(8), TextEncoder(len(VOCAB), embed_dim=8), 8, init_log_scale=float("nan")),
     ValueError, "init_log_scale must be finite"),
    (lambda: TinyCLIP(ImageEncoder(8), TextEncoder(len(VOCAB), embed_dim=16), 8), ValueError, "text_encoder outputs"),
    (lambda: TinyCLIP(TextEncoder(len(VOCAB), embed_dim=8), ImageEncoder(8), 8), TypeError, "must be a minidiff.text"),
])
def test_bad_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_loss_and_metric_arguments():
    img, txt = unit(4, 5, 0), unit(4, 5, 1)
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        clip_loss(img, txt, 0.0)
    with pytest.raises(ValueError, match="logit_scale must be finite"):
        clip_loss(img, txt, torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="must pair up row by row"):
        clip_loss(img, txt[:3], 10.0)
    with pytest.raises(ValueError, match="unit norm"):
        clip_loss(2 * img, txt, 10.0)
    with pytest.raises(ValueError, match=r"shape \(B, E\)"):
        clip_loss(img[0], txt[0], 10.0)
    model = small_clip()
    images, labels = coloured_shapes(4, 0)
    tokens = caption_tokens()
    with pytest.raises(ValueError, match="weight must be > 0"):
        clip_score(model, images, tokens[labels], weight=0)
    with pytest.raises(ValueError, match="must pair up row by row"):
        clip_score(model, images, tokens)
    with pytest.raises(ValueError, match=r"true_index must index the K=12"):
        zero_shot_accuracy(model, images, tokens, labels + 12)
    with pytest.raises(ValueError, match=r"true_index must be a LongTensor of shape \(B,\)=\(4,\)"):
        zero_shot_accuracy(model, images, tokens, labels[:2])
    with pytest.raises(ValueError, match=r"a CLIP batch is \(images"):
        clip_train_loss(model, images)
    with pytest.raises(TypeError, match="model must be a TinyCLIP"):
        clip_score(torch.nn.Linear(2, 2), images, tokens[labels])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        freeze("clip")

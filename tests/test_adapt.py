"""minidiff.adapt: new words, Textual Inversion (only the new row moves), DreamBooth's prior-preservation
loss and the Concept-Slider target, each checked against its formula."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from minidiff import (
    ClassifierFreeGuidance,
    NoiseSchedule,
    TextEncoder,
    UNet,
    diffusion_loss,
    fit,
    freeze,
    train,
    zip_batches,
)
from minidiff.adapt import (
    ExtendedTokenizer,
    TextConditioned,
    add_token_embeddings,
    prior_preservation_loss,
    slider_loss,
    slider_target,
)
from minidiff.data.shapes import WordTokenizer
from minidiff.lora import inject_lora, lora_parameters
from minidiff.train import random_batches

SCHEDULE = NoiseSchedule.linear(1000)


def tiny_unet(context_dim: int = 16, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(image_size=8, in_channels=4, base_channels=16, channel_mults=(1, 2), attention_levels=(1,),
               context_dim=context_dim, groups=8)
    with torch.no_grad():                      # a non-zero output conv, so the context reaches the output
        net.out[-1].weight.normal_(0, 0.05)
    return net.eval()


def encoder_for(tokenizer: WordTokenizer, seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(tokenizer.vocab_size, max_len=tokenizer.max_len, width=16, depth=1, heads=2, embed_dim=16)


def expected_l_simple(model, x0, cond, generator):
    """‖ε − ε̂(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖² (mean), drawing t then ε as l_simple does."""
    t = torch.randint(0, SCHEDULE.T, (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    ab = SCHEDULE.alpha_bar[t].float().reshape(-1, 1, 1, 1)
    return (eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, cond)).pow(2).mean()


# --------------------------------------------------------------------------- new words
def test_extended_tokenizer():
    base = WordTokenizer(max_len=8)
    tok = ExtendedTokenizer(["sks", "zorp"], max_len=8)
    assert tok.new_ids == [base.vocab_size, base.vocab_size + 1] and tok.vocab_size == base.vocab_size + 2
    ids = tok.encode("a red sks")[0].tolist()
    assert ids[:4] == [tok.bos_id, tok.ids["a"], tok.ids["red"], tok.new_ids[0]]
    assert torch.equal(tok.encode("a red circle"), base.encode("a red circle"))       # old captions unchanged
    assert tok.decode(tok.encode(["a star"])) == ["a star"]
    with pytest.raises(ValueError, match="already in the vocabulary"):
        ExtendedTokenizer(["circle"])
    with pytest.raises(ValueError, match="duplicates"):
        ExtendedTokenizer(["sks", "sks"])
    with pytest.raises(ValueError, match="lower-case word"):
        ExtendedTokenizer(["Sks"])
    with pytest.raises(TypeError, match="non-empty list"):
        ExtendedTokenizer("sks")


def test_add_token_embeddings(generator):
    base_tok, tok = WordTokenizer(max_len=8), ExtendedTokenizer(["sks"], max_len=8)
    encoder = freeze(encoder_for(base_tok))
    old = base_tok.encode(["a red circle", "a blue square"])
    before = encoder.features(old)
    shape_id = base_tok.ids["circle"]
    new = add_token_embeddings(encoder, 1, init_ids=[shape_id])
    assert new == tok.new_ids and encoder.vocab_size == tok.vocab_size
    assert torch.equal(encoder.features(old), before)                                   # old captions: identical
    weight = encoder.token_embedding.weight
    assert torch.equal(weight[new[0]], weight[shape_id])                                # initialised from "circle"
    assert torch.equal(encoder.features(tok.encode("a red sks")), before[:1])          # … so "sks" reads as it
    assert [n for n, p in encoder.named_parameters() if p.requires_grad] == ["token_embedding.new_rows"]
    with pytest.raises(ValueError, match="already has new token rows"):
        add_token_embeddings(encoder, 1)
    other = freeze(encoder_for(base_tok))
    with pytest.raises(ValueError, match="one existing id per new row"):
        add_token_embeddings(other, 2, init_ids=[3])
    with pytest.raises(ValueError, match="init_ids"):
        add_token_embeddings(other, 1, init_ids=[10_000])
    with pytest.raises(ValueError, match="n \\(new tokens\\)"):
        add_token_embeddings(other, 0)
    with pytest.raises(TypeError, match="TextEncoder"):
        add_token_embeddings(nn.Linear(2, 2))
    ids = add_token_embeddings(other, 1, trainable=False, generator=generator)          # a DreamBooth identifier
    assert not other.token_embedding.new_rows.requires_grad and ids == new
    assert abs(other.token_embedding.new_rows.std().item() - 0.02) < 0.01


def test_textual_inversion_moves_only_the_new_row(generator):
    tok = ExtendedTokenizer(["sks"], max_len=8)
    encoder = freeze(encoder_for(WordTokenizer(max_len=8)))
    unet = freeze(tiny_unet())
    new_id = add_token_embeddings(encoder, 1, init_ids=[tok.ids["circle"]])[0]
    model = TextConditioned(unet, encoder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    latents = torch.randn(6, 4, 8, 8, generator=generator)
    tokens = tok.encode(["a sks", "a red sks", "a sks above a circle"] * 2)
    fit(model, diffusion_loss(SCHEDULE), (latents, tokens), steps=3, batch_size=4, lr=1e-2, weight_decay=0.1,
        progress=False)
    after = model.state_dict()
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    assert moved == ["text_encoder.token_embedding.new_rows"]                # every other weight bit-identical
    table_before = torch.cat([before["text_encoder.token_embedding.base.weight"],
                              before["text_encoder.token_embedding.new_rows"]])
    table_after = encoder.token_embedding.weight.detach()
    changed = (table_after != table_before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [new_id]                                                     # only the new row
    # the wrapper passes other entries on and reads tokens from a mapping too
    out = model(latents[:2], torch.tensor([5, 9]), {"tokens": tokens[:2]})
    torch.testing.assert_close(out, unet(latents[:2], torch.tensor([5, 9]), {"context": encoder.features(tokens[:2])}))
    with pytest.raises(ValueError, match="'tokens'"):
        model(latents[:2], torch.tensor([5, 9]), {"context": torch.zeros(2, 8, 16)})
    # classifier-free guidance on tokens: the null is the empty caption
    cfg = ClassifierFreeGuidance(model, 2.0)
    t2, empty = torch.tensor([5, 9]), tok.encode(["", ""])
    want = 3 * model(latents[:2], t2, tokens[:2]) - 2 * model(latents[:2], t2, empty)
    torch.testing.assert_close(cfg(latents[:2], t2, tokens[:2]), want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- DreamBooth
def test_prior_preservation_loss_equals_its_formula(generator):
    model = tiny_unet()
    inst = (torch.randn(3, 4, 8, 8, generator=generator), {"context": torch.randn(3, 5, 16, generator=generator)})
    prior = (torch.randn(4, 4, 8, 8, generator=generator), {"context": torch.randn(4, 5, 16, generator=generator)})
    lam = 0.7
    loss, terms = prior_preservation_loss(SCHEDULE, lam)(model, {"instance": inst, "prior": prior},
                                                         torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    want_inst = expected_l_simple(model, *inst, g)       # ‖ε − ε̂(z_t, t, c_inst)‖²
    want_prior = expected_l_simple(model, *prior, g)     # ‖ε' − ε̂(z'_t', t', c_class)‖²
    torch.testing.assert_close(terms["instance"], want_inst)
    torch.testing.assert_close(terms["prior"], want_prior)
    torch.testing.assert_close(loss, want_inst + lam * want_prior)               # Ruiz et al. eq. 2
    loss0, _ = prior_preservation_loss(SCHEDULE, 0.0)(model, {"instance": inst, "prior": prior},
                                                       torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss0, want_inst)
    with pytest.raises(ValueError, match="prior_weight"):
        prior_preservation_loss(SCHEDULE, -1.0)
    with pytest.raises(ValueError, match="prior_weight"):
        prior_preservation_loss(SCHEDULE, float("nan"))
    with pytest.raises(TypeError, match="NoiseSchedule"):
        prior_preservation_loss("linear")
    with pytest.raises(ValueError, match="DreamBooth batch"):
        prior_preservation_loss(SCHEDULE)(model, inst, generator)


def test_dreambooth_trains_with_zip_batches(generator):
    model = tiny_unet()
    inject_lora(model, ["to_q", "to_k", "to_v", "to_out.0"], r=2)
    ctx = torch.randn(1, 5, 16, generator=generator)
    inst = (torch.randn(4, 4, 8, 8, generator=generator), {"context": ctx.expand(4, -1, -1).clone()})
    prior = (torch.randn(8, 4, 8, 8, generator=generator), {"context": torch.randn(8, 5, 16, generator=generator)})
    g = torch.Generator().manual_seed(1)
    data = zip_batches(instance=random_batches(inst, 2, g), prior=random_batches(prior, 2, g))
    records = list(train(model, prior_preservation_loss(SCHEDULE, 1.0), data, steps=2, progress=False))
    assert len(records) == 2 and {"instance", "prior"} <= set(records[-1])
    assert all(torch.count_nonzero(p) > 0 for p in lora_parameters(model))


# --------------------------------------------------------------------------- Concept Sliders
def slider_setup(generator):
    base = tiny_unet()
    model = copy.deepcopy(base)
    inject_lora(model, ["to_k", "to_v"], r=2, name="slider")
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.3, generator=generator)           # a LoRA that changes the output
    ctx = {name: {"context": torch.randn(1, 5, 16, generator=generator)}
           for name in ("target", "big_red", "small_red", "big_blue", "small_blue")}
    return base, model, ctx


def test_slider_target_equals_its_formula(generator):
    base, model, ctx = slider_setup(generator)
    x, t = torch.randn(3, 4, 8, 8, generator=generator), torch.tensor([10, 400, 900])
    eta = 1.5
    plus, minus = [ctx["big_red"], ctx["big_blue"]], [ctx["small_red"], ctx["small_blue"]]
    got = slider_target(model, x, t, ctx["target"], plus, minus, eta)

    def eps(c):                                                   # the frozen base θ, batch-1 prompts repeated
        return base(x, t, {"context": c["context"].expand(3, -1, -1)})
    want = eps(ctx["target"]) + eta * sum(eps(p) - eps(m) for p, m in zip(plus, minus))   # Gandikota et al. Sec. 3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    adapted = model(x, t, {"context": ctx["target"]["context"].expand(3, -1, -1)})
    assert (adapted - eps(ctx["target"])).abs().max() > 1e-3                     # the LoRA was really off
    single = slider_target(model, x, t, ctx["target"], ctx["big_red"], ctx["small_red"], eta)   # one concept, no list
    torch.testing.assert_close(single, eps(ctx["target"]) + eta * (eps(ctx["big_red"]) - eps(ctx["small_red"])),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pair up"):
        slider_target(model, x, t, ctx["target"], plus, minus[:1])
    with pytest.raises(ValueError, match="eta"):
        slider_target(model, x, t, ctx["target"], plus, minus, float("inf"))
    with pytest.raises(ValueError, match="batch 1"):
        slider_target(model, x, t, {"context": torch.zeros(2, 5, 16)}, plus, minus)


def test_slider_loss(generator):
    base, model, ctx = slider_setup(generator)
    x0 = torch.randn(2, 4, 8, 8, generator=generator)
    loss_fn = slider_loss(SCHEDULE, ctx["target"], ctx["big_red"], ctx["small_red"], eta=2.0)
    loss = loss_fn(model, x0, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    t = torch.randint(0, SCHEDULE.T, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = SCHEDULE.alpha_bar[t].float().reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def cond(c):
        return {"context": c["context"].expand(2, -1, -1)}
    target = base(x_t, t, cond(ctx["target"])) + 2.0 * (base(x_t, t, cond(ctx["big_red"]))
                                                        - base(x_t, t, cond(ctx["small_red"])))
    torch.testing.assert_close(loss, (model(x_t, t, cond(ctx["target"])) - target).pow(2).mean(), atol=1e-5, rtol=1e-5)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    losses = fit(model, loss_fn, x0, steps=3, batch_size=2, lr=1e-2, progress=False)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    with pytest.raises(ValueError, match="inject_lora"):
        loss_fn(base, x0, generator)
    with pytest.raises(ValueError, match="pair up"):
        slider_loss(SCHEDULE, ctx["target"], [ctx["big_red"], ctx["big_blue"]], [ctx["small_red"]])
    with pytest.raises(ValueError, match="non-empty list"):
        slider_loss(SCHEDULE, ctx["target"], [ctx["big_red"]], [])

"""minidiff.nets.unet and .attention: ports as modules (skips included), cross-attention checked against
diffusers, 1-D signals and non-square images, and every bad constructor/forward input."""
import math

import pytest
import torch
from torch import nn

from minidiff.nets import UNet
from minidiff.nets.attention import Attention, SelfAttention, SpatialTransformer, TransformerBlock
from minidiff.nets.ports import Port, add_residuals, capture, find_ports
from minidiff.nets.unet import ResBlock


def _live(net, std=0.1):
    """The output conv starts at zero; give it weights so ε̂ depends on everything upstream."""
    torch.nn.init.normal_(net.out[-1].weight, std=std)
    return net.eval()


def _encoder_ports(net):
    return [n for n in net.ports if n == "in" or n.startswith("down.")]


def _no_hooks(net):
    return all(not m._forward_hooks for m in net.modules())


@pytest.fixture
def net():
    torch.manual_seed(0)
    return _live(UNet(image_size=8, base_channels=16, channel_mults=(1, 2), num_res_blocks=2, attention_levels=(1,)))


@pytest.fixture
def xt():
    torch.manual_seed(1)
    return torch.randn(3, 1, 8, 8), torch.tensor([3, 300, 900])


# ---------------------------------------------------------------- ports

def test_every_port_is_a_module_and_skips_follow_the_encoder(net, xt):
    assert set(find_ports(net)) == set(net.ports)
    assert all(isinstance(p, Port) for p in find_ports(net).values())
    enc = _encoder_ports(net)
    assert [n for n in net.ports if n.startswith("skip.")] == [f"skip.{k}" for k in range(len(enc))]
    with capture(net) as feats:
        net(*xt)
    for k, name in enumerate(enc):       # skip.k is the k-th encoder feature, as the decoder reads it
        assert torch.equal(feats[f"skip.{k}"], feats[name]), (k, name)
        assert net.ports[f"skip.{k}"] == net.ports[name]
    for name, f in feats.items():
        assert f.shape[1:] == net.port_shape(name), name


def _decoder_by_hand(net, h, skips, emb):
    """The decoder written out from the modules (no forward(), no ports): cat skip, ResBlock, attention, unpool."""
    for level, unpool in zip(net.up, net.unpool):
        for block, attn in zip(level.blocks, level.attn):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            h = h if isinstance(attn, nn.Identity) else attn(h)
        h = unpool(h)
    return net.out(h)


def test_mid_residual_equals_the_hand_computed_decoder(net, xt):
    x, t = xt
    r = torch.randn(3, *net.port_shape("mid"))
    with capture(net) as feats:                   # the unsteered features
        base = net(x, t)
    with add_residuals(net, {"mid": r}):
        eps = net(x, t)
    expect = _decoder_by_hand(net, feats["mid"] + r, [feats[n] for n in _encoder_ports(net)], net.time_embed(t))
    assert torch.allclose(eps, expect, atol=1e-6)
    assert torch.allclose(base, _decoder_by_hand(net, feats["mid"], [feats[n] for n in _encoder_ports(net)],
                                                 net.time_embed(t)), atol=1e-6)
    assert (eps - base).abs().max() > 1e-3


def test_skip_residual_changes_only_what_the_decoder_reads(net, xt):
    x, t = xt
    base, f0 = net(x, t, return_features=True)
    k, name = 1, "down.0.0"                        # skip.1 carries down.0.0's feature to the decoder
    r = torch.randn(3, *net.port_shape(f"skip.{k}"))
    steered, f1 = net(x, t, residuals={f"skip.{k}": r}, return_features=True)
    for n in _encoder_ports(net) + ["mid"]:       # the encoder's main stream is untouched
        assert torch.equal(f1[n], f0[n]), n
    assert torch.allclose(f1[f"skip.{k}"], f0[name] + r)
    assert (steered - base).abs().max() > 1e-3
    # the same residual on the main-stream port changes the encoder downstream of it too
    _, f2 = net(x, t, residuals={name: r}, return_features=True)
    assert not torch.allclose(f2["mid"], f0["mid"])


def test_hooks_are_removed_and_the_model_is_bit_identical(net, xt):
    before = net(*xt)
    res = {n: torch.randn(3, *net.port_shape(n)) for n in ("in", "down.0.pool", "mid", "skip.0", "up.0.1")}
    with add_residuals(net, res):
        steered = net(*xt)
    hooks = add_residuals(net, res)
    assert torch.equal(net(*xt), steered)
    hooks.remove()
    assert _no_hooks(net)
    assert torch.equal(net(*xt), before)
    # forward(residuals=...) is the same code path and leaves nothing behind either
    assert torch.equal(net(*xt, residuals=res), steered)
    eps, feats = net(*xt, return_features=True)
    assert torch.equal(eps, before) and list(feats) == list(net.ports)
    assert _no_hooks(net)


def test_forward_residual_errors(net, xt):
    with pytest.raises(KeyError, match="unknown port 'skip.99'"):
        net(*xt, residuals={"skip.99": torch.zeros(1)})
    with pytest.raises(TypeError, match="residuals must be a mapping"):
        net(*xt, residuals=[("mid", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"residual for port 'skip.0' must have shape \(B, 16, 8, 8\)"):
        net(*xt, residuals={"skip.0": torch.zeros(3, 16, 4, 4)})
    assert _no_hooks(net)


# ---------------------------------------------------------------- attention vs diffusers

def test_attention_is_softmax_qk_v():
    """Vaswani et al. eq. 1 per head, written out with an explicit softmax."""
    torch.manual_seed(0)
    attn = Attention(16, heads=2, context_dim=6)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 3, 6)
    q, k, v = attn.to_q(x), attn.to_k(c), attn.to_v(c)
    heads = []
    for h in range(2):
        s = slice(8 * h, 8 * h + 8)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(8), dim=-1)
        heads.append(w @ v[..., s])
    assert torch.allclose(attn(x, c), attn.to_out[0](torch.cat(heads, -1)), atol=1e-6)
    with pytest.raises(ValueError, match="needs context"):
        attn(x)
    with pytest.raises(ValueError, match=r"context must have shape \(B, L, context_dim\)=\(B, L, 6\)"):
        attn(x, torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="takes no context"):
        Attention(16, heads=2)(x, c)
    with pytest.raises(ValueError, match="divisible by heads=3"):
        Attention(16, heads=3)


def test_transformer_block_matches_diffusers_basic_transformer_block():
    from diffusers.models.attention import BasicTransformerBlock
    torch.manual_seed(0)
    ours = TransformerBlock(32, heads=4, context_dim=12).eval()
    theirs = BasicTransformerBlock(32, 4, 8, cross_attention_dim=12, activation_fn="geglu", attention_bias=False).eval()
    theirs.load_state_dict(ours.state_dict())                      # strict: every name matches
    x, c = torch.randn(2, 10, 32), torch.randn(2, 7, 12)
    with torch.no_grad():
        assert torch.allclose(ours(x, c), theirs(x, encoder_hidden_states=c), atol=1e-5)


def test_spatial_transformer_matches_diffusers_transformer2d():
    from diffusers import Transformer2DModel
    torch.manual_seed(0)
    ours = SpatialTransformer(32, heads=4, context_dim=12, groups=8).eval()
    theirs = Transformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=32, norm_num_groups=8,
                                cross_attention_dim=12, use_linear_projection=True, num_layers=1).eval()
    theirs.load_state_dict(ours.state_dict())
    x, c = torch.randn(2, 32, 4, 6), torch.randn(2, 5, 12)
    with torch.no_grad():
        assert torch.allclose(ours(x, c), theirs(x, encoder_hidden_states=c).sample, atol=1e-5)


def test_self_attention_matches_diffusers_attention_block():
    from diffusers.models.attention_processor import Attention as DiffusersAttention
    torch.manual_seed(0)
    ours = SelfAttention(32, heads=4, groups=8).eval()
    theirs = DiffusersAttention(32, heads=4, dim_head=8, bias=True, norm_num_groups=8, residual_connection=True).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


# ---------------------------------------------------------------- cross-attention in the U-Net

@pytest.fixture
def text_net():
    torch.manual_seed(0)
    return _live(UNet(image_size=8, base_channels=16, attention_levels=(1,), context_dim=12, num_classes=3))


def test_cross_attention_reads_the_context(text_net):
    torch.manual_seed(2)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 2])
    c1, c2 = torch.randn(2, 7, 12), torch.randn(2, 7, 12)
    e1 = text_net(x, t, {"label": y, "context": c1})
    assert (e1 - text_net(x, t, {"label": y, "context": c2})).abs().max() > 1e-4
    for L in (1, 5, 77):                                     # any number of tokens
        assert text_net(x, t, {"label": y, "context": torch.randn(2, L, 12)}).shape == x.shape
    # the middle block and the attention levels carry the SD-shaped transformer
    assert isinstance(text_net.mid_attn, SpatialTransformer)
    assert all(isinstance(a, SpatialTransformer) for a in text_net.down[1].attn)
    assert text_net.null_cond == 3                            # the label's null; the context's comes from outside


def test_lora_target_names_match_diffusers(text_net):
    """One LoRA target list (to_q, to_k, to_v, to_out.0) serves minidiff's U-Net and diffusers'."""
    names = {n for n, _ in text_net.named_modules()}
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        assert "mid_attn.transformer_blocks.0.attn2." + proj in names
        assert "mid_attn.transformer_blocks.0.attn1." + proj in names
    assert isinstance(text_net.get_submodule("mid_attn.transformer_blocks.0.attn2.to_out.0"), nn.Linear)
    assert text_net.mid_attn.transformer_blocks[0].attn2.to_k.in_features == 12


def test_text_only_model_takes_the_context_as_cond():
    torch.manual_seed(0)
    net = _live(UNet(image_size=8, base_channels=16, context_dim=12))
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.randn(2, 4, 12)
    assert torch.equal(net(x, t, c), net(x, t, {"context": c, "c_add": torch.zeros(2, 3)}))
    assert net.null_cond is None


def test_context_errors(text_net):
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"cond\['context'\] must have shape \(B, L, D\)=\(2, L, 12\)"):
        text_net(x, t, {"label": y, "context": torch.randn(2, 5, 16)})
    with pytest.raises(ValueError, match=r"\(B, L, D\)=\(2, L, 12\) with L >= 1"):
        text_net(x, t, {"label": y, "context": torch.randn(3, 5, 12)})
    with pytest.raises(ValueError, match="L >= 1"):
        text_net(x, t, {"label": y, "context": torch.randn(2, 0, 12)})
    with pytest.raises(ValueError, match=r"must have shape"):
        text_net(x, t, {"label": y, "context": torch.randn(2, 12)})
    with pytest.raises(TypeError, match="float tensor"):
        text_net(x, t, {"label": y, "context": torch.zeros(2, 5, 12, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"cross-attends to tokens \(context_dim=12\)"):
        text_net(x, t, {"label": y})
    with pytest.raises(ValueError, match="class-conditional"):
        text_net(x, t, {"context": torch.randn(2, 5, 12)})
    plain = UNet(image_size=8, base_channels=16)
    with pytest.raises(ValueError, match=r"no cross-attention \(context_dim=None\)"):
        plain(x, t, {"context": torch.randn(2, 5, 12)})


# ---------------------------------------------------------------- 1-D signals, non-square images

def test_ecg_shaped_signals():
    """Chapter 9's data: 12 leads × 1000 samples."""
    torch.manual_seed(0)
    net = _live(UNet(image_size=1000, in_channels=12, base_channels=16, channel_mults=(1, 2, 2), dims=1,
                     attention_levels=(2,)))
    x, t = torch.randn(2, 12, 1000), torch.tensor([0, 999])
    with torch.no_grad():
        eps, feats = net(x, t, return_features=True)
    assert eps.shape == x.shape and eps.abs().max() > 0
    assert net.port_shape("mid") == (32, 250) and net.port_shape("skip.0") == (16, 1000)
    for name, f in feats.items():
        assert f.shape[1:] == net.port_shape(name), name
    assert not any(isinstance(m, nn.Conv2d) for m in net.modules())
    with pytest.raises(ValueError, match=r"x must have shape \(B, 12, 1000\)"):
        net(torch.randn(2, 12, 1000, 1), t)
    with pytest.raises(ValueError, match=r"nearest valid sizes to 1001: 1000 or 1004"):
        UNet(image_size=1001, in_channels=12, channel_mults=(1, 2, 2), dims=1)


def test_1d_block_is_the_2d_block_on_a_height_one_image():
    """A 3-tap Conv1d equals a 3×3 Conv2d whose only non-zero row is the middle one, on (B, C, 1, L):
    the other rows only ever see the zero padding. GroupNorm and attention see the same positions."""
    torch.manual_seed(0)
    b1, b2 = ResBlock(8, 16, 32, groups=4, dims=1), ResBlock(8, 16, 32, groups=4, dims=2)
    state = {}
    for k, v in b1.state_dict().items():
        if v.ndim == 3:                                      # conv weight (out, in, k) -> (out, in, kh, k)
            w = torch.zeros(v.shape[0], v.shape[1], v.shape[2], v.shape[2])
            w[:, :, v.shape[2] // 2] = v
            v = w
        state[k] = v
    b2.load_state_dict(state)
    x, emb = torch.randn(2, 8, 20), torch.randn(2, 32)
    assert torch.allclose(b1(x, emb), b2(x[:, :, None], emb)[:, :, 0], atol=1e-5)
    attn = SelfAttention(16, heads=2, groups=4)
    h = torch.randn(2, 16, 20)
    assert torch.allclose(attn(h), attn(h[:, :, None])[:, :, 0], atol=1e-6)


def test_non_square_images():
    torch.manual_seed(0)
    net = _live(UNet(image_size=(8, 12), base_channels=16, channel_mults=(1, 2), attention_levels=(1,)))
    x, t = torch.randn(2, 1, 8, 12), torch.tensor([4, 40])
    eps, feats = net(x, t, return_features=True)
    assert eps.shape == x.shape and net.port_shape("mid") == (32, 4, 6)
    assert all(f.shape[1:] == net.port_shape(n) for n, f in feats.items())
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 12\)"):
        net(torch.randn(2, 1, 12, 8), t)
    with pytest.raises(ValueError, match=r"nearest valid sizes to 10: 8 or 12"):
        UNet(image_size=(8, 10), channel_mults=(1, 2, 2))


# ---------------------------------------------------------------- bad constructor input

@pytest.mark.parametrize("kwargs, err, match", [
    (dict(image_size=0), ValueError, r"image_size must be an int >= 1, got 0"),
    (dict(image_size=-8), ValueError, "image_size must be an int >= 1"),
    (dict(image_size=8.0), TypeError, "image_size must be an int or a tuple of 2 ints"),
    (dict(image_size=True), TypeError, "image_size must be an int or a tuple"),
    (dict(image_size="8"), TypeError, "image_size must be an int or a tuple"),
    (dict(image_size=(8,)), TypeError, r"tuple of 2 ints \(\(H, W\)\)"),
    (dict(image_size=(8, 8), dims=1), TypeError, r"tuple of 1 ints \(\(L,\)\)"),
    (dict(image_size=10, channel_mults=(1, 2, 2)), ValueError, "nearest valid sizes to 10: 8 or 12"),
    (dict(image_size=2, channel_mults=(1, 2, 2)), ValueError, "nearest valid sizes to 2: 4"),
    (dict(dims=3), ValueError, r"dims must be 1 .* or 2"),
    (dict(dims=True), ValueError, "dims must be 1"),
    (dict(dims=0), ValueError, "dims must be 1"),
    (dict(in_channels=0), ValueError, "in_channels must be an int >= 1"),
    (dict(in_channels=1.5), TypeError, "in_channels must be an int"),
    (dict(in_channels=True), TypeError, "in_channels must be an int"),
    (dict(base_channels=0), ValueError, "base_channels must be an int >= 1"),
    (dict(base_channels=-16), ValueError, "base_channels must be an int >= 1"),
    (dict(base_channels=16.0), TypeError, "base_channels must be an int"),
    (dict(channel_mults=()), TypeError, "channel_mults must be a non-empty sequence"),
    (dict(channel_mults="12"), TypeError, "channel_mults must be a non-empty sequence"),
    (dict(channel_mults=(1, 0)), ValueError, r"channel_mults\[1\] must be an int >= 1"),
    (dict(channel_mults=(1, 2.5)), TypeError, r"channel_mults\[1\] must be an int"),
    (dict(num_res_blocks=0), ValueError, "num_res_blocks must be an int >= 1"),
    (dict(num_res_blocks=True), TypeError, "num_res_blocks must be an int"),
    (dict(attention_levels=(2,)), ValueError, r"attention_levels must be level indices in \[0, 2\)"),
    (dict(attention_levels=(-1,)), ValueError, "attention_levels"),
    (dict(attention_levels=1), TypeError, "attention_levels must be a sequence of level indices"),
    (dict(attention_levels=(0.5,)), ValueError, "attention_levels must be level indices"),
    (dict(num_timesteps=0), ValueError, "num_timesteps must be an int >= 1"),
    (dict(num_classes=0), ValueError, "num_classes must be an int >= 1"),
    (dict(num_classes=2.0), TypeError, "num_classes must be an int"),
    (dict(dropout=1.0), ValueError, r"dropout must be a probability in \[0, 1\)"),
    (dict(dropout=-0.1), ValueError, "dropout must be a probability"),
    (dict(dropout=float("nan")), ValueError, "dropout must be a probability"),
    (dict(dropout=float("inf")), ValueError, "dropout must be a probability"),
    (dict(dropout=True), ValueError, "dropout must be a probability"),
    (dict(groups=0), ValueError, "groups must be an int >= 1"),
    (dict(groups=2.0), TypeError, "groups must be an int"),
    (dict(base_channels=12, groups=8), ValueError, r"groups=8 must divide the channels of every GroupNorm.* 12 channels"),
    (dict(out_channels=0), ValueError, "out_channels must be an int >= 1"),
    (dict(heads=0), ValueError, "heads must be an int >= 1"),
    (dict(heads=3), ValueError, r"attention width 32 must be divisible by heads=3"),
    (dict(heads=True), TypeError, "heads must be an int"),
    (dict(context_dim=0), ValueError, "context_dim must be an int >= 1"),
    (dict(context_dim=-4), ValueError, "context_dim must be an int >= 1"),
    (dict(context_dim=1.5), TypeError, "context_dim must be an int"),
])
def test_constructor_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        UNet(**{"base_channels": 16, **kwargs})


def test_forward_input_errors():
    net = UNet(image_size=8, base_channels=16)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\), got \(2, 8, 8\)"):
        net(torch.randn(2, 8, 8), t)
    with pytest.raises(TypeError, match=r"x must be a tensor \(B, 1, 8, 8\), got ndarray"):
        net(torch.randn(2, 1, 8, 8).numpy(), t)
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)=\(2,\)"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"t must be in \[0, T\)"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([1, 1000]))


# ---------------------------------------------------------------- dtypes

def test_blocks_follow_the_parameter_dtype():
    """Nothing in the U-Net's blocks assumes float32 (bf16 training, float64 checks)."""
    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float64):
        st = SpatialTransformer(16, heads=2, context_dim=6, groups=4).to(dtype)
        assert st(torch.randn(2, 16, 4, 4, dtype=dtype), torch.randn(2, 3, 6, dtype=dtype)).dtype == dtype
        assert SelfAttention(16, heads=2, groups=4).to(dtype)(torch.randn(2, 16, 5, dtype=dtype)).dtype == dtype
        block = ResBlock(8, 16, 32, groups=4, dims=1).to(dtype)
        assert block(torch.randn(2, 8, 6, dtype=dtype), torch.randn(2, 32, dtype=dtype)).dtype == dtype


def test_whole_unet_in_float64_matches_float32():
    torch.manual_seed(0)
    net = _live(UNet(image_size=8, base_channels=16, attention_levels=(1,), context_dim=6, num_classes=3))
    x, t, c, y = torch.randn(2, 1, 8, 8), torch.tensor([5, 500]), torch.randn(2, 3, 6), torch.tensor([0, 1])
    e32 = net(x, t, {"label": y, "context": c})
    e64 = net.double()(x.double(), t, {"label": y, "context": c})  # a float32 context is cast to the model's dtype
    assert e64.dtype == torch.float64 and torch.allclose(e64.float(), e32, atol=1e-4)


@pytest.mark.parametrize("build, err, match", [
    (lambda: Attention(0), ValueError, "query_dim must be an int >= 1"),
    (lambda: Attention(16, heads=True), TypeError, "heads must be an int"),
    (lambda: Attention(16, heads=2, dim_head=0), ValueError, "dim_head must be an int >= 1"),
    (lambda: Attention(16, context_dim=2.5), TypeError, "context_dim must be an int"),
    (lambda: SelfAttention(16, heads=2, groups=-1), ValueError, "groups must be an int >= 1"),
    (lambda: SelfAttention(12, heads=2, groups=8), ValueError, "groups=8 must divide the channels of every GroupNorm"),
    (lambda: SpatialTransformer(16, heads=2, depth=0), ValueError, "depth must be an int >= 1"),
    (lambda: SpatialTransformer(16, heads=5), ValueError, "divisible by heads=5"),
    (lambda: ResBlock(8, 16, 32, dims=3), ValueError, "dims must be 1"),
])
def test_block_constructor_errors(build, err, match):
    with pytest.raises(err, match=match):
        build()

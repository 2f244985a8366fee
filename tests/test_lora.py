"""minidiff.lora: the LoRA layers against their formula and against peft, injection into minidiff and
diffusers networks, merge/unmerge, save/load, and the diffusers-format file loaded by a tiny SD pipeline."""
from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minidiff import TinyCLIP, UNet, fit
from minidiff.lora import (
    LoRAConv2d,
    LoRALinear,
    adapter_names,
    diffusers_lora_state_dict,
    find_targets,
    inject_lora,
    load_lora,
    lora_disabled,
    lora_layers,
    lora_parameters,
    lora_scales,
    merge_lora,
    read_lora_metadata,
    remove_lora,
    save_diffusers_lora,
    save_lora,
    set_lora_scale,
    trainable_parameter_count,
    unmerge_lora,
)
from minidiff.sd import tiny_pipeline, tiny_unet_config

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


def randomise(model: nn.Module, generator: torch.Generator, name: str | None = None, std: float = 0.1) -> None:
    """Give every A and B (of adapter ``name``) random values, so the adapter changes the output."""
    with torch.no_grad():
        for p in lora_parameters(model, name):
            p.copy_(torch.randn(p.shape, generator=generator) * std)


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(image_size=8, in_channels=4, base_channels=16, channel_mults=(1, 2), attention_levels=(1,),
               context_dim=8, groups=8)
    with torch.no_grad():                      # a non-zero output conv, so every layer reaches the output
        net.out[-1].weight.normal_(0, 0.05)
    return net.eval()


def unet_inputs(generator: torch.Generator, b: int = 2):
    x = torch.randn(b, 4, 8, 8, generator=generator)
    t = torch.tensor([3, 700])[:b]
    return x, t, {"context": torch.randn(b, 5, 8, generator=generator)}


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 10)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(10)


# --------------------------------------------------------------------------- the layers
def test_zero_init_leaves_the_base_output_unchanged(generator):
    lin, conv = nn.Linear(12, 10), nn.Conv2d(3, 6, 3, stride=2, padding=1)
    x, img = torch.randn(5, 12, generator=generator), torch.randn(2, 3, 9, 9, generator=generator)
    want_lin, want_conv = lin(x), conv(img)
    a, b = LoRALinear(lin, r=4, alpha=8, generator=generator), LoRAConv2d(conv, r=2, alpha=1, generator=generator)
    assert torch.equal(a(x), want_lin) and torch.equal(b(img), want_conv)     # B = 0: ΔW = 0 exactly
    assert torch.count_nonzero(a.lora_B["default"]) == 0 and torch.count_nonzero(a.lora_A["default"]) > 0
    assert not lin.weight.requires_grad and not lin.bias.requires_grad         # W₀ frozen
    assert [n for n, p in a.named_parameters() if p.requires_grad] == ["lora_A.default", "lora_B.default"]


def test_linear_forward_is_hu_et_al_eq3(generator):
    lin = nn.Linear(12, 10)
    layer = LoRALinear(lin, r=3, alpha=6.0)
    randomise(layer, generator)
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    x = torch.randn(4, 7, 12, generator=generator)                            # any leading dims
    want = x @ lin.weight.T + lin.bias + (6.0 / 3) * (x @ A.T @ B.T)          # h = W₀x + (α/r) B A x
    torch.testing.assert_close(layer(x), want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.delta_weight("default"), 2.0 * B @ A)


def test_conv_forward_is_conv_with_the_merged_kernel(generator):
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, dilation=1)
    layer = LoRAConv2d(conv, r=2, alpha=5.0)
    randomise(layer, generator)
    A, B = layer.lora_A["default"], layer.lora_B["default"]                   # (r, c_in, 3, 3), (c_out, r)
    assert A.shape == (2, 3, 3, 3) and B.shape == (6, 2)
    delta = 2.5 * torch.einsum("or,rikl->oikl", B, A)                         # ΔW[o,i] = (α/r) Σ_j B[o,j] A[j,i]
    img = torch.randn(2, 3, 9, 9, generator=generator)
    want = F.conv2d(img, conv.weight + delta, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(layer(img), want, atol=1e-6, rtol=1e-5)


def test_a_is_kaiming_uniform_like_nn_linear(generator):
    layer = LoRALinear(nn.Linear(400, 300), r=64, generator=generator)
    A = layer.lora_A["default"]
    bound = 1 / math.sqrt(400)                                                 # gain √(1/3) · √(3/k) = 1/√k
    assert A.abs().max() <= bound and A.abs().max() > 0.99 * bound
    assert abs(A.std().item() - bound / math.sqrt(3)) < 0.02 * bound           # U(−b, b) has std b/√3
    again = LoRALinear(nn.Linear(400, 300), r=64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.lora_A["default"], A)                           # seeded: reproducible
    assert layer.alpha["default"] == 64 and layer.scaling("default") == 1.0   # default α = r


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_merge_unmerge_are_exact(kind, generator):
    base = nn.Linear(16, 12) if kind == "linear" else nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(3, 16, generator=generator) if kind == "linear" else torch.randn(2, 4, 6, 6, generator=generator)
    w0 = base.weight.detach().clone()
    layer = (LoRALinear if kind == "linear" else LoRAConv2d)(base, r=4, alpha=2)
    layer.add_adapter("second", r=2, alpha=3)
    randomise(layer, generator)
    layer.set_scale("second", -0.7)
    out = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), out, atol=1e-6, rtol=1e-6)
    want = w0 + layer.delta_weight("default") + layer.delta_weight("second")
    torch.testing.assert_close(base.weight, want, atol=1e-7, rtol=0)
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.set_scale("second", 1.0)
    layer.unmerge()
    assert (base.weight - w0).abs().max() < 1e-6
    torch.testing.assert_close(layer(x), out, atol=1e-6, rtol=1e-6)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def test_adapter_arithmetic(generator):
    lin = nn.Linear(8, 8)
    layer = LoRALinear(lin, r=2, alpha=2, name="a")
    layer.add_adapter("b", r=3, alpha=1.5)
    randomise(layer, generator)
    x = torch.randn(5, 8, generator=generator)
    da, db = layer.delta_weight("a"), layer.delta_weight("b")
    layer.set_scale("a", 0.5)
    layer.set_scale("b", -2.0)
    torch.testing.assert_close(layer(x), lin(x) + x @ (0.5 * da - 2.0 * db).T, atol=1e-6, rtol=1e-6)
    # an adapter plus its copy at scale −1 cancels
    layer.add_adapter("anti", r=2, alpha=2)
    with torch.no_grad():
        layer.lora_A["anti"].copy_(layer.lora_A["a"])
        layer.lora_B["anti"].copy_(layer.lora_B["a"])
    layer.set_scale("b", 0.0)
    layer.set_scale("anti", -0.5)
    torch.testing.assert_close(layer(x), lin(x), atol=1e-6, rtol=1e-6)
    assert layer.adapters == ("a", "b", "anti")


def test_layer_errors():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv2d(2, 2, 1), r=1)
    with pytest.raises(ValueError, match="groups=1"):
        LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), r=1)
    layer = LoRALinear(nn.Linear(6, 4), r=2)
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        layer.add_adapter("default", r=1)
    with pytest.raises(ValueError, match=r"r \(LoRA rank\) must be an int in \[1, 4\]"):
        layer.add_adapter("big", r=5)
    with pytest.raises(ValueError, match="alpha"):
        layer.add_adapter("x", r=1, alpha=-1.0)
    with pytest.raises(ValueError, match="dropout"):
        layer.add_adapter("x", r=1, dropout=1.0)
    with pytest.raises(ValueError, match="identifier"):
        layer.add_adapter("a.b", r=1)
    with pytest.raises(ValueError, match="reserved"):
        layer.add_adapter("keys", r=1)
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        layer.set_scale("nope", 1.0)
    with pytest.raises(ValueError, match="finite"):
        layer.set_scale("default", float("nan"))


# --------------------------------------------------------------------------- peft equivalence
def _peft_model(model: nn.Module, target: list[str], r: int, alpha: float) -> nn.Module:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=target, lora_dropout=0.0)
    return peft.inject_adapter_in_model(config, copy.deepcopy(model))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_equals_peft_layer(kind, generator):
    torch.manual_seed(0)
    toy = Toy()
    r, alpha = 3, 7.0
    ours = copy.deepcopy(toy)
    inject_lora(ours, [kind if kind == "conv" else "proj"], r=r, alpha=alpha)
    randomise(ours, generator, std=0.3)
    name = "conv" if kind == "conv" else "proj"
    theirs = _peft_model(toy, [name], r, alpha)
    mine, peft_layer = getattr(ours, name), getattr(theirs, name)
    with torch.no_grad():                                     # the same A, B in peft's layout
        peft_layer.lora_A["default"].weight.copy_(mine.lora_A["default"])
        b = mine.lora_B["default"]
        peft_layer.lora_B["default"].weight.copy_(b[:, :, None, None] if kind == "conv" else b)
    x = torch.randn(4, 12, generator=generator) if kind == "linear" else torch.randn(2, 3, 9, 9, generator=generator)
    diff = (mine(x) - peft_layer(x)).abs().max().item()
    assert diff < 1e-6, diff
    assert peft_layer.scaling["default"] == mine.scaling("default") == alpha / r
    torch.testing.assert_close(mine.delta_weight("default"), peft_layer.get_delta_weight("default"),
                               atol=1e-7, rtol=1e-6)
    assert trainable_parameter_count(ours) == sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    # merged weights agree too
    mine.merge()
    peft_layer.merge()
    assert (mine.base.weight - peft_layer.base_layer.weight).abs().max() < 1e-6


# --------------------------------------------------------------------------- injection
def test_inject_into_minidiff_unet(generator):
    net = tiny_unet()
    x, t, cond = unet_inputs(generator)
    before = net(x, t, cond)
    total_before = sum(p.numel() for p in net.parameters())
    report = inject_lora(net, ATTN, r=2, alpha=4)
    # 4 transformer blocks (down.1, mid, up.0 ×2) × (attn1, attn2) × 4 projections
    assert len(report.modules) == 32 and all(isinstance(m, LoRALinear) for m in lora_layers(net).values())
    want = sum(2 * (d + k) for _, d, k, _, _ in report.modules.values())
    assert report.added == want == trainable_parameter_count(net)
    assert report.total == total_before + want and "32 layers" in str(report)
    assert report.modules["mid_attn.transformer_blocks.0.attn2.to_k"][1:3] == (32, 8)   # cross-attn: k = context_dim
    assert torch.equal(net(x, t, cond), before)                                    # zero-init: same model
    randomise(net, generator)
    assert (net(x, t, cond) - before).abs().max() > 1e-3
    with lora_disabled(net):
        assert torch.equal(net(x, t, cond), before)
    assert (net(x, t, cond) - before).abs().max() > 1e-3                          # restored after the block


def test_target_patterns_and_tiny_clip():
    net = tiny_unet()
    cross = find_targets(net, re.compile(r".*attn2\.to_[kv]"))
    assert len(cross) == 8 and all(p.endswith(("attn2.to_k", "attn2.to_v")) for p in cross)
    glob = find_targets(net, "mid_attn.*.to_*")          # to_out (a ModuleList) and to_out.1 (Dropout) skipped
    assert glob == [f"mid_attn.transformer_blocks.0.attn{i}.to_{s}" for i in (1, 2) for s in ("q", "k", "v", "out.0")]
    clip = TinyCLIP.build(vocab_size=20)
    report = inject_lora(clip, ATTN + ["image_encoder.features.0"], r=2, alpha=2)
    depth = len(clip.text_encoder.blocks)
    assert len(report.modules) == 4 * depth + 1
    assert isinstance(clip.image_encoder.features[0], LoRAConv2d)


def test_inject_errors_and_atomicity():
    net = tiny_unet()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"r \(LoRA rank\) must be an int >= 1"):
        inject_lora(net, ATTN, r=0)
    with pytest.raises(ValueError, match=r"r \(LoRA rank\) must be an int >= 1"):
        inject_lora(net, ATTN, r=-2)
    with pytest.raises(TypeError, match=r"r \(LoRA rank\) must be an int"):
        inject_lora(net, ATTN, r=2.5)
    with pytest.raises(ValueError, match=r"min\(d, k\) = 8 for layer '.*attn2.to_k'.*d=32, k=8"):
        inject_lora(net, ATTN, r=9)
    with pytest.raises(ValueError, match="alpha"):
        inject_lora(net, ATTN, r=2, alpha=0)
    with pytest.raises(ValueError, match="alpha"):
        inject_lora(net, ATTN, r=2, alpha=float("nan"))
    with pytest.raises(ValueError, match=r"'to_qq' matches no module.*close names: \[.*'to_q'"):
        inject_lora(net, ["to_q", "to_qq"], r=2)
    with pytest.raises(TypeError, match="LoRA cannot wrap.*LayerNorm"):
        inject_lora(net, "norm1", r=2)
    with pytest.raises(TypeError, match="target must be"):
        inject_lora(net, [], r=2)
    assert not lora_layers(net) and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    inject_lora(net, ATTN, r=2)
    with pytest.raises(ValueError, match="double injection"):
        inject_lora(net, "to_q", r=2)
    report = inject_lora(net, "to_q", r=1, name="second")            # a second adapter on the same layers
    assert len(report.modules) == 8 and adapter_names(net) == ["default", "second"]
    assert trainable_parameter_count(net) == report.added             # freeze=True: only the new adapter trains


def test_training_moves_only_the_adapter(generator):
    net = tiny_unet()
    inject_lora(net, ATTN, r=2, alpha=2)
    frozen = {k: v.clone() for k, v in net.state_dict().items() if "lora_" not in k}
    data = (torch.randn(8, 4, 8, 8, generator=generator), {"context": torch.randn(8, 5, 8, generator=generator)})
    from minidiff import NoiseSchedule, diffusion_loss
    fit(net, diffusion_loss(NoiseSchedule.linear(1000)), data, steps=3, batch_size=4, weight_decay=0.1,
        progress=False)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in frozen.items())   # W₀ bit-identical
    assert all(torch.count_nonzero(m.lora_B["default"]) > 0 for m in lora_layers(net).values())


# --------------------------------------------------------------------------- merge / remove across a model
def test_merge_remove_across_the_model(generator):
    net = tiny_unet()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    inject_lora(net, ATTN, r=2, alpha=3)
    inject_lora(net, "to_v", r=1, name="extra")
    randomise(net, generator)
    x, t, cond = unet_inputs(generator)
    out = net(x, t, cond)
    merge_lora(net)
    assert (net(x, t, cond) - out).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(net)
    with pytest.raises(RuntimeError, match="unmerge"):
        set_lora_scale(net, "extra", 2.0)
    unmerge_lora(net)
    with pytest.raises(RuntimeError, match="not merged"):
        unmerge_lora(net)
    with lora_scales(net, extra=0.0, default=2.0):
        assert net.mid_attn.transformer_blocks[0].attn1.to_v.scale == {"default": 2.0, "extra": 0.0}
        assert (net(x, t, cond) - out).abs().max() > 1e-4
    assert (net(x, t, cond) - out).abs().max() < 1e-6                  # scales restored
    remove_lora(net, "extra")
    assert adapter_names(net) == ["default"]
    baked = copy.deepcopy(net)
    remove_lora(baked, merge=True)                                      # peft's merge_and_unload
    assert not lora_layers(baked)
    with torch.no_grad():
        want = net(x, t, cond)
    assert (baked(x, t, cond) - want).abs().max() < 1e-5
    merge_lora(net)
    remove_lora(net)                                                    # unmerges, then restores the modules
    assert not lora_layers(net) and type(net.mid_attn.transformer_blocks[0].attn1.to_q) is nn.Linear
    assert set(net.state_dict()) == set(original)
    assert max((net.state_dict()[k] - v).abs().max().item() for k, v in original.items()) < 1e-6
    with pytest.raises(ValueError, match="no LoRA layers"):
        remove_lora(net)


# --------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path, generator):
    net = tiny_unet()
    inject_lora(net, ATTN, r=2, alpha=3)
    randomise(net, generator)
    x, t, cond = unet_inputs(generator)
    out = net(x, t, cond)
    path = save_lora(net, tmp_path / "adapter.safetensors")
    meta = read_lora_metadata(path)
    assert meta["name"] == "default" and meta["r"] == 2 and meta["alpha"] == 3.0 and len(meta["targets"]) == 32
    size = path.stat().st_size
    assert size < 60_000 < sum(p.numel() * 4 for p in tiny_unet().parameters())    # KB vs MB
    fresh = tiny_unet()                                                # same base weights (seeded)
    report = load_lora(fresh, path)
    assert len(report.modules) == 32 and trainable_parameter_count(fresh) == report.added
    assert torch.equal(fresh(x, t, cond), out)
    load_lora(fresh, path, name="twin")                                # a second adapter from the same file
    set_lora_scale(fresh, "twin", -1.0)
    torch.testing.assert_close(fresh(x, t, cond), tiny_unet()(x, t, cond), atol=1e-5, rtol=1e-5)
    load_lora(fresh, path)                                             # overwrite the same adapter: allowed
    assert json.loads(json.dumps(meta))["targets"][0].endswith("attn1.to_q")


def test_load_errors(tmp_path, generator):
    net = tiny_unet()
    inject_lora(net, ATTN, r=2, alpha=3)
    path = save_lora(net, tmp_path / "a.safetensors")
    torch.manual_seed(0)
    wider = UNet(image_size=8, in_channels=4, base_channels=16, channel_mults=(1, 2), attention_levels=(1,),
                 context_dim=16, groups=8)
    with pytest.raises(ValueError, match=r"shape mismatch for '.*attn2.to_k.lora_A': \(2, 8\) in the file but "
                                         r"\(2, 16\) in this model"):
        load_lora(wider, path)
    assert not lora_layers(wider)                                       # checked before changing anything
    other = UNet(image_size=8, in_channels=4, base_channels=16, channel_mults=(1, 2), context_dim=8, groups=8)
    with pytest.raises(ValueError, match="does not have"):
        load_lora(other, path)
    fresh = tiny_unet()
    inject_lora(fresh, ATTN, r=1, alpha=3)
    with pytest.raises(ValueError, match="shape mismatch|r=1"):
        load_lora(fresh, path)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a minidiff LoRA file"):
        load_lora(fresh, tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        load_lora(fresh, tmp_path / "missing.safetensors")
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        save_lora(net, tmp_path / "b.safetensors", name="nope")


# --------------------------------------------------------------------------- diffusers
def tiny_sd_unet(seed: int = 0):
    """chapter 10's tiny SD U-Net (minidiff.sd.tiny_unet_config) with weights from ``seed``."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(**tiny_unet_config()).eval()


def tiny_sd_pipeline(unet, tmp_path):
    """chapter 10's offline tiny StableDiffusionPipeline (minidiff.sd.tiny_pipeline) with ``unet`` in its place."""
    diffusers = pytest.importorskip("diffusers")
    return diffusers.StableDiffusionPipeline(**{**tiny_pipeline(1, tmp_path).components, "unet": unet})


def test_inject_counts_match_peft_on_a_diffusers_unet(generator):
    unet = tiny_sd_unet()
    peft = pytest.importorskip("peft")
    theirs = copy.deepcopy(unet)
    theirs.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=ATTN))
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 500])
    ctx = torch.randn(2, 5, 32, generator=generator)
    with torch.no_grad():
        before = unet(x, t, ctx).sample
    report = inject_lora(unet, ATTN, r=4, alpha=4)
    peft_layers = [n for n, m in theirs.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    # 4 transformer blocks (down 1, mid 1, up 2) × 2 attentions × 4 projections
    assert len(report.modules) == len(peft_layers) == 32
    assert sorted(report.paths) == sorted(peft_layers)
    assert report.added == trainable_parameter_count(unet) == trainable_parameter_count(theirs)
    with torch.no_grad():
        assert torch.equal(unet(x, t, ctx).sample, before)


def test_diffusers_format_loads_into_a_tiny_sd_pipeline(tmp_path, generator):
    unet = tiny_sd_unet()
    ours = copy.deepcopy(unet)
    inject_lora(ours, ATTN + ["conv_in"], r=2, alpha=6)            # a Conv2d too: (d, r, 1, 1) keys
    randomise(ours, generator, std=0.2)
    path = save_diffusers_lora(ours, tmp_path / "lora" / "mine.safetensors")
    pipe = tiny_sd_pipeline(unet, tmp_path)
    pipe.set_progress_bar_config(disable=True)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 500])
    ctx = torch.randn(2, 5, 32, generator=generator)
    with torch.no_grad():
        base = pipe.unet(x, t, ctx).sample
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="mine")
    with torch.no_grad():
        theirs, mine = pipe.unet(x, t, ctx).sample, ours(x, t, ctx).sample
    change = (mine - base).abs().max().item()
    assert change > 1e-2                                            # the adapter matters …
    assert (theirs - mine).abs().max().item() < 1e-5                # … and diffusers applies it exactly as we do
    # run-time scale: diffusers' set_adapters weight = our scale
    pipe.set_adapters(["mine"], [0.5])
    set_lora_scale(ours, "default", 0.5)
    with torch.no_grad():
        assert (pipe.unet(x, t, ctx).sample - ours(x, t, ctx).sample).abs().max().item() < 1e-5
    # a whole 2-step DDIM run of the pipeline, to latents, with our U-Net in its place
    run = {"prompt": "a red circle", "num_inference_steps": 2, "output_type": "latent", "guidance_scale": 3.0,
           "height": 16, "width": 16}
    latents_theirs = pipe(**run, generator=torch.Generator().manual_seed(3)).images
    pipe_ours = tiny_sd_pipeline(ours, tmp_path)
    pipe_ours.set_progress_bar_config(disable=True)
    latents_ours = pipe_ours(**run, generator=torch.Generator().manual_seed(3)).images
    assert (latents_theirs - latents_ours).abs().max().item() < 1e-5


def test_diffusers_state_dict_without_metadata_bakes_the_scaling(tmp_path, generator):
    unet = tiny_sd_unet()
    ours = copy.deepcopy(unet)
    inject_lora(ours, ATTN, r=2, alpha=5)                           # α/r = 2.5 ≠ 1: lost without metadata
    randomise(ours, generator)
    sd = diffusers_lora_state_dict(ours, bake_scaling=True)
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sd)
    assert len(sd) == 64
    raw = diffusers_lora_state_dict(ours)
    key = next(k for k in sd if k.endswith("lora_B.weight"))
    torch.testing.assert_close(sd[key], 2.5 * raw[key])
    pipe = tiny_sd_pipeline(unet, tmp_path)
    pipe.load_lora_weights(sd, adapter_name="baked")
    x, t = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([100])
    ctx = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        assert (pipe.unet(x, t, ctx).sample - ours(x, t, ctx).sample).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="prefix"):
        diffusers_lora_state_dict(ours, prefix="unet.")


def test_dropout_acts_on_the_lora_branch_in_training_only(generator):
    layer = LoRALinear(nn.Linear(16, 16), r=4, dropout=0.5)
    randomise(layer, generator)
    x = torch.randn(64, 16, generator=generator)
    layer.eval()
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(x), a)
    with lora_disabled(layer):                                   # the base ignores the LoRA dropout
        torch.testing.assert_close(layer(x), layer.base(x))


def test_clip_adapter_round_trip_and_unknown_names(tmp_path, generator):
    base = TinyCLIP.build(vocab_size=20)
    clip = copy.deepcopy(base)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    inject_lora(clip, ["image_encoder.features.0", "to_v"], r=2, alpha=1)
    randomise(clip, generator)
    want = clip.encode_image(images)
    path = save_lora(clip, tmp_path / "clip.safetensors")
    fresh = copy.deepcopy(base)
    load_lora(fresh, path)
    torch.testing.assert_close(fresh.encode_image(images), want)
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        remove_lora(clip, "nope")
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        lora_parameters(clip, "nope")
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        set_lora_scale(clip, "nope", 1.0)

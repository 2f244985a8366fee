"""minidiff.bps: power steering's modes, weights and side networks, and the ControlNet / T2I-Adapter baselines."""
import pytest
import torch
import torch.nn.functional as F

import minidiff.bps.steer as steer_module
from minidiff import NoiseSchedule, UNet, diffusion_loss, load_model, save_model, train
from minidiff.bps import (
    MODES,
    ConvSideNet,
    MLPSideNet,
    PowerSteering,
    Steered,
    controlnet,
    finetune_with_condition,
    mode_ports,
    pixel_unshuffle,
    port_groups,
    port_shapes,
    port_weights,
    t2i_adapter,
)
from minidiff.nets.mlp import UMLPDenoiser
from minidiff.nets.ports import add_residuals, find_ports


def unet(context: bool = True) -> UNet:
    """A small U-Net whose zero-initialised output conv is made random (else it outputs 0 whatever its features)."""
    torch.manual_seed(0)
    u = UNet(image_size=8, in_channels=4, base_channels=16, channel_mults=(1, 2), attention_levels=(1,),
             context_dim=8 if context else None, num_timesteps=100)
    torch.nn.init.normal_(u.out[-1].weight, std=0.1)
    return u


def batch(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.tensor([1, 50, 99, 7][:n]), torch.randn(n, 5, 8, generator=g),
            torch.rand(n, 1, 32, 32, generator=g))


def randomise_heads(module: torch.nn.Module) -> None:
    """Give zero-initialised layers random weights, so the side network's output is not 0."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_groups_and_modes_partition_the_unet_ports():
    u = unet()
    groups = port_groups(u)
    assert groups["M"] == ["mid"] and all(p.startswith("skip.") for p in groups["E-D"])
    assert all(p.startswith("down.") and not p.endswith("pool") for p in groups["E"])
    assert all(p.startswith("up.") for p in groups["D"])
    every = set(find_ports(u)) - {"in"} - {p for p in find_ports(u) if p.endswith(".pool")}
    assert set(mode_ports(u, "ALL")) == every
    for mode, members in MODES.items():
        assert set(mode_ports(u, mode)) == {p for g in members for p in groups[g]}, mode


def test_head_heavy_weights_follow_the_official_schedule():
    u = unet()
    w = port_weights(u, mode_ports(u, "ALL"), "head-heavy", scale=0.5)
    assert w["down.0.0"] == 8.0 and w["down.1.0"] == 4.0 and w["mid"] == 8.0 and w["up.0.1"] == 0.5
    assert w["skip.3"] == 4.0                                   # a level-1 skip follows the encoder rule
    assert set(port_weights(u, ["mid"], "uniform", 2.0).values()) == {2.0}


@pytest.mark.parametrize("mode", list(MODES))
def test_zero_init_steered_unet_equals_the_base_exactly(mode):
    u = unet()
    x, t, ctx, c_add = batch()
    steered = PowerSteering(u, mode, weights="head-heavy", c_add_channels=1, unshuffle=4)
    assert torch.equal(steered(x, t, {"context": ctx, "c_add": c_add}), u(x, t, {"context": ctx}))


def test_zero_init_steered_mlp_equals_the_base_exactly():
    torch.manual_seed(0)
    m = UMLPDenoiser(dim=2, num_timesteps=100)
    x, t = torch.randn(4, 2), torch.tensor([0, 10, 50, 99])
    for mode in MODES:
        s = PowerSteering(m, mode, num_classes=8)
        assert torch.equal(s(x, t, {"c_add": torch.tensor([0, 3, 5, 7])}), m(x, t)), mode


@pytest.mark.parametrize("make", [lambda u: controlnet(u, 1, 4), lambda u: t2i_adapter(u, 1, 4),
                                  lambda u: finetune_with_condition(u, 1, 4)])
def test_baselines_start_at_the_base(make):
    u = unet()
    x, t, ctx, c_add = batch()
    reference = u(x, t, {"context": ctx})
    assert torch.equal(make(u)(x, t, {"context": ctx, "c_add": c_add}), reference)


@pytest.mark.parametrize("mode", ["E", "M", "E-D", "MD"])
def test_each_mode_hooks_exactly_its_ports_and_removes_the_hooks(mode, monkeypatch):
    u = unet()
    x, t, ctx, c_add = batch()
    steered = PowerSteering(u, mode, c_add_channels=1, unshuffle=4)
    randomise_heads(steered.side)
    seen = {}

    def recording(model, residuals):
        seen.update(residuals)
        return add_residuals(model, residuals)

    monkeypatch.setattr(steer_module, "add_residuals", recording)
    before = u(x, t, {"context": ctx})
    steered_out = steered(x, t, {"context": ctx, "c_add": c_add})
    assert set(seen) == set(mode_ports(u, mode))
    assert not torch.equal(steered_out, before)
    assert all(not port._forward_hooks for port in find_ports(u).values())
    assert torch.equal(u(x, t, {"context": ctx}), before)        # bit-identical once the hooks are gone


def test_weights_are_applied_as_specified():
    """Steered output == the base with ω_p · v_p added through the U-Net's own residuals argument."""
    u = unet()
    x, t, ctx, c_add = batch()
    steered = PowerSteering(u, "ALL", weights="head-heavy", scale=0.3, c_add_channels=1, unshuffle=4)
    randomise_heads(steered.side)
    raw = steered.side(t, c_add)
    expected = u(x, t, {"context": ctx}, residuals={p: steered.weights[p] * raw[p] for p in steered.weights})
    torch.testing.assert_close(steered(x, t, {"context": ctx, "c_add": c_add}), expected)
    steered.set_scale(0.0)
    assert torch.equal(steered(x, t, {"context": ctx, "c_add": c_add}), u(x, t, {"context": ctx}))


def test_training_moves_only_the_side_network():
    u = unet()
    x, _, ctx, c_add = batch(4)
    steered = PowerSteering(u, "ALL", c_add_channels=1, unshuffle=4)
    base_before = {k: v.clone() for k, v in u.state_dict().items()}
    side_before = {k: v.clone() for k, v in steered.side.state_dict().items()}
    data = (x.repeat(4, 1, 1, 1), {"context": ctx.repeat(4, 1, 1), "c_add": c_add.repeat(4, 1, 1, 1)})
    list(train(steered, diffusion_loss(NoiseSchedule.linear(100)), data, steps=3, batch_size=8, lr=1e-2, progress=False))
    assert steered.frozen_base_is_unchanged(base_before)
    assert any(not torch.equal(v, side_before[k]) for k, v in steered.side.state_dict().items())
    assert not u.training and all(not p.requires_grad for p in u.parameters())


def test_constant_t_ablation_ignores_the_step():
    u = unet()
    shapes = port_shapes(u, mode_ports(u, "E"))
    side = ConvSideNet(shapes, 1, 4, num_timesteps=100, constant_t=10)
    randomise_heads(side)
    c_add = batch()[3]
    a, b = side(torch.tensor([0, 1, 2]), c_add), side(torch.tensor([99, 50, 3]), c_add)
    assert all(torch.equal(a[p], b[p]) for p in shapes)


def test_pixel_unshuffle_matches_torch():
    x = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(pixel_unshuffle(x, 4), F.pixel_unshuffle(x, 4))


def test_side_networks_save_and_load(tmp_path):
    u = unet()
    side = ConvSideNet(port_shapes(u, mode_ports(u, "M")), 1, 4, num_timesteps=100, grid=(8, 8))
    randomise_heads(side)
    save_model(side, tmp_path / "side")
    again = load_model(tmp_path / "side")
    c_add, t = batch()[3], torch.tensor([1, 2, 3])
    assert all(torch.equal(side(t, c_add)[p], again(t, c_add)[p]) for p in side.port_shapes)


def test_bad_inputs_are_named():
    u = unet()
    x, t, ctx, _ = batch()
    with pytest.raises(ValueError, match=r"unknown integration mode 'XYZ'; the modes are \['ALL'"):
        PowerSteering(u, "XYZ", c_add_channels=1)
    with pytest.raises(ValueError, match="unknown weight scheme"):
        PowerSteering(u, "E", weights="heavy", c_add_channels=1)
    with pytest.raises(ValueError, match="must name exactly the steered ports"):
        PowerSteering(u, "E", weights={"mid": 1.0}, c_add_channels=1)
    with pytest.raises(ValueError, match="scale must be"):
        PowerSteering(u, "E", scale=-1.0, c_add_channels=1)
    with pytest.raises(TypeError, match="c_add_channels"):
        PowerSteering(u, "E")
    steered = PowerSteering(u, "E", c_add_channels=1, unshuffle=4)
    with pytest.raises(ValueError, match=r"c_add must have shape \(B, 1, 32, 32\)"):
        steered(x, t, {"context": ctx, "c_add": torch.rand(3, 1, 8, 8)})
    with pytest.raises(ValueError, match="needs cond = {'c_add'"):
        steered(x, t, {"context": ctx})
    with pytest.raises(KeyError, match="unknown ports"):
        port_shapes(u, ["mid", "middle"])
    with pytest.raises(ValueError, match="has no ports"):
        port_groups(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="exactly one of num_classes"):
        MLPSideNet({"mid": (8,)})
    with pytest.raises(ValueError, match="c_add \\(labels\\) must be in \\[0, 8\\)"):
        PowerSteering(UMLPDenoiser(dim=2, num_timesteps=100), "M", num_classes=8)(
            torch.randn(2, 2), torch.tensor([1, 2]), {"c_add": torch.tensor([0, 8])})
    with pytest.raises(TypeError, match="built for minidiff.UNet"):
        controlnet(UMLPDenoiser(dim=2), 1)
    with pytest.raises(ValueError, match="constant_t must be"):
        ConvSideNet({"mid": (32, 4, 4)}, 1, num_timesteps=100, constant_t=100)
    with pytest.raises(ValueError, match="weights must name at least one port"):
        Steered(u, torch.nn.Identity(), {})

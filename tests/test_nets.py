"""Networks: the U-Net eps-model, feature ports, conditioning, bad input (the MLPs and embeddings: test_mlp.py)."""
import math

import pytest
import torch

from minidiff.nets import UNet


@pytest.mark.parametrize("size, mults, attn", [(8, (1, 2), ()), (16, (1, 2, 2), (1,)), (32, (1, 2, 2, 2), (2,))])
def test_unet_shapes_and_ports(size, mults, attn):
    torch.manual_seed(0)
    net = UNet(image_size=size, base_channels=16, channel_mults=mults, attention_levels=attn)
    x, t = torch.randn(2, 1, size, size), torch.tensor([0, 999])
    eps, feats = net(x, t, return_features=True)
    assert eps.shape == x.shape
    assert list(feats) == list(net.ports)
    for name, f in feats.items():
        assert f.shape[1:] == net.port_shape(name), name
    assert {"in", "mid"} <= set(net.ports) and any(p.startswith("up.") for p in net.ports)


def test_unet_starts_at_zero_and_residuals_change_output():
    torch.manual_seed(0)
    net = UNet(image_size=8, base_channels=16)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    assert net(x, t).abs().max() == 0  # zero-initialised output conv
    torch.nn.init.normal_(net.out[-1].weight)
    base, feats = net(x, t, return_features=True)
    delta = torch.randn(3, *net.port_shape("mid"))
    steered, feats2 = net(x, t, residuals={"mid": delta}, return_features=True)
    assert torch.allclose(feats2["mid"], feats["mid"] + delta, atol=1e-5)
    assert torch.equal(feats2["down.0.0"], feats["down.0.0"])  # upstream ports untouched
    assert not torch.allclose(steered, base)
    zero, _ = net(x, t, residuals={"mid": torch.zeros_like(delta)}, return_features=True)
    assert torch.allclose(zero, base)


def test_unet_out_channels_for_wrappers():
    """Extra input channels in, only ε̂'s channels out (the chapter-4 super-resolution layout)."""
    net = UNet(image_size=8, in_channels=3, base_channels=16, out_channels=1)
    assert net(torch.randn(2, 3, 8, 8), torch.tensor([0, 5])).shape == (2, 1, 8, 8)
    assert UNet(image_size=8, in_channels=2, base_channels=16).out[-1].out_channels == 2   # default: C


def test_unet_errors():
    net = UNet(image_size=8, base_channels=16)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        net(torch.randn(2, 1, 16, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="port 'mid'"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), residuals={"mid": torch.zeros(2, 3, 4, 4)})
    with pytest.raises(KeyError, match="unknown port"):
        net.port_shape("down.9.0")
    with pytest.raises(ValueError, match="divisible"):
        UNet(image_size=10, channel_mults=(1, 2, 2))


def test_class_conditioning_and_null_token():
    torch.manual_seed(0)
    net = UNet(image_size=8, base_channels=16, num_classes=10)
    torch.nn.init.normal_(net.out[-1].weight)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 500)
    y = torch.tensor([0, 1, 2, 3])
    null = torch.full((4,), net.class_embed.null_label)
    assert not torch.allclose(net(x, t, y), net(x, t, null))
    with pytest.raises(ValueError, match="class-conditional"):
        net(x, t)
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 10\)"):
        net(x, t, torch.tensor([0, 1, 2, 11]))
    with pytest.raises(ValueError, match="integer class labels"):
        net(x, t, torch.zeros(4))


def test_nets_are_batch_independent():
    """No cross-talk between batch elements (GroupNorm, attention are per-sample)."""
    torch.manual_seed(0)
    net = UNet(image_size=8, base_channels=16, attention_levels=(1,)).eval()
    torch.nn.init.normal_(net.out[-1].weight)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([5, 50, 500, 900])
    full = net(x, t)
    single = torch.cat([net(x[i:i + 1], t[i:i + 1]) for i in range(4)])
    assert torch.allclose(full, single, rtol=1e-4, atol=1e-4), (full - single).abs().max()

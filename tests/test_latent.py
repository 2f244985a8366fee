"""Latent diffusion (chapter 5): the diagonal Gaussian posterior against closed forms, Monte Carlo, torch and
diffusers; the KL autoencoder's shapes, loss, scaling factor, training and checkpoints; the diffusers
AutoencoderKL adapter against diffusers itself; LatentDiffusion against the samplers and CFG run by hand."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from minidiff import NoiseSchedule, UNet, fit, load_model, sample, save_model
from minidiff.cache import load_or_train
from minidiff.forward import gaussian_kl
from minidiff.guidance import ClassifierFreeGuidance
from minidiff.latent import (Codec, DiagonalGaussian, DiffusersCodec, KLAutoencoder, LatentDiffusion,
                             decode_in_batches, encode_in_batches, estimate_scaling_factor, evaluate_autoencoder,
                             train_autoencoder, vae_loss)
from minidiff.train import diffusion_loss

T = 20


def blobs(n, size=16, seed=0):
    """n RGB images in [-1, 1]: a tinted background and one coloured disc or square each."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(n, 2, generator=g) * (size / 2) + size / 4
    r = (torch.rand(n, generator=g) * 0.15 + 0.1) * size
    disc = torch.rand(n, generator=g) < 0.5
    dx, dy = xx - centre[:, 0, None, None], yy - centre[:, 1, None, None]
    r = r[:, None, None]
    inside = torch.where(disc[:, None, None], dx ** 2 + dy ** 2 <= r ** 2, (dx.abs() <= r) & (dy.abs() <= r))
    fg = torch.rand(n, 3, generator=g) * 2 - 1
    bg = torch.rand(n, 3, generator=g) * 0.6 - 0.3
    return torch.where(inside[:, None], fg[:, :, None, None], bg[:, :, None, None])


def tiny_ae(f=4, **kw):
    torch.manual_seed(0)
    return KLAutoencoder(f=f, base_channels=8, **kw)


def tiny_vae(**kw):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    config = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 2,
              "up_block_types": ("UpDecoderBlock2D",) * 2, "block_out_channels": (8, 16), "layers_per_block": 1,
              "latent_channels": 4, "norm_num_groups": 4, "sample_size": 16}
    return AutoencoderKL(**{**config, **kw}).eval()


def random_posterior(shape=(3, 4, 2, 2), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype) - 0.5


# ------------------------------------------------------------------------------ DiagonalGaussian
def test_kl_matches_torch_distributions_and_gaussian_kl():
    mean, logvar = random_posterior()
    q = DiagonalGaussian(mean, logvar)
    std = torch.exp(0.5 * logvar)
    want = kl_divergence(Normal(mean, std), Normal(torch.zeros_like(mean), 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.kl(), gaussian_kl(mean, std ** 2, torch.zeros_like(mean), 1.0).flatten(1).sum(1))
    assert q.kl().shape == (3,)


def test_kl_matches_monte_carlo():
    mean, logvar = random_posterior((2, 3))
    q = DiagonalGaussian(mean, logvar)
    g = torch.Generator().manual_seed(1)
    z = torch.stack([q.sample(g) for _ in range(20_000)])                       # (S, 2, 3)
    log_ratio = (Normal(mean, q.std).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)   # log q − log p
    estimate, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
    assert ((estimate - q.kl()).abs() < 4 * stderr).all(), (estimate, q.kl(), stderr)


def test_nll_and_sample_match_torch_and_diffusers(generator):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    mean, logvar = random_posterior(dtype=torch.float32)
    q = DiagonalGaussian(mean, logvar)
    ref = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    x = torch.randn(mean.shape, generator=generator)
    torch.testing.assert_close(q.nll(x), -Normal(mean, q.std).log_prob(x).flatten(1).sum(1))
    torch.testing.assert_close(q.nll(x), ref.nll(x))
    torch.testing.assert_close(q.kl(), ref.kl())
    torch.testing.assert_close(q.sample(torch.Generator().manual_seed(3)), ref.sample(torch.Generator().manual_seed(3)))
    assert torch.equal(q.mode(), mean)


def test_sample_is_reparameterised_and_logvar_clamped():
    mean = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.full((2, 3), 50.0)                              # clamped to 20, as in diffusers
    q = DiagonalGaussian(mean, logvar)
    assert q.logvar.max() == 20.0
    q.sample(torch.Generator().manual_seed(0)).sum().backward()
    assert torch.equal(mean.grad, torch.ones(2, 3))                 # dz/dμ = 1: gradients reach the encoder


def test_diagonal_gaussian_bad_inputs():
    with pytest.raises(ValueError, match="one shape"):
        DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        DiagonalGaussian(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="posterior's shape"):
        DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3)).nll(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="generator"):
        DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3)).sample(generator=0)


# ------------------------------------------------------------------------------ KLAutoencoder
@pytest.mark.parametrize("f", [2, 4, 8])
def test_autoencoder_shapes(f):
    ae = tiny_ae(f)
    x = torch.randn(2, 3, 32, 32)
    z = ae.encode(x)
    assert z.shape == (2, 4, 32 // f, 32 // f) == (2, *ae.latent_shape((3, 32, 32)))
    assert ae.decode(z).shape == x.shape
    assert ae.latent_shape((5, 3, 16, 32)) == (5, 4, 16 // f, 32 // f)
    x_hat, q = ae(x, torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape and q.shape == z.shape


def test_autoencoder_f4_on_32x32_rgb_gives_8x8x4_and_one_channel_digits_work():
    from minidiff.data import digits

    assert KLAutoencoder(f=4, base_channels=8).encode(torch.randn(1, 3, 32, 32)).shape == (1, 4, 8, 8)
    x, _ = digits("test", size=16)
    ae = tiny_ae(4, in_channels=1, z_channels=2)
    assert ae.decode(ae.encode(x[:4])).shape == (4, 1, 16, 16)


def test_encode_mean_or_sample_and_scaling_applied_consistently():
    ae = tiny_ae().eval()
    x = blobs(4)
    ae.set_scaling_factor(0.5)
    with torch.no_grad():
        mean = ae.posterior(x).mean
        torch.testing.assert_close(ae.encode(x), 0.5 * mean)
        draw = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        again = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        assert torch.equal(draw, again) and not torch.allclose(draw, 0.5 * mean)
        torch.testing.assert_close(ae.decode(ae.encode(x)), ae.decode_raw(mean))     # s cancels


def test_vae_loss_is_mse_plus_beta_kl_per_pixel_value():
    ae, x, beta = tiny_ae(), blobs(6), 0.3
    loss, terms = vae_loss(beta)(ae, x, torch.Generator().manual_seed(5))
    x_hat, q = ae(x, torch.Generator().manual_seed(5))                    # the same posterior draw
    rec = ((x_hat - x) ** 2).mean()
    kl = q.kl().mean()
    torch.testing.assert_close(loss, rec + beta * kl / (3 * 16 * 16))
    torch.testing.assert_close(terms["rec"], rec.detach())
    torch.testing.assert_close(terms["kl"], kl.detach())
    loss0, _ = vae_loss(0.0)(ae, (x, torch.zeros(6)), torch.Generator().manual_seed(5))  # (x, labels) batches too
    torch.testing.assert_close(loss0, rec)


@pytest.mark.slow
def test_short_training_reduces_reconstruction_error():
    x, held_out = blobs(512), blobs(64, seed=1)
    ae = tiny_ae()

    def held_out_mse():
        with torch.no_grad():
            return ((ae.decode(ae.encode(held_out)) - held_out) ** 2).mean().item()

    before = held_out_mse()
    records = train_autoencoder(ae, x, beta=1e-3, steps=60, batch_size=16, lr=5e-3, progress=False)
    after = held_out_mse()
    assert set(records[-1]) >= {"step", "loss", "rec", "kl"}
    assert after < before / 2.5, (before, after)            # measured 0.196 -> 0.060 (3.3×) in 60 steps


def test_evaluate_autoencoder_is_mse_and_kl_of_the_means():
    ae, x = tiny_ae().eval(), blobs(10)
    got = evaluate_autoencoder(ae, x, batch_size=3)
    with torch.no_grad():
        q = ae.posterior(x)
        assert got["mse"] == pytest.approx(((ae.decode_raw(q.mean) - x) ** 2).mean().item(), rel=1e-5)
        assert got["kl"] == pytest.approx(q.kl().mean().item(), rel=1e-5)
    assert got["kl_per_dim"] == pytest.approx(got["kl"] / (4 * 4 * 4))
    with pytest.raises(TypeError, match="KLAutoencoder"):
        evaluate_autoencoder(DiffusersCodec(tiny_vae()), x)


def test_scaling_factor_gives_unit_variance_on_its_data():
    ae, x = tiny_ae().eval(), blobs(300)
    with torch.no_grad():
        raw_std = ae.posterior(x).mean.double().std().item()
    s = ae.fit_scaling_factor(x, batch_size=64)
    assert s == pytest.approx(1 / raw_std, rel=1e-5)
    assert ae.encode(x).double().std().item() == pytest.approx(1.0, abs=1e-5)
    ae.set_scaling_factor(3.0)                                # the estimate does not depend on the current s
    assert estimate_scaling_factor(ae, x) == pytest.approx(s, rel=1e-5)
    g = torch.Generator().manual_seed(0)
    s_sample = ae.fit_scaling_factor(x, sample=True, generator=g)
    z = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    assert s_sample < s and z.double().std().item() == pytest.approx(1.0, abs=1e-5)   # draws add σ² to the variance


def test_save_load_and_cache_keep_the_scaling_factor(tmp_path):
    ae = tiny_ae()
    ae.set_scaling_factor(0.18215)
    save_model(ae, tmp_path / "ae")
    back = load_model(tmp_path / "ae")
    assert isinstance(back, KLAutoencoder) and back.scaling_factor == pytest.approx(0.18215, rel=1e-7)
    x = blobs(2)
    torch.testing.assert_close(back.encode(x), ae.eval().encode(x))

    def train_fn(model):
        model.set_scaling_factor(0.25)

    load_or_train("test-latent-ae", {"v": 1}, tiny_ae(), train_fn)
    cached = load_or_train("test-latent-ae", {"v": 1}, tiny_ae(), lambda m: pytest.fail("should load from cache"))
    assert cached.scaling_factor == 0.25


def test_autoencoder_bad_inputs():
    ae = tiny_ae()
    for f in (3, 16, 1, 0):
        with pytest.raises(ValueError, match=r"f \(downsampling factor\) must be one of \(2, 4, 8\)"):
            KLAutoencoder(f=f)
    for f in (True, 4.0, "4"):
        with pytest.raises(TypeError, match=r"f \(downsampling factor\) must be an int"):
            KLAutoencoder(f=f)
    with pytest.raises(ValueError, match=r"30×30 is not divisible .* f=4.*\[28, 32\]"):
        ae.encode(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="must have 3 channels, got 1"):
        ae.encode(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"images \(B, C, H, W\)"):
        ae.encode(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        ae.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 4, h, w\)"):
        ae.decode(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 4, h, w\)"):
        ae.decode(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="channel_mults must list"):
        KLAutoencoder(f=4, channel_mults=(1, 2))
    with pytest.raises(ValueError, match="base_channels"):
        KLAutoencoder(base_channels=0)
    with pytest.raises(TypeError, match="z_channels"):
        KLAutoencoder(z_channels=2.5)
    for beta, err in ((-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError)):
        with pytest.raises(err, match="beta"):
            vae_loss(beta)
    for s in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="scaling_factor"):
            ae.set_scaling_factor(s)
    with pytest.raises(ValueError, match="image_shape must be"):
        ae.latent_shape((32, 32))
    dead = tiny_ae()
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()                                         # constant latents: nothing to scale
    with pytest.raises(ValueError, match="std 0"):
        dead.fit_scaling_factor(blobs(4))
    with pytest.raises(TypeError, match="KLAutoencoder"):
        train_autoencoder(torch.nn.Linear(2, 2), blobs(4), steps=1)
    with pytest.raises(ValueError, match="not divisible"):
        train_autoencoder(ae, torch.randn(4, 3, 18, 18), steps=1)


# ------------------------------------------------------------------------------ DiffusersCodec
def test_diffusers_codec_equals_diffusers_times_the_scaling_factor():
    vae = tiny_vae()
    codec = DiffusersCodec(vae)
    x = blobs(3)
    assert isinstance(codec, Codec) and isinstance(KLAutoencoder(), Codec)
    assert codec.scaling_factor == vae.config.scaling_factor == 0.18215 and codec.f == 2
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        z = codec.encode(x)
        torch.testing.assert_close(z, dist.mean * 0.18215)
        torch.testing.assert_close(codec.encode(x, sample=True, generator=torch.Generator().manual_seed(2)),
                                   dist.sample(torch.Generator().manual_seed(2)) * 0.18215)
        torch.testing.assert_close(codec.decode(z), vae.decode(dist.mean).sample)
        q = codec.posterior(x)
        torch.testing.assert_close(q.kl(), dist.kl())
    assert z.shape == (3, *codec.latent_shape((3, 16, 16))) == (3, 4, 8, 8)
    assert codec.decode(z).shape == x.shape


def test_diffusers_codec_shift_factor_and_override():
    vae = tiny_vae(shift_factor=0.3, scaling_factor=1.5)
    x = blobs(2)
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        codec = DiffusersCodec(vae)
        torch.testing.assert_close(codec.encode(x), (mean - 0.3) * 1.5)           # SD 3's (z − shift)·s
        torch.testing.assert_close(codec.decode(codec.encode(x)), vae.decode(mean).sample)
        assert DiffusersCodec(vae, scaling_factor=0.5).encode(x).sub((mean - 0.3) * 0.5).abs().max() < 1e-6
        codec = DiffusersCodec(tiny_vae())
        s = estimate_scaling_factor(codec, blobs(64))
        assert DiffusersCodec(codec.vae, scaling_factor=s).encode(blobs(64)).double().std() == pytest.approx(1, abs=1e-5)


def test_diffusers_codec_bad_inputs():
    codec = DiffusersCodec(tiny_vae())
    with pytest.raises(TypeError, match="AutoencoderKL"):
        DiffusersCodec(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="scaling_factor"):
        DiffusersCodec(codec.vae, scaling_factor=-1)
    with pytest.raises(ValueError, match="not divisible by the downsampling factor f=2"):
        codec.encode(torch.randn(1, 3, 15, 16))
    with pytest.raises(ValueError, match="must have 3 channels"):
        codec.encode(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 4, h, w\)"):
        codec.decode(torch.randn(1, 3, 8, 8))


# ------------------------------------------------------------------------------ LatentDiffusion
@pytest.fixture
def schedule():
    return NoiseSchedule.linear(T, beta_start=1e-3, beta_end=0.2)


def latent_unet(context_dim=None, size=4, channels=4):
    torch.manual_seed(1)
    unet = UNet(image_size=size, in_channels=channels, base_channels=16, channel_mults=(1, 2), num_timesteps=T,
                attention_levels=(1,) if context_dim else (), context_dim=context_dim)
    torch.nn.init.normal_(unet.out[-1].weight, std=0.05)          # the U-Net's output starts at zero
    return unet


def text_cond(n, L=5, D=8, seed=0):
    return {"context": torch.randn(n, L, D, generator=torch.Generator().manual_seed(seed))}


def test_latent_diffusion_is_the_unet_on_latents(schedule):
    unet, ae = latent_unet(8), tiny_ae()
    null = torch.zeros(1, 5, 8)
    ld = LatentDiffusion(unet, ae, schedule, image_shape=(3, 16, 16), null_cond={"context": null})
    assert ld.latent_shape == (4, 4, 4) and ld.num_timesteps == T and ld.null_cond["context"] is null
    assert not any(p.requires_grad for p in ae.parameters())          # the codec is frozen
    z, t, c = torch.randn(3, 4, 4, 4), torch.tensor([0, 7, 19]), text_cond(3)
    assert torch.equal(ld(z, t, c), unet(z, t, c))
    x = blobs(5)
    torch.testing.assert_close(ld.encode_dataset(x, batch_size=2), ae.encode(x))


def test_latent_diffusion_sample_equals_sampler_then_decode(schedule):
    ae = tiny_ae()
    ld = LatentDiffusion(latent_unet(), ae, schedule, image_shape=(3, 16, 16))
    images = ld.sample(3, method="ddim", steps=5, generator=torch.Generator().manual_seed(0), progress=False)
    z = sample(ld.unet, schedule, (3, 4, 4, 4), "ddim", 5, generator=torch.Generator().manual_seed(0), progress=False)
    with torch.no_grad():
        torch.testing.assert_close(images, ae.decode(z).clamp(-1, 1))
    assert images.shape == (3, 3, 16, 16)
    latents = ld.sample(2, method="ddpm", decode=False, generator=torch.Generator().manual_seed(0), progress=False)
    assert latents.shape == (2, 4, 4, 4)


def test_latent_diffusion_cfg_on_text_equals_classifier_free_guidance(schedule):
    ae = tiny_ae()
    null = torch.zeros(5, 8)                                          # the empty caption's context (L, D)
    ld = LatentDiffusion(latent_unet(8), ae, schedule, image_shape=(3, 16, 16), null_cond={"context": null})
    cond = text_cond(2)
    images = ld.sample(2, cond, w=3.0, steps=4, generator=torch.Generator().manual_seed(4), progress=False)
    guided = ClassifierFreeGuidance(ld.unet, 3.0, null={"context": null})
    z = sample(guided, schedule, (2, 4, 4, 4), "ddim", 4, cond=cond, generator=torch.Generator().manual_seed(4),
               progress=False)
    with torch.no_grad():
        torch.testing.assert_close(images, ae.decode(z).clamp(-1, 1))
    plain = ld.sample(2, cond, w=0, steps=4, generator=torch.Generator().manual_seed(4), progress=False)
    assert not torch.allclose(plain, images)


def test_latent_diffusion_loss_is_diffusion_loss_with_the_null_context(schedule):
    null = torch.zeros(1, 5, 8)
    ld = LatentDiffusion(latent_unet(8), tiny_ae(), schedule, image_shape=(3, 16, 16), null_cond={"context": null})
    batch = (torch.randn(6, 4, 4, 4), text_cond(6))
    got = ld.loss(p_uncond=0.5)(ld, batch, torch.Generator().manual_seed(0))
    want = diffusion_loss(schedule, 0.5, null={"context": null})(ld.unet, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_tiny_latent_diffusion_training_and_sampling_run(schedule):
    torch.manual_seed(0)
    ae = tiny_ae()
    x = blobs(64)
    ld = LatentDiffusion(latent_unet(8), ae, schedule, image_shape=(3, 16, 16), null_cond={"context": torch.zeros(5, 8)})
    z0, cond = ld.encode_dataset(x), text_cond(64)
    codec_before = [p.clone() for p in ae.parameters()]
    loss = ld.loss(p_uncond=0.2)
    probe = (z0[:32], {"context": cond["context"][:32]})

    def probe_loss():
        with torch.no_grad():
            return sum(loss(ld, probe, torch.Generator().manual_seed(k)).item() for k in range(4)) / 4

    before = probe_loss()
    losses = fit(ld, loss, (z0, cond), steps=30, batch_size=16, lr=2e-3, progress=False)
    assert all(math.isfinite(v) for v in losses)
    assert probe_loss() < 0.85 * before                     # measured 1.12 -> 0.64 after 30 steps
    assert all(torch.equal(a, b) for a, b in zip(codec_before, ae.parameters()))      # codec untouched
    images = ld.sample(3, text_cond(3, seed=1), w=2.0, steps=5, generator=torch.Generator().manual_seed(0),
                       progress=False)
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1


def test_latent_diffusion_with_the_diffusers_codec(schedule):
    codec = DiffusersCodec(tiny_vae())
    ld = LatentDiffusion(latent_unet(size=8), codec, schedule, image_shape=(3, 16, 16))
    images = ld.sample(2, steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    assert images.shape == (2, 3, 16, 16)
    assert encode_in_batches(codec, blobs(5), batch_size=2).shape == (5, 4, 8, 8)
    assert decode_in_batches(codec, torch.randn(3, 4, 8, 8), batch_size=2).shape == (3, 3, 16, 16)


def test_latent_diffusion_save_load_round_trip(tmp_path, schedule):
    ae = tiny_ae()
    ae.set_scaling_factor(0.7)
    ld = LatentDiffusion(latent_unet(8), ae, schedule, image_shape=(3, 16, 16), null_cond={"context": torch.zeros(5, 8)})
    save_model(ld, tmp_path / "ld")
    back = load_model(tmp_path / "ld")
    assert isinstance(back, LatentDiffusion) and back.codec.scaling_factor == pytest.approx(0.7)
    z, t, c = torch.randn(2, 4, 4, 4), torch.tensor([3, 9]), text_cond(2)
    torch.testing.assert_close(back(z, t, c), ld(z, t, c))
    g = torch.Generator
    torch.testing.assert_close(back.sample(2, c, w=1.0, steps=3, generator=g().manual_seed(0), progress=False),
                               ld.sample(2, c, w=1.0, steps=3, generator=g().manual_seed(0), progress=False))


def test_latent_diffusion_bad_inputs(schedule):
    ae = tiny_ae()
    with pytest.raises(ValueError, match=r"latent shape mismatch.*\(4, 4, 4\).*\(4, 8, 8\).*image_size=4"):
        LatentDiffusion(latent_unet(size=8), ae, schedule, image_shape=(3, 16, 16))
    with pytest.raises(ValueError, match=r"latent shape mismatch.*in_channels=4"):
        LatentDiffusion(latent_unet(channels=3), ae, schedule, image_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="not divisible"):
        LatentDiffusion(latent_unet(), ae, schedule, image_shape=(3, 18, 18))
    with pytest.raises(TypeError, match="Codec interface"):
        LatentDiffusion(latent_unet(), torch.nn.Linear(2, 2), schedule)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        LatentDiffusion(latent_unet(), ae, "linear")
    with pytest.raises(ValueError, match="T=20 steps but the schedule has T=30"):
        LatentDiffusion(latent_unet(), ae, NoiseSchedule.linear(30), image_shape=(3, 16, 16))
    ld = LatentDiffusion(latent_unet(8), ae, schedule, image_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="needs a null condition"):
        ld.loss(p_uncond=0.1)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p_uncond"):
            ld.loss(p_uncond=p)
    with pytest.raises(ValueError, match="null condition"):
        ld.sample(2, text_cond(2), w=2.0, steps=2, progress=False)
    with pytest.raises(ValueError, match="w=2.0 guides towards a condition"):
        ld.sample(2, w=2.0, steps=2, progress=False)
    with pytest.raises(ValueError, match="w must be a finite number >= 0"):
        ld.sample(2, text_cond(2), w=-1.0, progress=False)
    for n in (0, -2):
        with pytest.raises(ValueError, match="n"):
            ld.sample(n, progress=False)
    with pytest.raises(TypeError, match="n"):
        ld.sample(2.5, progress=False)
    with pytest.raises(ValueError, match="batch size 3, expected 2"):
        ld.sample(2, text_cond(3), steps=2, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        ld.sample(2, text_cond(2), method="euler", progress=False)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, 16, 16\)"):
        ld.encode_dataset(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match="batch_size"):
        ld.encode_dataset(blobs(4), batch_size=0)

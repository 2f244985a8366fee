"""minidiff.recipes: the models later chapters reuse are deterministic, frozen and cached by config."""
import pytest
import torch

from minidiff import NoiseSchedule, UNet
from minidiff.recipes import (
    DIGITS_UNET,
    HELD_OUT_PAIRS,
    digits_ddpm,
    digits_recipe,
    fingerprint,
    shapes_autoencoder,
    shapes_clip,
    shapes_latent_diffusion,
    shapes_training_set,
    text_to_image_config,
)


def test_training_set_excludes_the_held_out_pairs_and_the_star():
    scenes, tokens = shapes_training_set(200)
    assert tokens.shape == (200, 16)
    assert not any(f"{c} {s}" in caption for c, s in HELD_OUT_PAIRS for caption in scenes.captions)
    assert not any("star" in caption for caption in scenes.captions)
    again, _ = shapes_training_set(200)
    assert torch.equal(scenes.images, again.images)


def test_text_to_image_recipe_is_cached_frozen_and_guidable():
    ae, clip = shapes_autoencoder(steps=2, n=64), shapes_clip(steps=2, n=64)
    ld = shapes_latent_diffusion(ae, clip, steps=2, n=64)
    again = shapes_latent_diffusion(shapes_autoencoder(steps=2, n=64), shapes_clip(steps=2, n=64), steps=2, n=64)
    assert fingerprint(ld.unet) == fingerprint(again.unet)                       # the cache gives the same weights
    assert not any(p.requires_grad for p in ld.parameters())
    torch.testing.assert_close(ld.null_cond["context"], clip.null_context())
    assert text_to_image_config(2, 64)["steps"] == 2
    _, tokens = shapes_training_set(64)
    images = ld.sample(2, {"context": clip.token_features(tokens[:2])}, w=2.0, steps=2,
                       generator=torch.Generator().manual_seed(0), progress=False)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1


def test_fingerprint_changes_with_the_weights():
    a = torch.nn.Linear(2, 2)
    before = fingerprint(a)
    with torch.no_grad():
        a.weight[0, 0] += 1
    assert fingerprint(a) != before


def test_digits_ddpm_is_shared_through_the_cache_with_its_loss_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_CACHE", str(tmp_path))
    linear = NoiseSchedule.linear(1000)
    model, log = digits_ddpm(linear, steps=3)
    assert isinstance(model, UNet) and not model.training and len(log["losses"]) == 3 and log["seconds"] > 0
    again, log_again = digits_ddpm(NoiseSchedule.linear(1000), steps=3)          # chapter 3's call: read, not retrained
    assert fingerprint(again) == fingerprint(model) and log_again == log
    other, _ = digits_ddpm(NoiseSchedule.cosine(1000), steps=3)                 # another schedule, another entry
    assert fingerprint(other) != fingerprint(model) and len(list(tmp_path.iterdir())) == 2
    assert digits_recipe(linear, 3)["schedule"] != digits_recipe(NoiseSchedule.cosine(1000), 3)["schedule"]
    assert UNet(**DIGITS_UNET).spatial_size == (8, 8)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        digits_recipe("linear")
    with pytest.raises(ValueError, match="steps"):
        digits_ddpm(linear, steps=0)

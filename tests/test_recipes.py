"""minidiff.recipes: the chapter-5 parts later chapters reuse are deterministic, frozen and cached by config."""
import torch

from minidiff.recipes import (HELD_OUT_PAIRS, fingerprint, shapes_autoencoder, shapes_clip, shapes_latent_diffusion,
                              shapes_training_set, text_to_image_config)


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

"""minidiff.sd (chapter 10) on the tiny offline Stable Diffusion: loading, the eps-model adapter against
diffusers' own pipeline, prompts, LoRA through diffusers' loader, power steering hooks, blended edits, errors."""
from __future__ import annotations

import copy
import time

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from minidiff.eps import v_to_eps
from minidiff.guidance import ClassifierFreeGuidance
from minidiff.samplers import ddim_timesteps
from minidiff.sd import (
    DEFAULT_MODEL,
    WORDS,
    SDEps,
    check_unet,
    ddim_options,
    decode_latents,
    encode_prompts,
    latent_shape,
    load_pipeline,
    null_context,
    prediction_of,
    prompt_condition,
    sd_schedule,
    text_to_latents,
    tiny_pipeline,
)

PROMPTS = ["a red circle", "a photo of a sks dog"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_pipeline(0, tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def their_latents(pipe, prompts, latents, **kwargs):
    out = pipe(prompts, latents=latents.clone(), output_type="latent", **kwargs)
    return out.images


# ------------------------------------------------------------------------------------ the tiny pipeline
def test_tiny_pipeline_is_saved_and_reloaded_offline(pipe, tmp_path):
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.safety_checker is None
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 8
    again = tiny_pipeline(0, tmp_path)                          # same seed, same weights, from its own folder
    assert (tmp_path / "pipeline" / "model_index.json").is_file()
    for a, b in zip(pipe.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    other = tiny_pipeline(1, tmp_path / "other")
    assert not torch.equal(other.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_tiny_tokenizer_makes_each_word_one_token(pipe):
    ids = pipe.tokenizer(" ".join(WORDS), truncation=False).input_ids
    tokens = pipe.tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["<|startoftext|>", *(w + "</w>" for w in WORDS), "<|endoftext|>"]
    # unknown words still tokenise, letter by letter
    assert len(pipe.tokenizer("zebra").input_ids) == 2 + 5


def test_tiny_pipeline_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    tiny_pipeline(2, tmp_path)
    assert torch.equal(torch.rand(3), want)


# ------------------------------------------------------------------------- schedule and DDIM settings
def test_schedule_and_ddim_options_match_the_scheduler(pipe):
    schedule = sd_schedule(pipe)
    torch.testing.assert_close(schedule.alpha_bar.float(), pipe.scheduler.alphas_cumprod, rtol=0, atol=1e-6)
    options = ddim_options(pipe)
    assert options == {"spacing": "leading", "steps_offset": 1, "final_alpha_bar": float(schedule.alpha_bar[0])}
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(10)
    assert ddim_timesteps(1000, 10, "leading", 1) == sched.timesteps.tolist()
    assert prediction_of(pipe) == "eps"


def test_ddim_options_refuse_settings_that_cannot_match(pipe):
    with pytest.raises(ValueError, match="linspace"):
        ddim_options({**pipe.scheduler.config, "timestep_spacing": "linspace"})
    with pytest.raises(ValueError, match="clip_sample"):
        ddim_options({**pipe.scheduler.config, "clip_sample": True})
    with pytest.raises(ValueError, match="prediction_type"):
        prediction_of({"prediction_type": "flow"})
    with pytest.raises(TypeError, match="pipeline, scheduler"):
        sd_schedule(42)


# ---------------------------------------------------------------- minidiff DDIM + CFG = the pipeline
@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_minidiff_ddim_and_cfg_reproduce_the_diffusers_pipeline(pipe, generator, guidance_scale):
    x_T = torch.randn(2, 4, 8, 8, generator=generator)
    theirs = their_latents(pipe, PROMPTS, x_T, num_inference_steps=10, guidance_scale=guidance_scale)
    ours = text_to_latents(pipe, PROMPTS, steps=10, guidance_scale=guidance_scale, latents=x_T)
    assert theirs.abs().max() > 1                                 # not a trivially small output
    assert (ours - theirs).abs().max().item() < 1e-4


def test_same_generator_same_latents_and_negative_prompts(pipe):
    run = {"num_inference_steps": 5, "guidance_scale": 3.0, "negative_prompt": ["blue", "green square"],
               "num_images_per_prompt": 2}
    theirs = pipe(PROMPTS, generator=torch.Generator().manual_seed(7), output_type="latent", **run).images
    ours = text_to_latents(pipe, PROMPTS, steps=5, guidance_scale=3.0, negative=["blue", "green square"],
                           num_per_prompt=2, generator=torch.Generator().manual_seed(7))
    assert ours.shape == (4, 4, 8, 8)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_sdeps_is_the_unet_call_and_cfg_the_pipeline_combination(pipe, generator):
    eps = SDEps.from_pipeline(pipe)
    z, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([3, 700])
    ctx = encode_prompts(pipe, PROMPTS)
    with torch.no_grad():
        want = pipe.unet(z, t, encoder_hidden_states=ctx).sample
        assert torch.equal(eps(z, t, {"context": ctx}), want)
        assert torch.equal(eps(z, t, ctx), want)                 # the bare tensor is the context too
        guided = ClassifierFreeGuidance.from_guidance_scale(eps, 4.0)(z, t, {"context": ctx})
        uncond = pipe.unet(z, t, encoder_hidden_states=null_context(pipe).expand(2, -1, -1)).sample
    torch.testing.assert_close(guided, uncond + 4.0 * (want - uncond), rtol=0, atol=1e-5)
    assert eps.num_timesteps == 1000 and eps.null_cond["context"].shape == (1, 16, 32)


def test_prompts_are_encoded_as_diffusers_encodes_them(pipe):
    cond, null = prompt_condition(pipe, PROMPTS, negative="blue")
    pos, neg = pipe.encode_prompt(PROMPTS, torch.device("cpu"), 1, True, ["blue", "blue"])
    assert torch.equal(cond["context"], pos) and torch.equal(null["context"].expand(2, -1, -1), neg)
    assert encode_prompts(pipe, "a red circle").shape == (1, 16, 32)


def test_v_prediction_checkpoints_go_through_the_v_to_eps_conversion(pipe, generator):
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    v_pipe = diffusers.StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler})
    v_pipe.set_progress_bar_config(disable=True)
    eps = SDEps.from_pipeline(v_pipe)
    assert eps.prediction == "v"
    z, t, ctx = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([400]), encode_prompts(pipe, "a cat")
    with torch.no_grad():
        v = pipe.unet(z, t, encoder_hidden_states=ctx).sample
        ab = eps.schedule.alpha_bar[400].item()
        torch.testing.assert_close(eps(z, t, {"context": ctx}), v_to_eps(z, v, ab))
    x_T = torch.randn(2, 4, 8, 8, generator=generator)
    theirs = their_latents(v_pipe, PROMPTS, x_T, num_inference_steps=8, guidance_scale=4.0)
    ours = text_to_latents(v_pipe, PROMPTS, steps=8, guidance_scale=4.0, latents=x_T)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_decode_latents_is_the_vae_decoder_in_zero_one(pipe, generator):
    z = torch.randn(2, 4, 8, 8, generator=generator)
    images = decode_latents(pipe, z)
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        want = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close(images, ((want + 1) / 2).clamp(0, 1))


# ------------------------------------------------------------------------------------------- errors
def test_sdxl_style_unets_are_refused(pipe):
    unet = copy.deepcopy(pipe.unet)
    unet.register_to_config(addition_embed_type="text_time")
    with pytest.raises(ValueError, match="SDXL"):
        check_unet(unet)
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        SDEps(torch.nn.Linear(2, 2), sd_schedule(pipe))


def test_unknown_model_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_pipeline("nobody/no-such-model")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_pipeline(str(tmp_path / "missing" / "sd"))
    with pytest.raises(FileNotFoundError, match=DEFAULT_MODEL.split("/")[0]):
        load_pipeline(download=False)
    assert time.perf_counter() - start < 30


def test_cuda_without_a_gpu_and_bad_arguments_are_refused(pipe):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="cuda"):
        load_pipeline("whatever", device="cuda")
    with pytest.raises(TypeError, match="dtype"):
        load_pipeline("whatever", dtype=torch.int8)
    with pytest.raises(TypeError, match="model must be"):
        load_pipeline(42)


def test_prompt_batch_and_guidance_mismatches_are_refused(pipe, generator):
    x_T = torch.randn(3, 4, 8, 8, generator=generator)
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 4, 8, 8\)"):
        text_to_latents(pipe, PROMPTS, latents=x_T, steps=2)
    with pytest.raises(ValueError, match="one number"):
        text_to_latents(pipe, PROMPTS, guidance_scale=torch.tensor([2.0, 3.0]), steps=2)
    with pytest.raises(ValueError, match=">= 1"):
        text_to_latents(pipe, PROMPTS, guidance_scale=0.5, steps=2)
    with pytest.raises(ValueError, match="negative must be one prompt or one per prompt"):
        text_to_latents(pipe, PROMPTS, negative=["a", "b", "c"], steps=2)
    with pytest.raises(TypeError, match="prompts must be a str"):
        encode_prompts(pipe, [])
    with pytest.raises(ValueError, match="multiples of the VAE factor"):
        latent_shape(pipe, 1, height=15)
    eps = SDEps.from_pipeline(pipe)
    z, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"\(B, L, 32\)"):
        eps(z, t, {"context": torch.randn(2, 16, 8)})
    with pytest.raises(ValueError, match="batch size"):
        eps(z, t, {"context": torch.randn(3, 16, 32)})
    with pytest.raises(ValueError, match="c_add belongs to a steered model"):
        eps(z, t, {"context": torch.randn(2, 16, 32), "c_add": torch.zeros(2, 1, 16, 16)})
    with pytest.raises(ValueError, match="needs a text context"):
        eps(z, t)

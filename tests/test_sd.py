"""minidiff.sd (chapter 10) on the tiny offline Stable Diffusion: loading, the eps-model adapter against
diffusers' own pipeline, prompts, LoRA through diffusers' loader, power steering hooks, blended edits, errors."""
from __future__ import annotations

import copy
import time

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from minidiff.bps import MODES, mode_ports, port_weights
from minidiff.eps import v_to_eps
from minidiff.forward import q_sample
from minidiff.guidance import ClassifierFreeGuidance
from minidiff.lora import inject_lora, save_diffusers_lora
from minidiff.nets.ports import capture
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
from minidiff.sd.blend import blended_ddim_loop, blended_edit, latent_mask
from minidiff.sd.steer import SDPorts, SDPowerSteering, add_sd_residuals
from minidiff.sd.train import NoisedExamples, dreambooth_examples, train_sd

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
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("zebra").input_ids)[1:-1]
    assert "".join(tokens) == "zebra</w>" and "<|endoftext|>" not in tokens


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


# ------------------------------------------------------------------------------------ LoRA round trip
ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


def frozen_copy(pipe):
    """An SDEps over a copy of the pipeline's U-Net (the module-wide pipeline stays untouched)."""
    return SDEps(copy.deepcopy(pipe.unet), sd_schedule(pipe), "eps", null_context(pipe))


def test_dreambooth_lora_trains_and_round_trips_through_diffusers_loader(pipe, tmp_path, generator):
    accelerate = pytest.importorskip("accelerate")
    eps = frozen_copy(pipe)
    base_state = {k: v.clone() for k, v in eps.unet.state_dict().items()}
    torch.manual_seed(0)
    inject_lora(eps.unet, ATTN, r=2, alpha=4)
    instance = torch.randn(2, 4, 8, 8, generator=generator)
    prior = text_to_latents(pipe, ["a photo of a dog"] * 2, steps=3, guidance_scale=1.0, generator=generator)
    examples = dreambooth_examples((instance, {"context": encode_prompts(pipe, ["a photo of a sks dog"] * 2)}),
                                   (prior, {"context": encode_prompts(pipe, ["a photo of a dog"] * 2)}),
                                   sd_schedule(pipe), num_items=12, prior_weight=0.5)
    records = list(train_sd(eps, examples, steps=3, batch_size=4, lr=1e-2,
                            accelerator=accelerate.Accelerator(cpu=True)))
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["loss"] > 0 for r in records)
    b = [p for n, p in eps.unet.named_parameters() if "lora_B" in n]
    assert b and all(p.abs().max() > 0 for p in b)                # trained from zero …
    for name, value in eps.unet.state_dict().items():             # … while the base stayed as it was
        if name in base_state:
            assert torch.equal(value, base_state[name]), name
    path = save_diffusers_lora(eps.unet, tmp_path / "sks.safetensors")
    theirs = diffusers.StableDiffusionPipeline(**{**pipe.components, "unet": copy.deepcopy(pipe.unet)})
    theirs.set_progress_bar_config(disable=True)
    theirs.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="sks")
    x_T = torch.randn(2, 4, 8, 8, generator=generator)
    want = their_latents(theirs, PROMPTS, x_T, num_inference_steps=6, guidance_scale=4.0)
    ours = text_to_latents(pipe, PROMPTS, steps=6, guidance_scale=4.0, latents=x_T, eps_model=eps)
    plain = text_to_latents(pipe, PROMPTS, steps=6, guidance_scale=4.0, latents=x_T)
    assert (ours - plain).abs().max() > 1e-3                      # the adapter matters …
    assert (ours - want).abs().max().item() < 1e-4                # … and diffusers applies it as we do


def test_noised_examples_depend_on_the_item_only(pipe, generator):
    z = torch.randn(3, 4, 8, 8, generator=generator)
    ex = NoisedExamples([(z, {"context": torch.zeros(3, 16, 32)}, 1.0), (z[:1], {"context": torch.ones(1, 16, 32)}, 0.3)],
                        sd_schedule(pipe), num_items=10, seed=4)
    a, b = ex[5], ex[5]
    assert torch.equal(a["noise"], b["noise"]) and torch.equal(a["t"], b["t"])
    assert not torch.equal(ex[4]["noise"], ex[6]["noise"])
    assert torch.equal(ex[4]["z0"], z[2]) and ex[5]["weight"].item() == pytest.approx(0.3)   # round robin
    with pytest.raises(ValueError, match="reserved"):
        NoisedExamples([(z, {"t": torch.zeros(3)}, 1.0)], sd_schedule(pipe), 4)
    with pytest.raises(ValueError, match="weight"):
        NoisedExamples([(z, {}, -1.0)], sd_schedule(pipe), 4)
    with pytest.raises(ValueError, match="rows"):
        NoisedExamples([(z, {"context": torch.zeros(2, 16, 32)}, 1.0)], sd_schedule(pipe), 4)


def test_train_sd_refuses_a_short_stream_and_frozen_models(pipe, generator):
    accelerate = pytest.importorskip("accelerate")
    z = torch.randn(2, 4, 8, 8, generator=generator)
    ex = NoisedExamples([(z, {"context": torch.zeros(2, 16, 32)}, 1.0)], sd_schedule(pipe), num_items=4)
    with pytest.raises(ValueError, match="num_items=8"):
        train_sd(frozen_copy(pipe), ex, steps=2, batch_size=4, accelerator=accelerate.Accelerator(cpu=True))
    eps = frozen_copy(pipe).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_sd(eps, ex, steps=1, batch_size=4, accelerator=accelerate.Accelerator(cpu=True))
    with pytest.raises(ValueError, match="steps"):
        train_sd(eps, ex, steps=0)


# ------------------------------------------------------------------------------------ power steering
def randomise(module, generator, std=0.1):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=generator))


def steer_inputs(generator, batch=2):
    return (torch.randn(batch, 4, 8, 8, generator=generator), torch.tensor([10, 600][:batch]),
            torch.randn(batch, 16, 32, generator=generator), torch.rand(batch, 1, 16, 16, generator=generator))


@pytest.mark.parametrize("mode", list(MODES))
def test_bps_zero_init_equals_the_base_and_each_mode_steers_its_ports(pipe, generator, mode):
    steer = SDPowerSteering(frozen_copy(pipe), mode, c_add_channels=1, unshuffle=2)
    z, t, ctx, c_add = steer_inputs(generator)
    with torch.no_grad():
        base = steer.base(z, t, {"context": ctx})
        assert torch.equal(steer(z, t, {"context": ctx, "c_add": c_add}), base)
        randomise(steer.side, generator)
        assert set(steer.residuals(z, t, {"context": ctx, "c_add": c_add})) == set(mode_ports(steer.ports, mode))
        assert not torch.allclose(steer(z, t, {"context": ctx, "c_add": c_add}), base)
        assert torch.equal(steer.base(z, t, {"context": ctx}), base)       # hooks gone: bit-identical again
    unet = steer.base.unet
    assert not unet._forward_hooks and not unet._forward_pre_hooks
    assert all(not m._forward_hooks for m in unet.modules())


def test_bps_middle_and_skip_ports_match_diffusers_controlnet_residuals(pipe, generator):
    steer = SDPowerSteering(frozen_copy(pipe), "ME-D", weights="head-heavy", c_add_channels=1, unshuffle=2)
    randomise(steer.side, generator)
    z, t, ctx, c_add = steer_inputs(generator)
    with torch.no_grad():
        res = steer.residuals(z, t, {"context": ctx, "c_add": c_add})
        skips = tuple(res[p] for p in steer.ports.skip_ports)
        want = steer.base.unet(z, t, encoder_hidden_states=ctx, down_block_additional_residuals=skips,
                               mid_block_additional_residual=res["mid"]).sample
        torch.testing.assert_close(steer(z, t, {"context": ctx, "c_add": c_add}), want, rtol=0, atol=1e-5)


def test_encoder_ports_change_the_encoder_and_decoder_ports_do_not(pipe, generator):
    z, t, ctx, c_add = steer_inputs(generator)
    feats = {}
    for mode in ("E", "D"):
        steer = SDPowerSteering(frozen_copy(pipe), mode, c_add_channels=1, unshuffle=2)
        randomise(steer.side, generator)
        with capture(steer.base.unet, ["down_blocks.1"]) as seen, torch.no_grad():
            steer(z, t, {"context": ctx, "c_add": c_add})
        feats[mode] = seen["down_blocks.1"][0]
        with capture(steer.base.unet, ["down_blocks.1"]) as seen, torch.no_grad():
            steer.base(z, t, {"context": ctx})
        feats[mode + "-base"] = seen["down_blocks.1"][0]
    assert not torch.allclose(feats["E"], feats["E-base"])
    assert torch.equal(feats["D"], feats["D-base"])


def test_sd15_layout_gives_bps_21_ports_and_head_heavy_weights():
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(8, 16, 16, 16), layers_per_block=2, cross_attention_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=4, norm_num_groups=4)
    ports = SDPorts(unet)
    groups = {g: mode_ports(ports, g) for g in ("E", "M", "D", "E-D")}
    assert [len(groups[g]) for g in ("E", "M", "D", "E-D")] == [8, 1, 12, 12]       # BPS.md: 8 + 1 + 12 (+ skips)
    weights = port_weights(ports, groups["E"] + groups["M"] + groups["D"], "head-heavy")
    assert [weights[p] for p in groups["E"]] == [16, 16, 8, 8, 4, 4, 2, 2]
    assert weights["mid"] == 16 and {weights[p] for p in groups["D"]} == {1}
    assert ports.port_shape("down.0.0") == (8, 16, 16) and ports.port_shape("mid") == (16, 2, 2)


def test_cfg_on_a_steered_sd_keeps_c_add_in_both_halves(pipe, generator):
    steer = SDPowerSteering.from_pipeline(pipe, "EMD", c_add_channels=1)
    randomise(steer.side, generator)
    z, t, ctx, c_add = steer_inputs(generator)
    null = steer.null_cond["context"].expand(2, -1, -1)
    x_T = torch.randn(2, 4, 8, 8, generator=generator)
    prompts = ["a cat", "a dog"]
    steered = text_to_latents(pipe, prompts, steps=3, guidance_scale=3.0, latents=x_T, eps_model=steer,
                              extra_cond={"c_add": c_add})
    assert not torch.allclose(steered, text_to_latents(pipe, prompts, steps=3, guidance_scale=3.0, latents=x_T))
    with pytest.raises(ValueError, match="extra_cond"):
        text_to_latents(pipe, prompts, steps=3, eps_model=steer, extra_cond={"context": ctx})
    with torch.no_grad():
        guided = ClassifierFreeGuidance.from_guidance_scale(steer, 3.0)(z, t, {"context": ctx, "c_add": c_add})
        cond = steer(z, t, {"context": ctx, "c_add": c_add})
        uncond = steer(z, t, {"context": null, "c_add": c_add})
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=0, atol=1e-5)


def test_bps_training_step_moves_only_the_side_network(pipe, generator):
    accelerate = pytest.importorskip("accelerate")
    steer = SDPowerSteering.from_pipeline(pipe, "ALL", weights="head-heavy", c_add_channels=1, width=8)
    base = {k: v.clone() for k, v in steer.base.state_dict().items()}
    side = {k: v.clone() for k, v in steer.side.state_dict().items()}
    z, _, ctx, c_add = steer_inputs(generator)
    ex = NoisedExamples([(z, {"context": ctx, "c_add": c_add}, 1.0)], sd_schedule(pipe), num_items=4)
    records = list(train_sd(steer, ex, steps=2, batch_size=2, lr=1e-3, accelerator=accelerate.Accelerator(cpu=True)))
    assert len(records) == 2
    assert all(torch.equal(v, base[k]) for k, v in steer.base.state_dict().items())
    assert any(not torch.equal(v, side[k]) for k, v in steer.side.state_dict().items())


def test_bps_bad_inputs(pipe, generator):
    eps = frozen_copy(pipe)
    with pytest.raises(ValueError, match="the modes are"):
        SDPowerSteering(eps, "EVERYWHERE", c_add_channels=1)
    with pytest.raises(TypeError, match="c_add_channels"):
        SDPowerSteering(eps, "ALL")
    with pytest.raises(TypeError, match="SDEps"):
        SDPowerSteering(pipe.unet, "ALL", c_add_channels=1)
    with pytest.raises(ValueError, match="explicit weights"):
        SDPowerSteering(eps, "M", weights={"up.0.0": 1.0}, c_add_channels=1)
    steer = SDPowerSteering(eps, "M", c_add_channels=1, unshuffle=2)
    z, t, ctx, _ = steer_inputs(generator)
    with pytest.raises(ValueError, match="c_add must have shape"):
        steer(z, t, {"context": ctx, "c_add": torch.rand(2, 1, 8, 8)})
    with pytest.raises(ValueError, match="c_add"):
        steer(z, t, {"context": ctx})
    with pytest.raises(KeyError, match="unknown ports"):
        add_sd_residuals(eps.unet, steer.ports, {"down.9.9": torch.zeros(1)})
    with add_sd_residuals(eps.unet, steer.ports, {"mid": torch.zeros(2, 3, 4, 4)}), \
            pytest.raises(ValueError, match=r"port 'mid' must have shape \(B, 64, 4, 4\)"):
        eps(z, t, {"context": ctx})


# ------------------------------------------------------------------------------------ blended edits
def test_blended_edit_keeps_unmasked_latents_equal_to_the_renoised_source(pipe, generator):
    source = torch.randn(1, 4, 8, 8, generator=generator)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    eps = ClassifierFreeGuidance.from_guidance_scale(SDEps.from_pipeline(pipe), 3.0)
    cond = {"context": encode_prompts(pipe, "a blue square")}
    schedule, options = sd_schedule(pipe), ddim_options(pipe)
    x_T = torch.randn(1, 4, 8, 8, generator=generator)
    states = list(blended_ddim_loop(eps, schedule, source, mask, steps=5, cond=cond, x_T=x_T,
                                    generator=torch.Generator().manual_seed(9), **options))
    replay = torch.Generator().manual_seed(9)                     # the loop's draws, in its order
    ts = ddim_timesteps(1000, 5, "leading", 1)
    for state, t_prev in zip(states, ts[1:] + [-1]):
        want = source if t_prev < 0 else q_sample(schedule, source, t_prev, torch.randn(1, 4, 8, 8, generator=replay))
        assert torch.equal(state["background"], want)
        assert torch.equal(state["x"] * (1 - mask), want * (1 - mask))      # outside the mask: exactly the source
        assert torch.equal(state["x"] * mask, state["foreground"] * mask)
    assert torch.equal(states[-1]["x"] * (1 - mask), source * (1 - mask))
    # a full mask is plain DDIM from the same start
    full = list(blended_ddim_loop(eps, schedule, source, torch.ones(1, 1, 8, 8), steps=5, cond=cond, x_T=x_T,
                                  **options))[-1]["x"]
    plain = text_to_latents(pipe, "a blue square", steps=5, guidance_scale=3.0, latents=x_T)
    torch.testing.assert_close(full, plain, rtol=0, atol=1e-5)


def test_blended_edit_on_the_pipeline_and_latent_masks(pipe, generator):
    image_mask = torch.zeros(1, 1, 16, 16)
    image_mask[..., 3, 12] = 1                                    # one pixel -> its 2×2 cell
    mask = latent_mask(image_mask, pipe.vae_scale_factor)
    assert mask.shape == (1, 1, 8, 8) and mask.sum() == 1 and mask[0, 0, 1, 6] == 1
    source = torch.randn(2, 4, 8, 8, generator=generator)
    out = blended_edit(pipe, source, mask, "a red circle", steps=3, guidance_scale=2.0, generator=generator)
    assert out.shape == source.shape
    assert torch.equal(out * (1 - mask), source * (1 - mask)) and not torch.equal(out, source)
    sdedit = blended_edit(pipe, source, mask, ["a red circle", "a cat"], steps=4, t_start=500, generator=generator)
    assert torch.equal(sdedit * (1 - mask), source * (1 - mask))


def test_blended_edit_bad_masks(pipe, generator):
    source = torch.randn(1, 4, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="latent resolution"):
        blended_edit(pipe, source, torch.ones(1, 1, 16, 16), "a cat", steps=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blended_edit(pipe, source, 2 * torch.ones(1, 1, 8, 8), "a cat", steps=2)
    with pytest.raises(ValueError, match="not divisible"):
        latent_mask(torch.ones(15, 16), 2)
    with pytest.raises(ValueError, match="one prompt or one per source"):
        blended_edit(pipe, source, torch.ones(1, 1, 8, 8), ["a", "b"], steps=2)
    with pytest.raises(ValueError, match="not both"):
        blended_ddim_loop(SDEps.from_pipeline(pipe), sd_schedule(pipe), source, torch.ones(1, 1, 8, 8),
                          x_T=source, t_start=10)


def test_half_precision_pipeline_keeps_its_dtype_and_tracks_diffusers(pipe, generator):
    half = copy.deepcopy(pipe).to(dtype=torch.bfloat16)           # bf16 runs on a CPU; fp16 is the CUDA default
    x_T = torch.randn(2, 4, 8, 8, generator=generator).to(torch.bfloat16)
    theirs = their_latents(half, PROMPTS, x_T, num_inference_steps=5, guidance_scale=4.0)
    ours = text_to_latents(half, PROMPTS, steps=5, guidance_scale=4.0, latents=x_T)
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - theirs.float()).abs().max() < 5e-2 * theirs.float().abs().max()   # 8-bit mantissas
    steer = SDPowerSteering.from_pipeline(half, "EMD", c_add_channels=1)   # an fp32 side net on a bf16 U-Net
    assert next(steer.side.parameters()).dtype == torch.float32
    out = text_to_latents(half, PROMPTS, steps=2, latents=x_T, eps_model=steer,
                          extra_cond={"c_add": torch.rand(2, 1, 16, 16, generator=generator)})
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_load_pipeline_drops_a_shipped_safety_checker_with_a_note(pipe, tmp_path, monkeypatch):
    import json
    import shutil
    import warnings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "sd"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                           # no checker shipped: no note
        plain = load_pipeline(folder)
    assert plain.unet.dtype == torch.float32 and plain.safety_checker is None
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]   # as SD 1.5 ships it
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="without its NSFW safety checker"):
        loaded = load_pipeline(str(folder))
    assert loaded.safety_checker is None
    for a, b in zip(loaded.unet.parameters(), pipe.unet.parameters()):
        assert torch.equal(a, b)
    shutil.rmtree(folder / "unet")
    with pytest.raises(FileNotFoundError, match="in the folder"):
        load_pipeline(folder)
    monkeypatch.setenv("MINIDIFF_SD_MODEL", str(tmp_path / "elsewhere" / "sd"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_pipeline()


def test_more_bad_arguments_name_themselves(pipe, generator):
    with pytest.raises(ValueError, match="latent_size"):
        SDPorts(pipe.unet, latent_size=(8,))
    with pytest.raises(ValueError, match=r"latent_size\[0\]"):
        SDPorts(pipe.unet, latent_size=0)
    with pytest.raises(ValueError, match="factor"):
        latent_mask(torch.ones(16, 16), 0)
    with pytest.raises(ValueError, match="num_items"):
        NoisedExamples([(torch.zeros(1, 4, 8, 8), {}, 1.0)], sd_schedule(pipe), 0)
    with pytest.raises(ValueError, match="steps"):
        text_to_latents(pipe, "a cat", steps=0)
    with pytest.raises(ValueError, match="steps"):
        blended_edit(pipe, torch.zeros(1, 4, 8, 8), torch.ones(1, 1, 8, 8), "a cat", steps=2000)
    with pytest.raises(ValueError, match="num_per_prompt"):
        prompt_condition(pipe, "a cat", num_per_prompt=0)
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        SDEps(pipe.unet, "scaled_linear")
    with pytest.raises(ValueError, match="prediction must be one of"):
        SDEps(pipe.unet, sd_schedule(pipe), "velocity")


def test_fractional_steps_drive_sd_through_the_continuous_time_bridge(pipe, generator):
    from minidiff import VPSDE, ContinuousTime, ode_loop
    from minidiff.samplers import run_loop
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, beta_schedule="linear",
                                                    beta_start=1e-4, beta_end=0.02)
    linear = diffusers.StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler})
    eps = SDEps.from_pipeline(linear)
    z, ctx = torch.randn(2, 4, 8, 8, generator=generator), encode_prompts(pipe, PROMPTS)
    with torch.no_grad():                                          # an integer-valued float t is the same step
        assert torch.equal(eps(z, torch.tensor([5.0, 700.0]), ctx), eps(z, torch.tensor([5, 700]), ctx))
        between = eps(z, torch.tensor([5.5, 700.5]), ctx)
        assert not torch.equal(between, eps(z, torch.tensor([5, 700]), ctx))
    with pytest.raises(ValueError, match="step index"):
        eps(z, torch.tensor([-1.0, 2.0]), ctx)
    guided = ClassifierFreeGuidance.from_guidance_scale(ContinuousTime.from_ddpm(eps), 3.0)
    sde = VPSDE.from_schedule(eps.schedule)                         # chapter 3's PF-ODE on SD's U-Net
    x = run_loop(ode_loop(guided, sde, z, steps=4, method="euler", cond={"context": ctx}, progress=False), z)
    assert x.shape == z.shape and torch.isfinite(x).all()


def test_train_sd_restores_the_forward_that_mixed_precision_wraps(pipe, generator):
    accelerate = pytest.importorskip("accelerate")
    eps = frozen_copy(pipe)
    inject_lora(eps.unet, ATTN, r=2)
    forward = eps.forward
    z = torch.randn(2, 4, 8, 8, generator=generator)
    ex = NoisedExamples([(z, {"context": torch.zeros(2, 16, 32)}, 1.0)], sd_schedule(pipe), num_items=2)
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)        # the state is a process-wide singleton
    try:
        acc = accelerate.Accelerator(cpu=True, mixed_precision="bf16")
        records = list(train_sd(eps, ex, steps=1, batch_size=2, accelerator=acc))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert len(records) == 1 and "_original_forward" not in eps.__dict__
    assert eps.forward == forward and not eps.training

#!/usr/bin/env python
"""minidiff's sampling loop against diffusers' StableDiffusionPipeline on the same U-Net (chapter 10).

Both runs start from the same latents, encode the same prompts, and take the same DDIM steps with
classifier-free guidance (diffusers' ``guidance_scale``) down to latents (no VAE decode):

* diffusers: ``pipe(prompts, latents=x_T, num_inference_steps=N, guidance_scale=g, output_type="latent")``;
* minidiff: ``minidiff.sd.text_to_latents(pipe, prompts, latents=x_T, steps=N, guidance_scale=g)`` — SDEps +
  ClassifierFreeGuidance + minidiff's DDIM loop.

Runs are interleaved after a warm-up; the table gives the median and best time of each, the ratio
minidiff ÷ diffusers (goal <= 1.05; on a loaded machine the best-of ratio is the steadier one) and the largest
latent difference. ``unet only`` is the floor: the N U-Net
calls on the doubled batch alone, so (time − floor) is each loop's own overhead.

    python benchmarks/sd_overhead.py                                 # the tiny pipeline on the CPU
    python benchmarks/sd_overhead.py --device cuda --model stable-diffusion-v1-5/stable-diffusion-v1-5

Exits with status 1 if the two loops' latents differ by more than 1e-3 (fp16) / 1e-4 (fp32).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from minidiff import md_table, pick
from minidiff.sd import (
    encode_prompts,
    latent_shape,
    load_pipeline,
    text_to_latents,
    tiny_pipeline,
)

PROMPTS = ["a red circle on the left", "a photo of a small blue square"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="hub id or folder of a real checkpoint (default: the tiny pipeline)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=pick(10, 50), help="DDIM steps (default 50; 10 quick)")
    p.add_argument("--guidance", type=float, default=7.5, help="guidance_scale g (default 7.5)")
    p.add_argument("--repeats", type=int, default=pick(5, 15), help="timed runs of each (default 15; 5 quick)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    args = p.parse_args(argv)
    if min(args.steps, args.repeats, args.threads) < 1 or args.guidance < 1:
        p.error("--steps, --repeats, --threads must be >= 1 and --guidance >= 1")
    return args


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = tiny_pipeline(0, device=args.device) if args.model is None else load_pipeline(args.model, args.device)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    x_T = torch.randn(latent_shape(pipe, len(PROMPTS)), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    context = torch.cat([encode_prompts(pipe, [""] * len(PROMPTS)), encode_prompts(pipe, PROMPTS)])
    schedule_steps = pipe.scheduler
    schedule_steps.set_timesteps(args.steps)
    ts = schedule_steps.timesteps.to(device)

    @torch.no_grad()
    def unet_only() -> torch.Tensor:
        z = torch.cat([x_T, x_T])
        for t in ts:
            out = pipe.unet(z, t, encoder_hidden_states=context).sample
        return out

    runs = {
        "diffusers pipeline": lambda: pipe(PROMPTS, latents=x_T.clone(), num_inference_steps=args.steps,
                                           guidance_scale=args.guidance, output_type="latent").images,
        "minidiff loop": lambda: text_to_latents(pipe, PROMPTS, latents=x_T.clone(), steps=args.steps,
                                                 guidance_scale=args.guidance, progress=False),
        "unet only": unet_only,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for name, fn in runs.items():                      # warm-up
        outputs[name] = fn()
    for _ in range(args.repeats):                      # interleaved, so drifts in machine load hit all alike
        for name, fn in runs.items():
            seconds, _ = timed(fn, device)
            times[name].append(seconds)
    diff = (outputs["minidiff loop"].float() - outputs["diffusers pipeline"].float()).abs().max().item()
    ref = statistics.median(times["diffusers pipeline"])
    floor = statistics.median(times["unet only"])
    rows = [[name, f"{1e3 * statistics.median(v):.1f}", f"{1e3 * min(v):.1f}", f"{statistics.median(v) / ref:.3f}",
             f"{1e3 * (statistics.median(v) - floor) / args.steps:.2f}"] for name, v in times.items()]
    where = "tiny pipeline" if args.model is None else args.model
    print(f"{where} on {device} ({dtype}), {len(PROMPTS)} prompts, {args.steps} DDIM steps, g = {args.guidance}, "
          f"{args.repeats} runs, {args.threads} thread(s)")
    print(md_table(["run", "median ms", "best ms", "÷ diffusers", "overhead ms/step"], rows))
    ratio = statistics.median(times["minidiff loop"]) / ref
    best = min(times["minidiff loop"]) / min(times["diffusers pipeline"])
    print(f"\nminidiff / diffusers time ratio: {ratio:.3f} median, {best:.3f} best of {args.repeats} (goal <= 1.05); "
          f"max |latent difference|: {diff:.2e}")
    return 0 if diff <= (1e-3 if dtype == torch.float16 else 1e-4) else 1


if __name__ == "__main__":
    sys.exit(main())

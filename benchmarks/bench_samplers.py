#!/usr/bin/env python
"""Sampler speed and agreement: minidiff's DDPM / DDIM loops against diffusers' schedulers.

Both sides sample the SAME eps-model (a small U-Net or the 2-D MLP with fixed, seeded random
weights, plus the exact eps of N(0, I) data so that samples stay bounded) from the SAME x_T,
with the same noise: each DDPM run gets a CPU ``torch.Generator`` seeded identically, and both minidiff's ``ddpm_step`` and diffusers' ``DDPMScheduler.step`` draw
one ``torch.randn(x.shape, generator=g)`` per step for t > 0, in the same order. DDIM runs with
η = 0, so it draws no noise at all. The diffusers side is a hand-written loop over
``scheduler.step`` (what ``DDPMPipeline`` / ``DDIMPipeline`` do, minus the image post-processing),
configured explicitly so that the two compute the same thing:

    DDPMScheduler(beta_schedule="linear", variance_type="fixed_small", clip_sample=False,
                  prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
    DDIMScheduler(...same..., set_alpha_to_one=True)

minidiff uses ``NoiseSchedule.from_diffusers(scheduler)``, i.e. the very float32-rounded betas of
the scheduler, so the max |difference| measures arithmetic only (diffusers keeps its tables in
float32, minidiff in float64; both apply them to float32 samples).

Timing: the two implementations run interleaved in one process (minidiff, diffusers, minidiff,
…), after one warm-up run each; the table reports the best of ``--repeats`` runs (the least
disturbed by other load on the machine). ratio = minidiff / diffusers: below 1.0 minidiff is
faster. Model time is identical on both sides, so the difference is sampler overhead per step.

    python benchmarks/bench_samplers.py                      # defaults: U-Net, batch 16, best of 3
    python benchmarks/bench_samplers.py --model mlp --batch 256 --repeats 5
    python benchmarks/bench_samplers.py --model none         # no network: pure per-step overhead
    python benchmarks/bench_samplers.py --device cuda        # on a GPU (timings synchronise)
    python benchmarks/bench_samplers.py --profile            # cProfile of one minidiff DDPM run
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from typing import Callable

import torch
from torch import Tensor, nn

from diffusers import DDIMScheduler, DDPMScheduler
from minidiff import MLPDenoiser, NoiseSchedule, UNet, ddim_loop, ddpm_loop, pick, resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50); DDPM always takes all T steps")
    p.add_argument("--T", type=int, default=1000, help="training steps of the schedule, i.e. DDPM's steps (default 1000)")
    p.add_argument("--batch", type=int, default=16, help="samples per run (default 16)")
    p.add_argument("--repeats", type=int, default=pick(1, 3),
                   help="timed runs per implementation; the best is reported (default 3; 1 with MINIDIFF_QUICK=1)")
    p.add_argument("--device", default="cpu", help="'cpu' (default), 'cuda', 'cuda:1', 'mps'")
    p.add_argument("--model", choices=("unet", "mlp", "none"), default="unet",
                   help="eps-model: 'unet' (8x8 U-Net, base 16 channels), 'mlp' (2-D MLPDenoiser) or 'none' "
                        "(closed-form eps only: measures pure sampler overhead)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="also print a cProfile of one minidiff and one diffusers DDPM run")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        p.error("--repeats and --batch must be >= 1")
    if not 1 <= args.steps <= args.T:
        p.error(f"--steps must be in [1, T={args.T}]")
    return args


class BoundedEps(nn.Module):
    """eps(x_t, t) = sqrt(1 - alpha_bar_t) x_t + 0.1 * net(x_t, t).

    The first term is the exact eps-model of N(0, I) data, so samples stay of order 1 (a bare
    random net drives DDPM samples to |x| ~ 1e3, which makes float32 round-off look large);
    the random net keeps the model a real network of realistic cost.
    """

    def __init__(self, net: nn.Module | None, alpha_bar: Tensor) -> None:
        super().__init__()
        self.net, self.num_timesteps = net, alpha_bar.numel()
        self.register_buffer("root_one_minus_ab", (1 - alpha_bar).sqrt().float())

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        scale = self.root_one_minus_ab[t].reshape(-1, *([1] * (x.ndim - 1)))
        return scale * x if self.net is None else scale * x + 0.1 * self.net(x, t)


def build_model(kind: str, T: int, seed: int, device: torch.device, alpha_bar: Tensor) -> tuple[nn.Module, tuple[int, ...]]:
    """A small eps-model with fixed, seeded random weights (and its data shape).

    The U-Net's output conv starts at zero (an untrained U-Net predicts 0), so it is
    re-initialised with small random weights here.
    """
    torch.manual_seed(seed)
    if kind == "unet":
        net, shape = UNet(image_size=8, base_channels=16, num_timesteps=T), (1, 8, 8)
        nn.init.normal_(net.out[-1].weight, std=0.05)
        nn.init.normal_(net.out[-1].bias, std=0.05)
    elif kind == "mlp":
        net, shape = MLPDenoiser(dim=2, num_timesteps=T), (2,)
    else:  # "none": no network at all, so the timings measure the samplers' own per-step overhead
        net, shape = None, (1, 8, 8)
    return BoundedEps(net, alpha_bar).to(device).eval().requires_grad_(False), shape


def schedulers(T: int) -> tuple[DDPMScheduler, DDIMScheduler]:
    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False, prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
    return DDPMScheduler(variance_type="fixed_small", **common), DDIMScheduler(set_alpha_to_one=True, **common)


# ---------------------------------------------------------------------------------- samplers
def minidiff_ddpm(model, schedule, x_T: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = x_T
    for state in ddpm_loop(model, schedule, x_T, generator=g, progress=False):
        x = state["x"]
    return x


def minidiff_ddim(model, schedule, x_T: Tensor, steps: int) -> Tensor:
    x = x_T
    for state in ddim_loop(model, schedule, x_T, steps=steps, eta=0.0, progress=False):
        x = state["x"]
    return x


@torch.no_grad()
def diffusers_ddpm(model, scheduler: DDPMScheduler, x_T: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)  # as DDPMPipeline does
    x = x_T
    for t in scheduler.timesteps:
        eps = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device))
        x = scheduler.step(eps, t, x, generator=g).prev_sample
    return x


@torch.no_grad()
def diffusers_ddim(model, scheduler: DDIMScheduler, x_T: Tensor, steps: int) -> Tensor:
    scheduler.set_timesteps(steps)
    x = x_T
    for t in scheduler.timesteps:
        eps = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device))
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


def timed(fn: Callable[[], Tensor], device: torch.device) -> tuple[float, Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def compare(name: str, ours: Callable[[], Tensor], theirs: Callable[[], Tensor], repeats: int,
            device: torch.device) -> dict:
    """Warm up both, then time them interleaved; best of ``repeats``; max |difference|."""
    _, out_ours = timed(ours, device)
    _, out_theirs = timed(theirs, device)
    best_ours = best_theirs = float("inf")
    for _ in range(repeats):
        best_ours = min(best_ours, timed(ours, device)[0])
        best_theirs = min(best_theirs, timed(theirs, device)[0])
    diff = (out_ours - out_theirs).abs().max().item()
    return {"name": name, "minidiff": best_ours, "diffusers": best_theirs, "ratio": best_ours / best_theirs, "diff": diff}


def profile(fn: Callable[[], Tensor], title: str, limit: int = 18) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).strip_dirs().sort_stats("tottime").print_stats(limit)
    print(f"\n--- cProfile: {title} (sorted by own time) ---")
    print("\n".join(line for line in stream.getvalue().splitlines() if line.strip())[:6000])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ddpm_sched, ddim_sched = schedulers(args.T)
    schedule = NoiseSchedule.from_diffusers(ddpm_sched)  # the scheduler's own float32 betas
    model, shape = build_model(args.model, args.T, args.seed, device, schedule.alpha_bar)
    x_T = torch.randn((args.batch, *shape), generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    noise_seed = args.seed + 2

    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()):,} params, shape {shape}), batch {args.batch}, "
          f"T={args.T}, device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}")
    rows = [
        compare(f"DDPM-{args.T}",
                lambda: minidiff_ddpm(model, schedule, x_T, noise_seed),
                lambda: diffusers_ddpm(model, ddpm_sched, x_T, noise_seed), args.repeats, device),
        compare(f"DDIM-{args.steps} (eta=0)",
                lambda: minidiff_ddim(model, schedule, x_T, args.steps),
                lambda: diffusers_ddim(model, ddim_sched, x_T, args.steps), args.repeats, device),
    ]
    print(f"\n{'sampler':<18} {'minidiff [s]':>12} {'diffusers [s]':>13} {'ratio':>6} {'max |diff|':>11}")
    for r in rows:
        print(f"{r['name']:<18} {r['minidiff']:>12.3f} {r['diffusers']:>13.3f} {r['ratio']:>6.2f} {r['diff']:>11.2e}")
    print("ratio = minidiff time / diffusers time (goal <= 1.0); max |diff| over all output values")

    if args.profile:
        profile(lambda: minidiff_ddpm(model, schedule, x_T, noise_seed), f"minidiff DDPM-{args.T}")
        profile(lambda: diffusers_ddpm(model, ddpm_sched, x_T, noise_seed), f"diffusers DDPM-{args.T}")
    worst = max(r["diff"] for r in rows)
    if worst > 1e-3:
        print(f"WARNING: outputs differ by up to {worst:.2e}: the two samplers do not compute the same thing",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

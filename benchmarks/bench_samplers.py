#!/usr/bin/env python
"""Sampler overhead: minidiff's DDPM / DDIM loops against a plain torch loop (and against diffusers).

**vs a plain loop (default).** The "plain loop" is the obvious hand-written sampler: Python-float
coefficients from the schedule, one model call, two or three tensor ops and a ``torch.randn`` per
step, nothing yielded. minidiff's loop does the same arithmetic plus what makes it a library loop
(x̂_0 for every yielded state, argument checks, the eps-contract check, a generator, tqdm).
ratio = minidiff time / plain time; the goal with a trained network is <= 1.05. Two eps-models:

* ``trained``: the 2-D ``MLPDenoiser`` trained on the ring mixture for a few hundred steps inside
  this script (realistic network cost per step);
* ``zero``: ``eps = 0`` — no network, so the timings are pure per-step sampler overhead.

Both are run at 1 and 2 torch threads (``--threads``). Both sides start from the same x_T and, for DDPM,
draw the same noise (equally seeded CPU generators, one ``randn(x.shape)`` per step for t > 0), so
the outputs' largest difference (relative to max(1, max |x|)) is printed next to the ratio (float32
round-off only; the script exits with status 1 above 1e-3).

**vs diffusers (``--vs-diffusers``).** The same eps-model sampled by minidiff and by a loop over
``DDPMScheduler.step`` / ``DDIMScheduler.step``, configured explicitly:

    DDPMScheduler(beta_schedule="linear", variance_type="fixed_small", clip_sample=False,
                  prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
    DDIMScheduler(...same..., set_alpha_to_one=True)

with ``--model unet|mlp|none`` (random seeded weights plus the exact eps of N(0, I) data, which keeps
samples bounded) and minidiff using ``NoiseSchedule.from_diffusers`` (the scheduler's own betas).

Timing: every pair runs interleaved in one process (minidiff, reference, minidiff, …) after one
warm-up run each; the best of ``--repeats`` is reported (the run least disturbed by other load).

    python benchmarks/bench_samplers.py                        # plain-loop table, 1 and 2 threads
    python benchmarks/bench_samplers.py --threads 1 --batch 2000
    python benchmarks/bench_samplers.py --vs-diffusers --model unet
    python benchmarks/bench_samplers.py --profile              # + cProfile of one minidiff DDPM run (zero model)
"""
from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import sys
import time
from typing import Callable

import torch
from torch import Tensor, nn

from diffusers import DDIMScheduler, DDPMScheduler
from minidiff import (MLPDenoiser, NoiseSchedule, UNet, ddim_loop, ddim_timesteps, ddpm_loop, diffusion_loss, fit,
                      pick, resolve_device)
from minidiff.data import GaussianMixture


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50); DDPM always takes all T steps")
    p.add_argument("--T", type=int, default=1000, help="training steps of the schedule, i.e. DDPM's steps (default 1000)")
    p.add_argument("--batch", type=int, default=None,
                   help="samples per run (default: 500 for the plain-loop table, 16 with --vs-diffusers)")
    p.add_argument("--repeats", type=int, default=pick(3, 5),
                   help="timed runs per implementation; the best is reported (default 5; 3 with MINIDIFF_QUICK=1)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run (default: 1 2)")
    p.add_argument("--train-steps", type=int, default=pick(300, 1000), help="training steps of the MLP (default 1000; 300 quick)")
    p.add_argument("--device", default="cpu", help="'cpu' (default), 'cuda', 'cuda:1', 'mps'")
    p.add_argument("--vs-diffusers", action="store_true", help="compare with diffusers' schedulers instead of a plain loop")
    p.add_argument("--model", choices=("unet", "mlp", "none"), default="unet",
                   help="--vs-diffusers eps-model: 8x8 U-Net, 2-D MLP (random weights) or none (closed form only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="also print a cProfile of one minidiff DDPM run (zero model)")
    args = p.parse_args(argv)
    if args.repeats < 1 or (args.batch is not None and args.batch < 1) or min(args.threads) < 1:
        p.error("--repeats, --batch and --threads must be >= 1")
    if not 1 <= args.steps <= args.T:
        p.error(f"--steps must be in [1, T={args.T}]")
    return args


# ------------------------------------------------------------------------------------ timing
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
    """Warm up both, then time them interleaved; best of ``repeats``; the outputs' largest difference,
    relative to their scale (max(1, max |x|): with the zero model DDPM samples grow to |x| ~ 1/√ᾱ_T)."""
    _, out_ours = timed(ours, device)
    _, out_theirs = timed(theirs, device)
    best_ours = best_theirs = float("inf")
    for _ in range(repeats):
        best_ours = min(best_ours, timed(ours, device)[0])
        best_theirs = min(best_theirs, timed(theirs, device)[0])
    scale = max(1.0, out_theirs.float().abs().max().item())
    diff = (out_ours.float() - out_theirs.float()).abs().max().item() / scale
    return {"name": name, "ours": best_ours, "ref": best_theirs, "ratio": best_ours / best_theirs, "diff": diff}


def print_header(ref_name: str) -> None:
    print(f"\n{'threads':>7} {'model':<8} {'sampler':<16} {'minidiff [s]':>12} {ref_name + ' [s]':>14} {'ratio':>6} "
          f"{'rel. diff':>11}", flush=True)


def print_row(r: dict) -> None:
    print(f"{r['threads']:>7} {r['model']:<8} {r['name']:<16} {r['ours']:>12.3f} {r['ref']:>14.3f} {r['ratio']:>6.2f} "
          f"{r['diff']:>11.2e}", flush=True)


def profile(fn: Callable[[], Tensor], title: str, limit: int = 18) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).strip_dirs().sort_stats("tottime").print_stats(limit)
    print(f"\n--- cProfile: {title} (sorted by own time) ---")
    print("\n".join(line for line in stream.getvalue().splitlines() if line.strip())[:6000])


# ------------------------------------------------------------------------------ minidiff side
def minidiff_ddpm(model, schedule: NoiseSchedule, x_T: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = x_T
    for state in ddpm_loop(model, schedule, x_T, generator=g, progress=False):
        x = state["x"]
    return x


def minidiff_ddim(model, schedule: NoiseSchedule, x_T: Tensor, steps: int) -> Tensor:
    x = x_T
    for state in ddim_loop(model, schedule, x_T, steps=steps, eta=0.0, progress=False):
        x = state["x"]
    return x


# -------------------------------------------------------------------------------- plain loops
@torch.no_grad()
def plain_ddpm(model, schedule: NoiseSchedule, x_T: Tensor, seed: int) -> Tensor:
    """DDPM Alg. 2 written by hand: x_{t-1} = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t + √β̃_t z (eq. 11)."""
    g = torch.Generator().manual_seed(seed)
    betas, ab, var = schedule.betas.tolist(), schedule.alpha_bar.tolist(), schedule.posterior_variance.tolist()
    x, B = x_T, x_T.shape[0]
    for t in range(schedule.T - 1, -1, -1):
        eps = model(x, torch.full((B,), t, dtype=torch.long, device=x.device))
        x = (x - betas[t] / math.sqrt(1 - ab[t]) * eps) / math.sqrt(1 - betas[t])
        if t > 0:
            x = x + math.sqrt(var[t]) * torch.randn(x.shape, generator=g).to(x.device)
    return x


@torch.no_grad()
def plain_ddim(model, schedule: NoiseSchedule, x_T: Tensor, steps: int) -> Tensor:
    """DDIM eq. 12 with η = 0 written by hand, on the same "leading" sub-sequence."""
    ts = ddim_timesteps(schedule.T, steps, "leading")
    ab = schedule.alpha_bar.tolist()
    x, B = x_T, x_T.shape[0]
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        eps = model(x, torch.full((B,), t, dtype=torch.long, device=x.device))
        ab_prev = ab[t_prev] if t_prev >= 0 else 1.0
        x0 = (x - math.sqrt(1 - ab[t]) * eps) / math.sqrt(ab[t])
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return x


class ZeroEps(nn.Module):
    """eps = 0: no network at all, so a sampler's time is its own per-step overhead."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.num_timesteps = T

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        return torch.zeros_like(x)


def trained_mlp(schedule: NoiseSchedule, steps: int, seed: int, device: torch.device) -> nn.Module:
    """The 2-D MLPDenoiser trained with L_simple on the 8-mode ring for ``steps`` steps."""
    data = GaussianMixture.ring().sample(4000, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    net = MLPDenoiser(dim=2, num_timesteps=schedule.T)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the same weights whatever --threads (and no thread oversubscription on a busy machine)
    fit(net, diffusion_loss(schedule), data, steps=steps, batch_size=256, lr=2e-3, seed=seed, desc="train MLP")
    torch.set_num_threads(threads)
    return net.to(device).eval().requires_grad_(False)


def vs_plain(args: argparse.Namespace, device: torch.device) -> list[dict]:
    schedule = NoiseSchedule.linear(args.T)
    start = time.perf_counter()
    models = {"trained": trained_mlp(schedule, args.train_steps, args.seed, device), "zero": ZeroEps(args.T)}
    print(f"MLPDenoiser trained for {args.train_steps} steps in {time.perf_counter() - start:.1f} s", flush=True)
    x_T = torch.randn(args.batch, 2, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    rows = []
    print_header("plain")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for kind, model in models.items():
            for row in (compare(f"DDPM-{args.T}", lambda: minidiff_ddpm(model, schedule, x_T, args.seed + 2),
                                lambda: plain_ddpm(model, schedule, x_T, args.seed + 2), args.repeats, device),
                        compare(f"DDIM-{args.steps}", lambda: minidiff_ddim(model, schedule, x_T, args.steps),
                                lambda: plain_ddim(model, schedule, x_T, args.steps), args.repeats, device)):
                rows.append({**row, "threads": threads, "model": kind})
                print_row(rows[-1])
    print("ratio = minidiff time / plain-loop time (goal with the trained net: <= 1.05); rel. diff = max |difference| / max(1, max |x|)")
    if args.profile:
        profile(lambda: minidiff_ddpm(models["zero"], schedule, x_T, args.seed + 2), f"minidiff DDPM-{args.T}, zero model")
        profile(lambda: plain_ddpm(models["zero"], schedule, x_T, args.seed + 2), f"plain DDPM-{args.T}, zero model")
    return rows


# ----------------------------------------------------------------------------- diffusers side
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
    """A small eps-model with fixed, seeded random weights (and its data shape). The U-Net's output
    conv starts at zero (an untrained U-Net predicts 0), so it is re-initialised with small weights."""
    torch.manual_seed(seed)
    if kind == "unet":
        net, shape = UNet(image_size=8, base_channels=16, num_timesteps=T), (1, 8, 8)
        nn.init.normal_(net.out[-1].weight, std=0.05)
        nn.init.normal_(net.out[-1].bias, std=0.05)
    elif kind == "mlp":
        net, shape = MLPDenoiser(dim=2, num_timesteps=T), (2,)
    else:
        net, shape = None, (1, 8, 8)
    return BoundedEps(net, alpha_bar).to(device).eval().requires_grad_(False), shape


def schedulers(T: int) -> tuple[DDPMScheduler, DDIMScheduler]:
    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False, prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
    return DDPMScheduler(variance_type="fixed_small", **common), DDIMScheduler(set_alpha_to_one=True, **common)


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


def vs_diffusers(args: argparse.Namespace, device: torch.device) -> list[dict]:
    ddpm_sched, ddim_sched = schedulers(args.T)
    schedule = NoiseSchedule.from_diffusers(ddpm_sched)  # the scheduler's own float32 betas
    model, shape = build_model(args.model, args.T, args.seed, device, schedule.alpha_bar)
    x_T = torch.randn((args.batch, *shape), generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    rows = []
    print_header("diffusers")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for row in (compare(f"DDPM-{args.T}", lambda: minidiff_ddpm(model, schedule, x_T, args.seed + 2),
                            lambda: diffusers_ddpm(model, ddpm_sched, x_T, args.seed + 2), args.repeats, device),
                    compare(f"DDIM-{args.steps}", lambda: minidiff_ddim(model, schedule, x_T, args.steps),
                            lambda: diffusers_ddim(model, ddim_sched, x_T, args.steps), args.repeats, device)):
            rows.append({**row, "threads": threads, "model": args.model})
            print_row(rows[-1])
    print("ratio = minidiff time / diffusers time (goal <= 1.0); rel. diff = max |difference| / max(1, max |x|)")
    if args.profile:
        profile(lambda: diffusers_ddpm(model, ddpm_sched, x_T, args.seed + 2), f"diffusers DDPM-{args.T}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.batch is None:
        args.batch = 16 if args.vs_diffusers else 500
    print(f"batch {args.batch}, T={args.T}, DDIM steps {args.steps}, device {device}, torch {torch.__version__}, "
          f"threads {args.threads}, best of {args.repeats}")
    rows = vs_diffusers(args, device) if args.vs_diffusers else vs_plain(args, device)
    # diffusers keeps float32 tables (cancellation near t = 0: a few 1e-5); the plain loop uses eq. 11 in
    # float32 where minidiff goes through x̂0 (eq. 7): float32 round-off either way, far below 1e-3
    worst = max(r["diff"] for r in rows)
    if worst > 1e-3:
        print(f"WARNING: outputs differ by up to {worst:.2e}: the two samplers do not compute the same thing",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
